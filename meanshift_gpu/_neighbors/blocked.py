"""Block-sparse mean-shift step in pure torch: only listed candidates are read.

Neighbour pruning (grid hashing, LSH, faiss) tells each block of seeds which
data points can lie in its windows.  :func:`blocked_step` reads only those
points and is the torch reference (and CPU engine) of the Triton kernel in
:mod:`meanshift_gpu.kernels._sparse_step`.  Seeds in consecutive blocks of
``seed_block`` rows share one candidate list per block, given in CSR form
(``block_starts``, ``block_indices``).  This is the layout of grid hashing
(a block of seeds sorted by cell reads the points of the adjacent cells);
per-seed lists (LSH, faiss) are blocks of one seed.

The step is exactly :func:`meanshift_gpu._reference.mean_shift_step` applied
to each seed block with ``data[candidates]``: points not listed contribute
nothing, a point listed twice counts twice, an empty window keeps the seed
and gets ``log_density = -inf``.

Why the batching looks the way it does
--------------------------------------
A Python loop per block would cost ~50 us per block, minutes for a million
seeds in blocks of 64.  :func:`blocked_step` instead cuts every block's
candidate list into *work items* of at most one tile of candidates, groups
the items by tile size (the power of two >= the block's candidate count, so
padding wastes less than half of any item, capped at ``max_tile``) and runs
each group in padded batches of ``max_pairs`` seed-candidate pairs: one
batched distance, weight and ``bmm`` per batch.  A skewed block (100k
candidates next to blocks of 10) simply becomes many full-tile items of the
largest size class, so memory stays bounded and no block is special-cased.
Items of one block are combined with ``index_add_``; the Gaussian kernel
keeps a per-seed running maximum of its logits across items and batches (the
flash-attention rescaling of the dense step), so no seed ever gets 0 / 0
when all its weights underflow.

Distances follow :func:`meanshift_gpu._reference.squared_distances`:
per-feature differences up to ``EXACT_DIFFERENCE_MAX_FEATURES`` features (so
the inclusive flat window matches the dense reference bit for bit), the
``|q|^2 - 2 q.x + |x|^2`` form above.
"""

from __future__ import annotations

import math

import torch

from .._reference import (
    EXACT_DIFFERENCE_MAX_FEATURES, KERNELS, StepResult, flat_edge, refine_near_edge, summed_squared_differences,
)

__all__ = ["blocked_step", "check_blocks", "DEFAULT_MAX_PAIRS"]

# Seed-candidate pairs held at once (each pair costs a few dtype-sized
# temporaries: ~100 MB in float64 at this size).
DEFAULT_MAX_PAIRS = 1 << 22
# Smallest tile of a size class: fewer candidates are padded up to it.
_MIN_TILE = 8


# ------------------------------------------------------------------------------ validation
def _check_inputs(
    seeds: torch.Tensor, data: torch.Tensor, weights: torch.Tensor | None, kernel: str
) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    if seeds.ndim != 2 or data.ndim != 2:
        raise ValueError(
            f"seeds and data must be 2-D, got shapes {tuple(seeds.shape)} and {tuple(data.shape)}"
        )
    if seeds.shape[1] != data.shape[1]:
        raise ValueError(
            f"seeds have {seeds.shape[1]} features but the data have {data.shape[1]}"
        )
    if not seeds.is_floating_point() or data.dtype != seeds.dtype:
        raise TypeError(
            f"seeds and data must share one floating dtype, got {seeds.dtype} and {data.dtype}"
        )
    if data.device != seeds.device:
        raise ValueError(f"seeds are on {seeds.device} but the data on {data.device}")
    if weights is not None and (weights.shape != (data.shape[0],) or weights.device != data.device):
        raise ValueError(
            f"weights must have shape ({data.shape[0]},) on {data.device}, "
            f"got {tuple(weights.shape)} on {weights.device}"
        )


def check_blocks(
    n_seeds: int,
    n_points: int,
    block_starts: torch.Tensor,
    block_indices: torch.Tensor,
    seed_block: int,
) -> torch.Tensor:
    """Validate a CSR block layout; return the candidate count per block (on the CPU).

    Raises ``ValueError`` with the reason when the layout does not fit
    ``n_seeds`` seeds in blocks of ``seed_block`` and ``n_points`` points.

    Examples
    --------
    >>> import torch
    >>> check_blocks(3, 5, torch.tensor([0, 2, 2]), torch.tensor([4, 0]), 2).tolist()
    [2, 0]
    """
    if seed_block < 1:
        raise ValueError(f"seed_block must be >= 1, got {seed_block}")
    n_blocks = -(-n_seeds // seed_block)
    if block_starts.ndim != 1 or block_starts.shape[0] != n_blocks + 1:
        raise ValueError(
            f"block_starts must have shape ({n_blocks + 1},) for {n_seeds} seeds in blocks of "
            f"{seed_block}, got {tuple(block_starts.shape)}"
        )
    if block_starts.dtype != torch.int64 or block_indices.dtype != torch.int64:
        raise TypeError(
            f"block_starts and block_indices must be int64, got {block_starts.dtype} and "
            f"{block_indices.dtype}"
        )
    if block_indices.ndim != 1:
        raise ValueError(f"block_indices must be 1-D, got shape {tuple(block_indices.shape)}")
    starts = block_starts.cpu()
    counts = starts[1:] - starts[:-1]
    if n_blocks and (
        int(starts[0]) < 0 or int(starts[-1]) > block_indices.shape[0] or bool((counts < 0).any())
    ):
        raise ValueError(
            "block_starts must be non-decreasing pointers into block_indices "
            f"(0 <= start <= {block_indices.shape[0]})"
        )
    if block_indices.numel():
        low, high = torch.aminmax(block_indices)
        if int(low) < 0 or int(high) >= n_points:
            raise ValueError(
                f"block_indices must be data rows in [0, {n_points}), got [{int(low)}, {int(high)}]"
            )
    return counts


# ----------------------------------------------------------------------------- tile maths
def _squared_distances(q: torch.Tensor, x: torch.Tensor, near: float | None = None) -> torch.Tensor:
    """Batched squared distances (b, s, d) x (b, t, d) -> (b, s, t), reference formulas
    (``near``: see :func:`meanshift_gpu._reference.squared_distances`)."""
    n_features = q.shape[-1]
    if n_features <= EXACT_DIFFERENCE_MAX_FEATURES:
        # The reference's formula: bit-identical distances.
        return summed_squared_differences(q[..., :, None, :], x[..., None, :, :])
    d2 = torch.baddbmm(x.square().sum(-1)[:, None, :], q, x.transpose(1, 2), alpha=-2.0)
    d2 += q.square().sum(-1)[:, :, None]
    d2.clamp_min_(0.0)
    if near is not None:
        refine_near_edge(d2, q, x, near)
    return d2


def _tile_weights(
    d2: torch.Tensor,
    valid: torch.Tensor,
    w: torch.Tensor | None,
    kernel: str,
    truncate: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kernel weights of a (b, s, t) tile; Gaussian ones relative to the row maximum.

    ``valid`` (b, t) masks padding candidates, ``w`` (b, t) are their sample
    weights (Gaussian: log weights).  Returns ``(p, row_max)`` with
    ``row_max`` (b, s) the Gaussian logit maximum (``None`` otherwise).
    """
    if kernel == "gaussian":
        if truncate is not None:
            valid = valid[:, None, :] & (d2 <= truncate * truncate)
        else:
            valid = valid[:, None, :]
        logit = d2.mul_(-0.5)
        if w is not None:
            logit += w[:, None, :]
        logit.masked_fill_(~valid, -math.inf)
        row_max = logit.amax(-1)
        # A row without any finite logit shifts by 0, so exp gives 0, not NaN.
        shift = torch.where(torch.isinf(row_max), 0.0, row_max)
        return logit.sub_(shift[..., None]).exp_(), row_max
    if kernel == "flat":
        p = (d2 <= flat_edge()).to(d2.dtype)
    else:
        p = d2.neg_().add_(1.0).clamp_min_(0.0)
    if w is not None:
        p *= w[:, None, :]
    return p.masked_fill_(~valid[:, None, :], 0.0), None


class _Accumulator:
    """Weighted sums ``[sum p x, sum p]`` per seed row, combined across work items.

    For the Gaussian, partial sums are relative to their own logit maximum
    and are rescaled to the running maximum of the row (natural log) when
    added, exactly like the rescaling between tiles in the dense step.
    """

    def __init__(self, n_rows: int, n_features: int, dtype, device, gaussian: bool):
        self.acc = torch.zeros(n_rows, n_features + 1, dtype=dtype, device=device)
        self.max = torch.full((n_rows,), -math.inf, dtype=dtype, device=device) if gaussian else None

    def add(
        self,
        rows: torch.Tensor,
        partial: torch.Tensor,
        partial_max: torch.Tensor | None,
        fresh: bool = False,
    ) -> None:
        """Add ``partial`` (r, d + 1) to ``rows`` (r,), which may repeat.

        ``fresh=True`` promises distinct rows that nothing was added to yet
        (blocks done in one item): the sums are then copied, not combined.
        """
        if fresh:
            self.acc[rows] = partial
            if self.max is not None:
                self.max[rows] = partial_max
            return
        if self.max is None:
            self.acc.index_add_(0, rows, partial)
            return
        old = self.max[rows]
        self.max.scatter_reduce_(0, rows, partial_max, "amax")
        new = self.max[rows]
        # Rows listed twice get the same factor twice from the same old value,
        # so the (duplicate-index) assignment is well defined.  Factors are
        # exactly 0 where a side has no finite logit: exp(-inf - -inf) is NaN.
        keep = torch.where(torch.isinf(old), 0.0, torch.exp(old - new))
        self.acc[rows] = self.acc[rows] * keep[:, None]
        scale = torch.where(torch.isinf(partial_max), 0.0, torch.exp(partial_max - new))
        self.acc.index_add_(0, rows, partial * scale[:, None])

    def finish(self, seeds: torch.Tensor) -> StepResult:
        """Positions and log densities of the first ``len(seeds)`` rows."""
        n = seeds.shape[0]
        acc = self.acc[:n]
        total = acc[:, -1]
        empty = total <= 0
        safe_total = torch.where(empty, 1.0, total)
        positions = torch.where(empty[:, None], seeds, acc[:, :-1] / safe_total[:, None])
        log_total = torch.log(safe_total)
        if self.max is not None:
            running = self.max[:n]
            log_total = log_total + torch.where(torch.isinf(running), 0.0, running)
        log_density = torch.where(empty, -math.inf, log_total)
        return StepResult(positions, log_density)


def _gather_weights(weights: torch.Tensor | None, kernel: str) -> torch.Tensor | None:
    """Per-point factors gathered with the candidates (Gaussian: log weights)."""
    if weights is None:
        return None
    return weights.log() if kernel == "gaussian" else weights


def _size_class(counts: torch.Tensor, max_tile: int) -> torch.Tensor:
    """Tile of each block: the smallest ``2**e`` or ``1.5 * 2**e`` >= its count.

    Clamped to ``[_MIN_TILE, max_tile]``.  Two classes per octave keep the
    padding below a third of any item while leaving only ~2 log2(max_tile)
    groups to batch.
    """
    exponent = torch.ceil(torch.log2(counts.clamp_min(1).double())).long()
    power = 1 << exponent
    three_quarters = (power * 3) // 4  # 1.5 * 2**(e-1)
    tile = torch.where((counts <= three_quarters) & (power >= 4 * _MIN_TILE // 2), three_quarters, power)
    return tile.clamp(_MIN_TILE, max_tile)


# ----------------------------------------------------------------------------- public steps
def blocked_step(
    seeds: torch.Tensor,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    block_starts: torch.Tensor,
    block_indices: torch.Tensor,
    *,
    kernel: str = "flat",
    seed_block: int,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    max_tile: int = 1024,
    truncate: float | None = None,
) -> StepResult:
    """Mean-shift step where each block of seeds reads only its candidate points.

    Seed block ``b`` is rows ``[b * seed_block, min((b + 1) * seed_block, m))``
    and its candidates are ``block_indices[block_starts[b]:block_starts[b + 1]]``.
    The result for those seeds equals
    ``_reference.mean_shift_step(seeds_b, data[cand_b], weights[cand_b])``.

    Parameters
    ----------
    seeds : Tensor of shape (m, d)
        Seed positions (scaled coordinates: bandwidth 1).
    data : Tensor of shape (n, d)
        Data points, same dtype and device as ``seeds``.
    weights : Tensor of shape (n,) or None
        Non-negative sample weights; ``None`` means ones.
    block_starts : int64 Tensor of shape (n_blocks + 1,)
        CSR pointers into ``block_indices``, ``n_blocks = ceil(m / seed_block)``.
    block_indices : int64 Tensor of shape (nnz,)
        Data row indices; each block's candidates are shared by its seeds.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile, as in :func:`meanshift_gpu._reference.mean_shift_step`.
    seed_block : int
        Seeds per block (the last block may be shorter).
    max_pairs : int, default=2**22
        Seed-candidate pairs processed at once; bounds the memory (a few
        ``max_pairs``-element temporaries) whatever the block sizes.
    max_tile : int, default=1024
        Largest candidate tile; longer lists are cut into several tiles.
        Results do not depend on ``max_pairs`` / ``max_tile`` beyond rounding.
    truncate : float or None, default=None
        Gaussian only: candidates farther than this (in bandwidths) get weight
        0, so a superset of candidates gives the same result as the exact set.

    Returns
    -------
    StepResult
        ``positions`` (m, d) and ``log_density`` (m,) in the seeds' dtype.

    Examples
    --------
    >>> import torch
    >>> data = torch.tensor([[0.0], [0.5], [0.9], [5.0]], dtype=torch.float64)
    >>> seeds = torch.tensor([[0.0], [0.2], [5.0]], dtype=torch.float64)
    >>> starts = torch.tensor([0, 2, 3])  # block 0 reads points 0, 1; block 1 point 3
    >>> blocked_step(seeds, data, None, starts, torch.tensor([0, 1, 3]), seed_block=2).positions
    tensor([[0.2500],
            [0.2500],
            [5.0000]], dtype=torch.float64)
    """
    _check_inputs(seeds, data, weights, kernel)
    n_seeds, n_features = seeds.shape
    counts = check_blocks(n_seeds, data.shape[0], block_starts, block_indices, seed_block)
    if max_tile < _MIN_TILE or max_pairs < 1:
        raise ValueError(f"need max_tile >= {_MIN_TILE} and max_pairs >= 1")
    # A power of two, and small enough that one seed block times one tile
    # fits the pair budget where possible.
    max_tile = 1 << int(math.log2(max(_MIN_TILE, min(max_tile, max_pairs // seed_block))))
    device, dtype = seeds.device, seeds.dtype
    n_blocks = counts.shape[0]
    gaussian = kernel == "gaussian"
    accumulator = _Accumulator(n_blocks * seed_block, n_features, dtype, device, gaussian)
    if n_seeds == 0 or block_indices.numel() == 0:
        return accumulator.finish(seeds)

    padded_seeds = seeds.new_zeros(n_blocks * seed_block, n_features)
    padded_seeds[:n_seeds] = seeds
    seed_tiles = padded_seeds.view(n_blocks, seed_block, n_features)
    point_factor = _gather_weights(weights, kernel)
    starts_cpu = block_starts.cpu()
    ends_dev = block_starts[1:].to(device)
    seed_offsets = torch.arange(seed_block, device=device)

    tiles = _size_class(counts, max_tile)
    n_items = -(-counts // tiles)  # 0 for empty blocks: they need no work
    for tile in torch.unique(tiles[n_items > 0]).tolist():
        in_class = torch.nonzero((tiles == tile) & (n_items > 0)).squeeze(1)
        per_block = n_items[in_class]
        item_block = torch.repeat_interleave(in_class, per_block)
        # Position of each item within its block: 0, 1, ... per block.
        first = torch.cumsum(per_block, 0) - per_block
        rank = torch.arange(item_block.shape[0]) - torch.repeat_interleave(first, per_block)
        item_start = starts_cpu[item_block] + rank * tile
        item_block, item_start = item_block.to(device), item_start.to(device)
        # Blocks of smaller classes fit in one item each: no combining needed.
        fresh = bool((per_block == 1).all())
        batch = max(1, max_pairs // (seed_block * tile))
        offsets = torch.arange(tile, device=device)
        for i0 in range(0, item_block.shape[0], batch):
            blocks = item_block[i0 : i0 + batch]
            slots = item_start[i0 : i0 + batch, None] + offsets  # (b, tile) into block_indices
            valid = slots < ends_dev[blocks, None]
            rows = block_indices[slots.clamp_max_(block_indices.shape[0] - 1)]
            rows.masked_fill_(~valid, 0)  # padding reads row 0, then gets weight 0
            # Zeroed too, so that nothing of an unlisted row (not even a NaN)
            # reaches the products.
            x = data[rows].masked_fill_(~valid[..., None], 0.0)
            q = seed_tiles[blocks]
            p, row_max = _tile_weights(
                _squared_distances(q, x, flat_edge() if kernel == "flat" else None),
                valid,
                None if point_factor is None else point_factor[rows],
                kernel,
                truncate,
            )
            partial = torch.cat([torch.bmm(p, x), p.sum(-1, keepdim=True)], -1)
            seed_rows = (blocks[:, None] * seed_block + seed_offsets).reshape(-1)
            accumulator.add(
                seed_rows,
                partial.reshape(-1, n_features + 1),
                None if row_max is None else row_max.reshape(-1),
                fresh,
            )
    return accumulator.finish(seeds)

