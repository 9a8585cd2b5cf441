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

from ._reference import StepResult, kernel_weights

# Keys are int64; keep the padded box well inside that range.
_MAX_KEY_SPACE = 1 << 62


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
        cells = torch.floor(data / self.cell_size).long()
        self.cell_min = cells.amin(0)
        self.cell_max = cells.amax(0)
        extent = self.cell_max - self.cell_min + 5  # two padding cells each side
        if math.prod(int(e) for e in extent.tolist()) >= _MAX_KEY_SPACE:
            raise OverflowError("the grid is too large for 64-bit cell keys")
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

    @staticmethod
    def supported(n_features: int) -> bool:
        """Whether 3**d neighbour cells is a sensible amount of work."""
        return n_features <= 6

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
    min_group_seeds: int = 128,
    tile_elements: int = 1 << 22,
) -> StepResult:
    """One mean-shift step that reads only the cells around each seed.

    Seeds are sorted by cell and cut into groups of consecutive cells along
    the last axis; a group is compared, as one dense tile, with the points of
    the ``3**(d-1)`` runs of cells around it (each run is one contiguous slice
    of the sorted data).  Exact for the flat and Epanechnikov kernels (cell
    side = their reach); for the Gaussian kernel points beyond the cell
    neighbourhood (at least the truncation radius away) are left out.

    Parameters
    ----------
    seeds : Tensor of shape (n_seeds, n_features)
        Scaled seed positions.
    index : GridIndex
        The data, bucketed by cell.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile.
    min_group_seeds : int
        Consecutive seed cells are grouped until a group holds this many seeds
        (fewer, larger tiles: less Python overhead, a little more arithmetic).
    tile_elements : int
        Largest seed x point tile evaluated at once.

    Returns
    -------
    StepResult
        Same contract as :func:`meanshift_gpu._reference.mean_shift_step`.
    """
    from ._reference import mean_shift_step

    n_seeds = seeds.shape[0]
    positions = seeds.clone()
    log_density = torch.full((n_seeds,), -math.inf, dtype=seeds.dtype, device=seeds.device)
    keys, inside = index.seed_keys(seeds)
    keys = torch.where(inside, keys, torch.full_like(keys, -1))
    order = torch.argsort(keys)
    keys = keys[order]
    cell_keys, seeds_per_cell = torch.unique_consecutive(keys, return_counts=True)
    cell_keys_list = cell_keys.tolist()
    counts_list = seeds_per_cell.tolist()
    last_stride = 1  # keys of neighbours along the last axis differ by 1
    offsets = index.run_offsets  # key offsets of the 3**(d-1) runs, centred
    start = 0
    i = 0
    n_cells = len(cell_keys_list)
    while i < n_cells:
        if cell_keys_list[i] < 0:  # seeds outside the padded box: empty windows
            start += counts_list[i]
            i += 1
            continue
        j, group_seeds = i, 0
        # Extend along the last axis while cells are adjacent and the group is small.
        while j < n_cells and group_seeds < min_group_seeds and (
            j == i or cell_keys_list[j] == cell_keys_list[j - 1] + last_stride
        ):
            group_seeds += counts_list[j]
            j += 1
        lo_key, hi_key = cell_keys_list[i] - 1, cell_keys_list[j - 1] + 1
        lo = torch.searchsorted(index.cell_keys, offsets + lo_key)
        hi = torch.searchsorted(index.cell_keys, offsets + hi_key, right=True)
        first = torch.cat([index.cell_starts, index.cell_starts.new_tensor([index.points.shape[0]])])
        slices = [(int(a), int(b)) for a, b in zip(first[lo].tolist(), first[hi].tolist()) if b > a]
        member = order[start : start + group_seeds]
        start += group_seeds
        i = j
        if not slices:
            continue
        candidates = torch.cat([index.points[a:b] for a, b in slices])
        weights = None
        if index.weights is not None:
            weights = torch.cat([index.weights[a:b] for a, b in slices])
        point_block = max(256, tile_elements // max(1, group_seeds))
        step = mean_shift_step(
            seeds[member], candidates, weights, kernel=kernel,
            seed_block=group_seeds, point_block=point_block,
        )
        positions[member] = step.positions
        log_density[member] = step.log_density
    return StepResult(positions, log_density)
