"""``neighbors="lsh"``: locality-sensitive hashing in torch (approximate).

``n_tables`` tables of ``n_bits`` quantised random projections each (bucket
width ``bucket_width`` times the reach); buckets are found by sorting the
keys, and a seed reads the union of its buckets.  Recall of the in-window
points is measured by :func:`meanshift_gpu._neighbors.neighbor_recall`.
"""

from __future__ import annotations

import torch

from .candidates import CandidateListNeighbors, unique_pairs

# Multiplier that mixes a table's codes into one int64 key (collisions only merge buckets: more candidates).
_KEY_MIX = 1_000_003


class LSHIndex:
    """Quantised random projections; buckets located by sorting the keys."""

    def __init__(self, data: torch.Tensor, reach: float, options: dict):
        n, d = data.shape
        gen = torch.Generator(device="cpu").manual_seed(int(options["seed"]))
        self.n_tables = int(options["n_tables"])
        self.n_bits = int(options["n_bits"])
        width = float(options["bucket_width"]) * reach
        proj = torch.randn(self.n_tables, d, self.n_bits, generator=gen, dtype=torch.float64)
        self.proj = (proj / width).to(data.dtype).to(data.device)
        shift = torch.rand(self.n_tables, 1, self.n_bits, generator=gen, dtype=torch.float64)
        self.shift = shift.to(data.dtype).to(data.device)
        self.keys = []
        self.orders = []
        for t in range(self.n_tables):
            key, order = torch.sort(self._keys(data, t))
            self.keys.append(key)
            self.orders.append(order)

    def _keys(self, x: torch.Tensor, table: int) -> torch.Tensor:
        codes = torch.floor(x @ self.proj[table] + self.shift[table]).long()
        key = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for b in range(self.n_bits):
            key = key * _KEY_MIX + codes[:, b]
        return key

    def count(self, seeds: torch.Tensor) -> torch.Tensor:
        """Upper bound on each seed's candidates: its bucket sizes summed over tables."""
        total = torch.zeros(seeds.shape[0], dtype=torch.long, device=seeds.device)
        for t in range(self.n_tables):
            key = self._keys(seeds, t)
            total += torch.searchsorted(self.keys[t], key, right=True) - torch.searchsorted(self.keys[t], key)
        return total

    def candidates(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owners, points = [], []
        for t in range(self.n_tables):
            key = self._keys(seeds, t)
            lo = torch.searchsorted(self.keys[t], key)
            hi = torch.searchsorted(self.keys[t], key, right=True)
            counts = hi - lo
            owner = torch.repeat_interleave(torch.arange(seeds.shape[0], device=seeds.device), counts)
            within = torch.arange(int(counts.sum()), device=seeds.device) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts
            )
            owners.append(owner)
            points.append(self.orders[t][torch.repeat_interleave(lo, counts) + within])
        return unique_pairs(torch.cat(owners), torch.cat(points), seeds.shape[0])


class LSHNeighbors(CandidateListNeighbors):
    """Candidate lists from :class:`LSHIndex`; the step is the backend's block-sparse one.

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu._neighbors import DEFAULT_OPTIONS
    >>> from meanshift_gpu._neighbors.lsh import LSHNeighbors
    >>> data = torch.rand(200, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> method = LSHNeighbors(data, None, reach=1.0, options=DEFAULT_OPTIONS, max_pairs=lambda blocks: 1 << 16)
    >>> seed_ptr, points = method.candidates(data[:3])
    >>> seed_ptr.shape
    torch.Size([4])
    """

    name = "lsh"

    def __init__(self, data, weights, *, reach, options, max_pairs, blocked_step=None):
        index = LSHIndex(data, reach, options)
        super().__init__(data, weights, index, reach=reach, max_pairs=max_pairs, blocked_step=blocked_step)
        self.detail = f"lsh: candidate lists (LSH, {index.n_tables} tables)"
