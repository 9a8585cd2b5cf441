"""Grid hashing: exact neighbour pruning for low-dimensional data.

Space is cut into cubic cells whose side equals the kernel's reach (1 in scaled
coordinates for the flat and Epanechnikov kernels, the truncation radius for
the Gaussian).  Points are sorted by cell, so a cell is a contiguous run of the
sorted data, and a seed only reads its own cell and the ``3**d - 1`` cells
around it: every point within reach is there, so for the flat and
Epanechnikov kernels the step is *exact* (the same as the dense pass).

Cells are addressed by a linear key ``sum(cell_j * stride_j)`` over a box
padded by two cells on every side, so that ``key + offset`` of a seed inside
the padded box never wraps into another row of cells.
"""

from __future__ import annotations

import itertools
import math

import torch

from .._decisions import BATCHED_GRID_STEP
from .._reference import StepResult
from .base import NeighborMethod

# Keys are int64; keep the padded box well inside that range.
MAX_KEY_SPACE = 1 << 62
_TOO_LARGE = (
    "the data span too many bandwidths for 64-bit grid cell keys; use neighbors='dense' "
    "(or 'auto', which falls back to it)"
)


class GridIndex:
    """Data sorted by grid cell, with the start and length of every occupied cell.

    Parameters
    ----------
    data : Tensor of shape (n_points, n_features)
        Scaled data.
    cell_size : float
        Side of a cell; must be at least the kernel's reach.
    weights : Tensor of shape (n_points,) or None
        Sample weights, reordered with the data.
    """

    def __init__(self, data: torch.Tensor, cell_size: float, weights: torch.Tensor | None = None):
        self.cell_size = float(cell_size)
        self.n_features = data.shape[1]
        if data.numel() and float(data.abs().max()) / self.cell_size >= 2.0**52:
            raise OverflowError(_TOO_LARGE)
        cells = torch.floor(data / self.cell_size).long()
        self.cell_min = cells.amin(0)
        self.cell_max = cells.amax(0)
        extent = self.cell_max - self.cell_min + 5  # two padding cells each side
        # Python ints: the product must not wrap around as an int64 would.
        span = [hi - lo + 5 for lo, hi in zip(self.cell_min.tolist(), self.cell_max.tolist())]
        if math.prod(span) >= MAX_KEY_SPACE:
            raise OverflowError(_TOO_LARGE)
        self.origin = self.cell_min - 2
        strides = torch.ones_like(extent)
        for j in range(self.n_features - 2, -1, -1):
            strides[j] = strides[j + 1] * extent[j + 1]
        self.strides = strides
        key = ((cells - self.origin) * strides).sum(1)
        key, order = torch.sort(key, stable=True)
        self.order = order
        self.points = data[order].contiguous()
        self.weights = None if weights is None else weights[order].contiguous()
        self.cell_keys, counts = torch.unique_consecutive(key, return_counts=True)
        self.cell_counts = counts
        self.cell_starts = torch.cumsum(counts, 0) - counts
        # Neighbour cells that differ only along the last axis are adjacent in key
        # order, so the 3**d neighbours form 3**(d-1) contiguous runs.
        offsets = torch.tensor(
            list(itertools.product((-1, 0, 1), repeat=self.n_features - 1)),
            device=data.device,
            dtype=torch.long,
        ).reshape(3 ** (self.n_features - 1), self.n_features - 1)
        self.run_offsets = (offsets * strides[:-1]).sum(1)

    def seed_keys(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell key of each seed, and whether its cell can have neighbours at all.

        A seed more than one cell outside the data's box has no point within
        reach; its key is meaningless and ``inside`` is False.
        """
        cells = torch.floor(seeds / self.cell_size).long()
        inside = ((cells >= self.cell_min - 1) & (cells <= self.cell_max + 1)).all(1)
        cells = torch.where(inside[:, None], cells, self.cell_min)
        return ((cells - self.origin) * self.strides).sum(1), inside


def grid_mean_shift_step(
    seeds: torch.Tensor,
    index: GridIndex,
    *,
    kernel: str = "flat",
    seed_block: int = 64,
    max_indices: int = 1 << 24,
    blocked_step=None,
) -> StepResult:
    """One mean-shift step that reads only the cells around each seed.

    Seeds are sorted by cell and packed into blocks that never straddle two
    rows of cells (a row: cells that differ only in the last coordinate; each
    row is padded to whole blocks with copies of its last seed, whose results
    are discarded).  A block whose seeds lie in cells ``kmin..kmax`` of one
    row reads the ``3**(d-1)`` contiguous runs of cells
    ``kmin - 1 + o .. kmax + 1 + o``: a superset of every seed's neighbour
    cells.  Every point within the cell side of a seed is read, so the step is
    exact for the flat and Epanechnikov kernels (cell side = their reach), and
    the Gaussian is truncated at exactly the cell side whatever the blocks.
    The candidate lists go to a block-sparse step (no Python loop per block)
    in chunks of at most ``max_indices`` indices.

    Parameters
    ----------
    seeds : Tensor of shape (n_seeds, n_features)
        Scaled seed positions.
    index : GridIndex
        The data, bucketed by cell.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile.
    seed_block : int
        Largest number of seeds per block (smaller when rows of cells hold
        few seeds); results do not depend on it beyond rounding.
    max_indices : int
        Candidate indices materialised at once.
    blocked_step : callable, optional
        The block-sparse step to use (a backend's fused kernel); default
        :func:`meanshift_gpu._neighbors.blocked.blocked_step`.

    Returns
    -------
    StepResult
        Same contract as :func:`meanshift_gpu._reference.mean_shift_step`.
    """
    if blocked_step is None:
        from .blocked import blocked_step

    n_seeds, n_features = seeds.shape
    device = seeds.device
    positions = seeds.clone()
    log_density = torch.full((n_seeds,), -math.inf, dtype=seeds.dtype, device=device)
    keys, inside = index.seed_keys(seeds)
    members = torch.nonzero(inside).squeeze(1)
    if members.numel() == 0:
        return StepResult(positions, log_density)
    keys = keys[members]
    order = torch.argsort(keys)
    members, keys = members[order], keys[order]
    row_stride = int(index.strides[-2]) if n_features > 1 else None
    rows = keys // row_stride if row_stride is not None else torch.zeros_like(keys)
    _, row_counts = torch.unique_consecutive(rows, return_counts=True)
    # Rows are padded to whole blocks: with few seeds per row (sparse seeds,
    # e.g. bin seeding in 5-D) big blocks would be mostly padding.
    per_row = keys.numel() / row_counts.numel()
    seed_block = max(1, min(seed_block, 1 << int(math.log2(max(1.0, per_row)))))
    padded_counts = (row_counts + seed_block - 1) // seed_block * seed_block
    row_start = torch.cumsum(row_counts, 0) - row_counts
    padded_start = torch.cumsum(padded_counts, 0) - padded_counts
    n_slots = int(padded_counts.sum())
    # Slot -> sorted seed: real slots map to themselves, padding to the row's last seed.
    row_of_slot = torch.repeat_interleave(torch.arange(row_counts.numel(), device=device), padded_counts)
    rank = torch.arange(n_slots, device=device) - padded_start[row_of_slot]
    sorted_of_slot = row_start[row_of_slot] + torch.minimum(rank, row_counts[row_of_slot] - 1)
    real = rank < row_counts[row_of_slot]
    slot_seeds = seeds[members[sorted_of_slot]]
    slot_keys = keys[sorted_of_slot].view(-1, seed_block)
    kmin, kmax = slot_keys[:, 0], slot_keys.amax(1)

    first = torch.cat([index.cell_starts, index.cell_starts.new_tensor([index.points.shape[0]])])
    offsets = index.run_offsets
    lo = first[torch.searchsorted(index.cell_keys, (kmin[:, None] - 1) + offsets[None, :])]
    hi = first[torch.searchsorted(index.cell_keys, (kmax[:, None] + 1) + offsets[None, :], right=True)]
    lengths = (hi - lo).clamp_min_(0)
    per_block = lengths.sum(1)
    n_blocks = per_block.numel()

    out_positions = torch.empty_like(slot_seeds)
    out_log_density = torch.empty(n_slots, dtype=seeds.dtype, device=device)
    b0 = 0
    cumulative = torch.cumsum(per_block, 0)
    while b0 < n_blocks:
        base = int(cumulative[b0 - 1]) if b0 else 0
        b1 = int(torch.searchsorted(cumulative, torch.tensor(base + max_indices, device=device), right=True))
        b1 = min(n_blocks, max(b0 + 1, b1))
        run_lo, run_len = lo[b0:b1].reshape(-1), lengths[b0:b1].reshape(-1)
        total = int(run_len.sum())
        run_first = torch.cumsum(run_len, 0) - run_len
        indices = torch.repeat_interleave(run_lo - run_first, run_len) + torch.arange(total, device=device)
        starts = torch.zeros(b1 - b0 + 1, dtype=torch.long, device=device)
        starts[1:] = torch.cumsum(per_block[b0:b1], 0)
        s0, s1 = b0 * seed_block, b1 * seed_block
        step = blocked_step(
            slot_seeds[s0:s1], index.points, index.weights, starts, indices,
            kernel=kernel, seed_block=seed_block,
            truncate=index.cell_size if kernel == "gaussian" else None,
        )
        out_positions[s0:s1] = step.positions
        out_log_density[s0:s1] = step.log_density
        b0 = b1
    targets = members[sorted_of_slot[real]]
    positions[targets] = out_positions[real]
    log_density[targets] = out_log_density[real]
    return StepResult(positions, log_density)


class GridNeighbors(NeighborMethod):
    """``neighbors="grid"`` with the batched block-sparse step (:func:`grid_mean_shift_step`).

    ``max_indices(blocks)`` gives the candidate indices held at once (it
    shrinks with the tiles after out-of-memory); ``blocked_step`` is the
    backend's block-sparse kernel (None: torch).

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu._engine.backends import Blocks
    >>> from meanshift_gpu._neighbors.grid import GridIndex, GridNeighbors
    >>> data = torch.tensor([[0.0, 0.0], [0.5, 0.0], [5.0, 5.0]], dtype=torch.float64)
    >>> method = GridNeighbors(GridIndex(data, 1.0, None), max_indices=lambda blocks: 1 << 20)
    >>> method.step(data[:1], "flat", Blocks(8, 256)).positions
    tensor([[0.2500, 0.0000]], dtype=torch.float64)
    """

    name = "grid"

    def __init__(self, index: GridIndex, *, max_indices, blocked_step=None, detail: str = ""):
        self.index = index
        self._max_indices = max_indices
        self._blocked_step = blocked_step
        self.detail = detail or BATCHED_GRID_STEP

    def step(self, seeds, kernel, blocks):
        return grid_mean_shift_step(
            seeds, self.index, kernel=kernel, blocked_step=self._blocked_step,
            max_indices=self._max_indices(blocks),
        )
