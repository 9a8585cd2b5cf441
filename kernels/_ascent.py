"""Fused ascent step: one mean-shift iteration for many seeds, with the stop test, in one launch.

The fit's hot loop.  Each launch moves every listed seed that has not stopped
one step and updates its state in place, following scikit-learn's
``_mean_shift_single_seed`` rules exactly as :func:`meanshift_gpu._engine.ascent.ascend_seeds`
does on the host:

- a seed whose window is empty keeps its position and stops (density sum 0);
- otherwise it moves to the kernel-weighted mean, and stops when the shift is
  ``<= tol``, is a rounding-level fixed point, or ``max_iter`` steps were done;
  a seed that goes on has its step count increased.

Because the state lives on the device, the host launches several steps in a
row and synchronises only to drop stopped seeds (compaction), not once per
step.  Stopped seeds in a launch cost one load: a program whose seeds have
all stopped reads no data.

Data are read feature-major (``data_t`` is ``(n_features, n_points)``), so
each feature of a tile of points is one coalesced load.  Squared distances
are summed from per-feature differences (no ``|q|^2 - 2 q.x + |x|^2``
cancellation), in the compute dtype: float32 or float64.

Two ways to choose the points a program reads:

- dense: all of them;
- ranges (``RANGES``): the data are sorted by the cells of a grid whose
  side is ``reach / cells_per_reach``; a program takes the bounding box of
  its seeds' cells, widened by ``cells_per_reach`` cells, and reads each row
  of cells along the last axis as one contiguous ``[start, end)`` range of
  the sorted data (a dense table of cell starts), KeOps-style: no index
  lists.  Each row is trimmed to the cells within ``reach`` of the seeds'
  bounding box, and rows beyond it are skipped.  Every point within ``reach``
  of a seed is read; the Gaussian is
  truncated at exactly ``reach`` (weights beyond it are zero) so results do
  not depend on how seeds are grouped.

Each feature of the seeds and of the weighted sums is its own (seeds, 1)
column (up to 8 features), so the hot loop stays in the tiles' layout.  The
weighted sums are row sums of each tile (variant ``"reduce"``), or
``p @ [x, 1]`` on the tensor cores in 3-pass tf32 (``"mma"``, float32).

The density sum (and, for the Gaussian, the running maximum of the base-2
logits) is stored, not its logarithm: the engine takes the log once at the
end.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _ascent_max_features
from ._common import INTERPRETED, NEG_HALF_LOG2E, check_kernel, flat_slack
from ._tiles import Tile, pick_tile

# Tiles under the interpreter: few (slow) Python-level iterations, yet small
# enough that tests with a few hundred points cross ragged tile edges.
_INTERPRETER_TILE = Tile(32, 64)

# How the weighted sums are formed (see ascent_steps): "mma" stays opt-in
# until a GPU run times it against "reduce" (benchmarks.gpu_step).
VARIANTS = ("reduce", "mma")
DEFAULT_VARIANT = "reduce"

# Most features the kernel unrolls (one vector per feature); wider data take the host loop.
MAX_FEATURES = _ascent_max_features()


# The number of seeds listed changes as seeds stop; specialising on it (its
# divisibility by 16) would compile the kernel twice in most fits.
@triton.jit(do_not_specialize=["n_order", "n_points", "max_iter"])
def _ascent_kernel(
    pos_ptr, dens_ptr, logit_max_ptr, n_iter_ptr, done_ptr, order_ptr,
    data_t_ptr, weights_ptr,
    cell_start_ptr, cell_stride_ptr, cell_extent_ptr, grid_lo_ptr,
    n_order, n_points, stride_pos, stride_data,
    inv_cell, tol, rest_eps, reach2, max_iter, flat_slack,
    N_FEATURES: tl.constexpr, D_PAD: tl.constexpr,
    KERNEL: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    RANGES: tl.constexpr, WIDEN: tl.constexpr, TRUNCATE: tl.constexpr,
    DTYPE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    MMA: tl.constexpr, MMA_WIDTH: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    valid = rows < n_order
    seed = tl.load(order_ptr + rows, mask=valid, other=0).to(tl.int64)
    live = valid & (tl.load(done_ptr + seed, mask=valid, other=1) == 0)
    n_live = tl.sum(live.to(tl.int32), 0)
    cols = tl.arange(0, D_PAD)
    valid_cols = cols < N_FEATURES
    # Each feature of the seeds and of the weighted sums is its own column
    # (BLOCK_S, 1), in the 2-D layout of the tiles, and the tiles' row sums
    # keep that shape: the hot loop then converts no layouts (each conversion
    # is a shared-memory round trip and a barrier, per feature and tile).
    seed_col = seed[:, None]
    live_col = live[:, None]
    row_ptrs = pos_ptr + seed_col * stride_pos
    q0 = tl.load(row_ptrs + 0, mask=live_col, other=0.0)
    a0 = tl.zeros((BLOCK_S, 1), DTYPE)
    if N_FEATURES > 1:
        q1 = tl.load(row_ptrs + 1, mask=live_col, other=0.0)
        a1 = tl.zeros((BLOCK_S, 1), DTYPE)
    if N_FEATURES > 2:
        q2 = tl.load(row_ptrs + 2, mask=live_col, other=0.0)
        a2 = tl.zeros((BLOCK_S, 1), DTYPE)
    if N_FEATURES > 3:
        q3 = tl.load(row_ptrs + 3, mask=live_col, other=0.0)
        a3 = tl.zeros((BLOCK_S, 1), DTYPE)
    if N_FEATURES > 4:
        q4 = tl.load(row_ptrs + 4, mask=live_col, other=0.0)
        a4 = tl.zeros((BLOCK_S, 1), DTYPE)
    if N_FEATURES > 5:
        q5 = tl.load(row_ptrs + 5, mask=live_col, other=0.0)
        a5 = tl.zeros((BLOCK_S, 1), DTYPE)
    if N_FEATURES > 6:
        q6 = tl.load(row_ptrs + 6, mask=live_col, other=0.0)
        a6 = tl.zeros((BLOCK_S, 1), DTYPE)
    if N_FEATURES > 7:
        q7 = tl.load(row_ptrs + 7, mask=live_col, other=0.0)
        a7 = tl.zeros((BLOCK_S, 1), DTYPE)

    if RANGES:
        q = tl.load(
            pos_ptr + seed[:, None] * stride_pos + cols[None, :],
            mask=live[:, None] & valid_cols[None, :],
            other=0.0,
        )
        extent = tl.load(cell_extent_ptr + cols, mask=valid_cols, other=1)
        grid_lo = tl.load(grid_lo_ptr + cols, mask=valid_cols, other=0.0)
        cell_stride = tl.load(cell_stride_ptr + cols, mask=valid_cols, other=0)
        # Clamp in floating point first: a seed far outside the grid must not
        # overflow the integer conversion (its window then reads edge cells).
        cell_f = tl.floor((q - grid_lo[None, :]) * inv_cell)
        cell_f = tl.minimum(tl.maximum(cell_f, 0.0), (extent - 1).to(DTYPE)[None, :])
        cell = cell_f.to(tl.int32)
        live_2d = live[:, None] & valid_cols[None, :]
        lo_c = tl.min(tl.where(live_2d, cell, 1 << 30), 0) - WIDEN
        hi_c = tl.max(tl.where(live_2d, cell, -1), 0) + WIDEN
        lo_c = tl.where(valid_cols, tl.maximum(lo_c, 0), 0)
        hi_c = tl.where(valid_cols, tl.minimum(hi_c, extent - 1), 0)
        span = hi_c - lo_c + 1
        # Rows of cells along the last axis are contiguous in the sorted data:
        # one range per combination of the other axes' cells.
        row_span = tl.where(cols < N_FEATURES - 1, span, 1)
        # radix[j] = product of row_span[k] for j < k < N_FEATURES - 1 (mixed-radix digits).
        radix = tl.full((D_PAD,), 1, tl.int32)
        n_runs = 1
        for j in tl.static_range(N_FEATURES - 1):
            span_j = tl.sum(tl.where(cols == j, row_span, 0), 0)
            radix = tl.where(cols < j, radix * span_j, radix)
            n_runs = n_runs * span_j
        n_runs = tl.where(n_live > 0, n_runs, 0)
        # The live seeds' bounding box, to trim each row of cells to the part
        # within reach of it (corner rows shrink or drop out).  Cell edges are
        # widened by a thousandth of a cell so rounding can only read more.
        side = 1.0 / inv_cell
        edge_slack = side * 1e-3
        q_lo = tl.min(tl.where(live_2d, q, float("inf")), 0)
        q_hi = tl.max(tl.where(live_2d, q, float("-inf")), 0)
        is_last = cols == N_FEATURES - 1
        q_lo_last = tl.sum(tl.where(is_last, q_lo, 0.0), 0)
        q_hi_last = tl.sum(tl.where(is_last, q_hi, 0.0), 0)
        lo_last = tl.sum(tl.where(is_last, lo_c, 0), 0)
        hi_last = tl.sum(tl.where(is_last, hi_c, 0), 0)
        grid_lo_last = tl.sum(tl.where(is_last, grid_lo, 0.0), 0)
    else:
        n_runs = tl.where(n_live > 0, 1, 0)

    l_i = tl.zeros((BLOCK_S, 1), DTYPE)
    m_i = tl.full((BLOCK_S, 1), float("-inf"), DTYPE)
    if MMA:
        # Weighted sums on the tensor cores: p @ [x, 1] with 3-pass tf32
        # (float32-level accuracy); the last used column sums the weights.
        x_cols = tl.arange(0, MMA_WIDTH)[None, :]
        acc = tl.zeros((BLOCK_S, MMA_WIDTH), tl.float32)
    for r in range(0, n_runs):
        if RANGES:
            is_row_axis = cols < N_FEATURES - 1
            c = lo_c + tl.where(is_row_axis, (r // radix) % row_span, 0)
            cell_lo = grid_lo + c.to(DTYPE) * side - edge_slack
            cell_hi = cell_lo + side + 2 * edge_slack
            gap = tl.maximum(tl.maximum(cell_lo - q_hi, q_lo - cell_hi), 0.0)
            gap = tl.where(is_row_axis, gap, 0.0)
            rest2 = reach2 - tl.sum(gap * gap, 0)
            rest = tl.sqrt(tl.maximum(rest2, 0.0))
            # Clamped in floating point: far seeds must not overflow the conversion.
            first_f = tl.floor((q_lo_last - rest - grid_lo_last) * inv_cell - 1e-3)
            last_f = tl.floor((q_hi_last + rest - grid_lo_last) * inv_cell + 1e-3)
            first_cell = tl.minimum(tl.maximum(first_f, lo_last.to(DTYPE)), hi_last.to(DTYPE) + 1).to(tl.int32)
            last_cell = tl.minimum(tl.maximum(last_f, lo_last.to(DTYPE) - 1), hi_last.to(DTYPE)).to(tl.int32)
            row_key = tl.sum(tl.where(is_row_axis, c, 0).to(tl.int64) * cell_stride, 0)
            start = tl.load(cell_start_ptr + row_key + first_cell)
            end = tl.load(cell_start_ptr + row_key + last_cell + 1)
            # A row beyond reach of every seed is skipped.
            end = tl.where((rest2 >= 0.0) & (last_cell >= first_cell), end, start)
        else:
            start = 0
            end = n_points
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)[None, :]
            valid_n = offs_n < end
            x0 = tl.load(data_t_ptr + offs_n, mask=valid_n, other=0.0)
            d2 = _squared_gap(q0, x0)
            if N_FEATURES > 1:
                x1 = tl.load(data_t_ptr + 1 * stride_data + offs_n, mask=valid_n, other=0.0)
                d2 += _squared_gap(q1, x1)
            if N_FEATURES > 2:
                x2 = tl.load(data_t_ptr + 2 * stride_data + offs_n, mask=valid_n, other=0.0)
                d2 += _squared_gap(q2, x2)
            if N_FEATURES > 3:
                x3 = tl.load(data_t_ptr + 3 * stride_data + offs_n, mask=valid_n, other=0.0)
                d2 += _squared_gap(q3, x3)
            if N_FEATURES > 4:
                x4 = tl.load(data_t_ptr + 4 * stride_data + offs_n, mask=valid_n, other=0.0)
                d2 += _squared_gap(q4, x4)
            if N_FEATURES > 5:
                x5 = tl.load(data_t_ptr + 5 * stride_data + offs_n, mask=valid_n, other=0.0)
                d2 += _squared_gap(q5, x5)
            if N_FEATURES > 6:
                x6 = tl.load(data_t_ptr + 6 * stride_data + offs_n, mask=valid_n, other=0.0)
                d2 += _squared_gap(q6, x6)
            if N_FEATURES > 7:
                x7 = tl.load(data_t_ptr + 7 * stride_data + offs_n, mask=valid_n, other=0.0)
                d2 += _squared_gap(q7, x7)
            inside = valid_n
            if TRUNCATE:
                inside = inside & (d2 <= reach2)
            if KERNEL == "gaussian":
                logit = d2 * NEG_HALF_LOG2E
                if HAS_WEIGHTS:
                    w_n = tl.load(weights_ptr + offs_n, mask=valid_n, other=0.0)
                    logit = logit + w_n  # log2 of the sample weights
                logit = tl.where(inside, logit, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(logit, 1, keep_dims=True))
                # Rows with only -inf logits so far shift by 0 (exp2 gives 0, not NaN).
                shift = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - shift)
                p = tl.exp2(logit - shift)
                m_i = m_new
                if not MMA:
                    l_i = l_i * alpha + tl.sum(p, 1, keep_dims=True)
                    a0 = a0 * alpha
                    if N_FEATURES > 1:
                        a1 = a1 * alpha
                    if N_FEATURES > 2:
                        a2 = a2 * alpha
                    if N_FEATURES > 3:
                        a3 = a3 * alpha
                    if N_FEATURES > 4:
                        a4 = a4 * alpha
                    if N_FEATURES > 5:
                        a5 = a5 * alpha
                    if N_FEATURES > 6:
                        a6 = a6 * alpha
                    if N_FEATURES > 7:
                        a7 = a7 * alpha
            else:
                if KERNEL == "flat":
                    p = tl.where(d2 - 1.0 <= flat_slack, 1.0, 0.0).to(DTYPE)
                else:  # epanechnikov
                    p = tl.maximum(1.0 - d2, 0.0)
                if HAS_WEIGHTS:
                    w_n = tl.load(weights_ptr + offs_n, mask=valid_n, other=0.0)
                    p = p * w_n
                p = tl.where(inside, p, 0.0)
                if not MMA:
                    l_i += tl.sum(p, 1, keep_dims=True)
            if MMA:
                offs_col = n0 + tl.arange(0, BLOCK_N)[:, None]
                valid_col = offs_col < end
                x_ext = tl.load(data_t_ptr + x_cols * stride_data + offs_col,
                                mask=valid_col & (x_cols < N_FEATURES), other=0.0)
                x_ext = tl.where(valid_col & (x_cols == N_FEATURES), 1.0, x_ext)
                if KERNEL == "gaussian":
                    acc = acc * alpha
                acc = tl.dot(p, x_ext, acc, input_precision="tf32x3")
            else:
                a0 += tl.sum(p * x0, 1, keep_dims=True)
                if N_FEATURES > 1:
                    a1 += tl.sum(p * x1, 1, keep_dims=True)
                if N_FEATURES > 2:
                    a2 += tl.sum(p * x2, 1, keep_dims=True)
                if N_FEATURES > 3:
                    a3 += tl.sum(p * x3, 1, keep_dims=True)
                if N_FEATURES > 4:
                    a4 += tl.sum(p * x4, 1, keep_dims=True)
                if N_FEATURES > 5:
                    a5 += tl.sum(p * x5, 1, keep_dims=True)
                if N_FEATURES > 6:
                    a6 += tl.sum(p * x6, 1, keep_dims=True)
                if N_FEATURES > 7:
                    a7 += tl.sum(p * x7, 1, keep_dims=True)

    if MMA:
        l_i = _column(acc, x_cols, N_FEATURES)
        a0 = _column(acc, x_cols, 0)
        if N_FEATURES > 1:
            a1 = _column(acc, x_cols, 1)
        if N_FEATURES > 2:
            a2 = _column(acc, x_cols, 2)
        if N_FEATURES > 3:
            a3 = _column(acc, x_cols, 3)
        if N_FEATURES > 4:
            a4 = _column(acc, x_cols, 4)
        if N_FEATURES > 5:
            a5 = _column(acc, x_cols, 5)
        if N_FEATURES > 6:
            a6 = _column(acc, x_cols, 6)
        if N_FEATURES > 7:
            a7 = _column(acc, x_cols, 7)

    # New positions (old ones where the window is empty), the shift and the stop test.
    empty = l_i <= 0.0
    safe_l = tl.where(empty, 1.0, l_i)
    shift2 = tl.zeros((BLOCK_S, 1), DTYPE)
    largest = tl.zeros((BLOCK_S, 1), DTYPE)
    shift2, largest = _move_feature(row_ptrs + 0, q0, a0, empty, safe_l, live_col, shift2, largest)
    if N_FEATURES > 1:
        shift2, largest = _move_feature(row_ptrs + 1, q1, a1, empty, safe_l, live_col, shift2, largest)
    if N_FEATURES > 2:
        shift2, largest = _move_feature(row_ptrs + 2, q2, a2, empty, safe_l, live_col, shift2, largest)
    if N_FEATURES > 3:
        shift2, largest = _move_feature(row_ptrs + 3, q3, a3, empty, safe_l, live_col, shift2, largest)
    if N_FEATURES > 4:
        shift2, largest = _move_feature(row_ptrs + 4, q4, a4, empty, safe_l, live_col, shift2, largest)
    if N_FEATURES > 5:
        shift2, largest = _move_feature(row_ptrs + 5, q5, a5, empty, safe_l, live_col, shift2, largest)
    if N_FEATURES > 6:
        shift2, largest = _move_feature(row_ptrs + 6, q6, a6, empty, safe_l, live_col, shift2, largest)
    if N_FEATURES > 7:
        shift2, largest = _move_feature(row_ptrs + 7, q7, a7, empty, safe_l, live_col, shift2, largest)
    shift_len = tl.sqrt(shift2)
    # A shift of a unit or two in the last place is a fixed point reached up to rounding.
    at_rest = shift_len <= rest_eps * (largest + 1.0)
    steps = tl.load(n_iter_ptr + seed_col, mask=live_col, other=0)
    stop = empty | (shift_len <= tol) | at_rest | (steps >= max_iter)
    tl.store(dens_ptr + seed_col, tl.where(empty, 0.0, l_i), mask=live_col)
    if KERNEL == "gaussian":
        tl.store(logit_max_ptr + seed_col, m_i, mask=live_col)
    tl.store(done_ptr + seed_col, stop.to(tl.int8), mask=live_col)
    tl.store(n_iter_ptr + seed_col, steps + tl.where(stop, 0, 1), mask=live_col)


@triton.jit
def _column(acc, cols, j):
    """Column ``j`` of a (seeds, MMA_WIDTH) accumulator, as a (seeds, 1) column."""
    return tl.sum(tl.where(cols == j, acc, 0.0), 1, keep_dims=True)


@triton.jit
def _move_feature(ptrs, q, total, empty, safe_l, live, shift2, largest):
    """Store one feature of the new positions (the old one where the window is empty);
    return the squared shift and the largest |coordinate| so far, with it added."""
    moved = tl.where(empty, q, total / safe_l)
    tl.store(ptrs, moved, mask=live)
    return shift2 + (moved - q) * (moved - q), tl.maximum(largest, tl.abs(q))


@triton.jit
def _squared_gap(q, x):
    """``(q_i - x_j)**2`` for a column of seeds' coordinates and a row of points' ones."""
    gap = q - x
    return gap * gap


class GridRanges:
    """Data sorted by grid cell with a dense table of cell starts (the ranges' index).

    Parameters
    ----------
    data : Tensor of shape (n_points, n_features)
        Scaled data (float32 or float64).
    weights : Tensor of shape (n_points,) or None
        Sample weights, sorted with the data.
    reach : float
        Distance beyond which a point is ignored (1 for flat / Epanechnikov,
        the truncation radius for the Gaussian).
    cells_per_reach : int
        Cells per ``reach`` along each axis; a block of seeds reads its
        cells' bounding box widened by this many cells.
    max_cells : int
        Largest cell table allowed; :meth:`build` returns None beyond it.

    Attributes
    ----------
    data_t : Tensor of shape (n_features, n_points)
        The sorted data, feature-major.
    order : Tensor of shape (n_points,)
        Row of the input data of each sorted point.
    cell_start : int64 Tensor of shape (n_cells + 1,)
        First sorted point of each cell (row-major cell keys).
    """

    def __init__(self, data, weights, reach, cells_per_reach, extent, grid_lo, cell_side, keys):
        self.reach = float(reach)
        self.cells_per_reach = int(cells_per_reach)
        self.cell_side = float(cell_side)
        device = data.device
        n_features = data.shape[1]
        strides = [1] * n_features
        for j in range(n_features - 2, -1, -1):
            strides[j] = strides[j + 1] * extent[j + 1]
        self.extent = torch.tensor(extent, dtype=torch.int32, device=device)
        self.cell_stride = torch.tensor(strides, dtype=torch.int64, device=device)
        self.grid_lo = grid_lo.to(data.dtype).contiguous()
        keys, order = torch.sort(keys, stable=True)
        self.order = order
        self.data_t = data[order].T.contiguous()
        self.weights = None if weights is None else weights[order].contiguous()
        n_cells = 1
        for e in extent:
            n_cells *= e
        self.n_cells = n_cells
        self.cell_start = torch.searchsorted(keys, torch.arange(n_cells + 1, device=device, dtype=keys.dtype))

    @classmethod
    def build(cls, data: torch.Tensor, weights: torch.Tensor | None, reach: float, *,
              cells_per_reach: int = 1, max_cells: int = 1 << 26) -> "GridRanges | None":
        """The index, or None when its cell table would exceed ``max_cells`` entries.

        Cells are a hair wider than ``reach / cells_per_reach``: enough that
        the rounding of ``(x - lo) / side`` in the compute dtype can never
        put a point within ``reach`` of a seed more than ``cells_per_reach``
        cells away from it.
        """
        n, d = data.shape
        lo = data.amin(0).double()
        hi = data.amax(0).double()
        span_cells = float(((hi - lo).max() * cells_per_reach / reach).item()) + 2.0
        if not span_cells < 2.0 ** 40:
            return None
        eps = torch.finfo(data.dtype).eps
        side = reach / cells_per_reach * (1.0 + 16.0 * eps * span_cells)
        extent = [int(e) + 1 for e in torch.floor((hi - lo) / side).tolist()]
        total = 1
        for e in extent:
            total *= e
        if total > max_cells:
            return None
        grid_lo = lo.to(data.dtype)
        cells = torch.floor((data - grid_lo) * (1.0 / side))
        cells = torch.minimum(cells.clamp_min(0), torch.tensor(extent, device=data.device, dtype=data.dtype) - 1).long()
        strides = [1] * d
        for j in range(d - 2, -1, -1):
            strides[j] = strides[j + 1] * extent[j + 1]
        keys = (cells * torch.tensor(strides, device=data.device)).sum(1)
        return cls(data, weights, reach, cells_per_reach, extent, grid_lo, side, keys)

    def seed_keys(self, seeds: torch.Tensor) -> torch.Tensor:
        """Cell key of each seed (clamped into the grid): sort seeds by it for compact boxes."""
        cells = torch.floor((seeds - self.grid_lo) * (1.0 / self.cell_side))
        cells = torch.minimum(cells.clamp_min(0), (self.extent - 1).to(seeds.dtype)).long()
        return (cells * self.cell_stride).sum(1)


def launch_tile(
    n_features: int, kernel: str, device: torch.device, dtype: torch.dtype, *,
    tile: Tile | None = None, variant: str | None = None,
) -> tuple[Tile, bool]:
    """The tile a launch uses, and whether it runs the tensor-core (``mma``) variant.

    ``tile`` None takes the committed table's (the interpreter's small tile
    under ``TRITON_INTERPRET=1``); ``variant`` None takes
    ``MEANSHIFT_GPU_ASCENT_VARIANT`` or :data:`DEFAULT_VARIANT`.  The mma
    variant runs float32 only, on tiles of at least 16 rows.

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu.kernels._ascent import launch_tile
    >>> tile, mma = launch_tile(2, "flat", torch.device("cpu"), torch.float32, variant="reduce")
    >>> mma
    False
    """
    if tile is None:
        tile = _INTERPRETER_TILE if INTERPRETED else pick_tile("ascent", n_features, kernel, device, dtype)
    variant = variant or os.environ.get("MEANSHIFT_GPU_ASCENT_VARIANT") or DEFAULT_VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"unknown ascent variant {variant!r}; expected one of {VARIANTS}")
    use_mma = variant == "mma" and dtype == torch.float32
    if use_mma and tile.rows < 16:
        tile = Tile(16, max(16, tile.cols), tile.num_warps, tile.num_stages)
    return tile, use_mma


def ascent_steps(
    positions: torch.Tensor,
    density: torch.Tensor,
    logit_max: torch.Tensor,
    n_iter: torch.Tensor,
    done: torch.Tensor,
    order: torch.Tensor,
    data_t: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    kernel: str,
    tol: float,
    max_iter: int,
    n_steps: int = 1,
    ranges: GridRanges | None = None,
    tile: Tile | None = None,
    variant: str | None = None,
) -> None:
    """Run ``n_steps`` fused ascent steps, in place, on the seeds listed in ``order``.

    Parameters
    ----------
    positions : Tensor of shape (m, d)
        Seed positions (scaled coordinates), contiguous; updated in place.
    density : Tensor of shape (m,)
        Density sum at each seed's last position (0: empty window); written.
    logit_max : Tensor of shape (m,)
        Gaussian only: the base-2 logit maximum the density sum is relative
        to (``log density = log(density) + logit_max * ln 2``); written.
    n_iter : int64 Tensor of shape (m,)
        Completed iterations per seed; updated.
    done : int8 Tensor of shape (m,)
        1 for stopped seeds (never stepped again); updated.
    order : int32 or int64 Tensor of shape (k,)
        Seeds to step, in the order programs take them (sorted by cell for
        ``ranges``, so neighbouring seeds share a program).
    data_t : Tensor of shape (d, n)
        Data, feature-major (``ranges.data_t`` with ``ranges``).
    weights : Tensor of shape (n,) or None
        Sample weights (in ``ranges``' order with ``ranges``); ``log2`` of them
        for the Gaussian.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile (bandwidth 1).
    tol, max_iter : float, int
        Stop rules, as in scikit-learn (``tol`` in bandwidths).
    n_steps : int
        Launches in a row.
    ranges : GridRanges or None
        Read only the cells around each program's seeds.
    tile : Tile or None
        Seeds and points per program step; None: the tile table.
    variant : {"reduce", "mma"} or None
        How the weighted sums are formed: ``"reduce"``, row sums of each
        tile (float32 or float64); ``"mma"``, ``p @ [x, 1]`` on the tensor
        cores in 3-pass tf32 (float32 only; float32-level accuracy).  None:
        :data:`DEFAULT_VARIANT`, or ``MEANSHIFT_GPU_ASCENT_VARIANT``.

    Examples
    --------
    >>> import os, torch
    >>> _ = os.environ.setdefault("TRITON_INTERPRET", "1")
    >>> from meanshift_gpu.kernels import _ascent
    >>> data = torch.tensor([[0.0], [0.5], [5.0]])
    >>> pos = data[:1].clone(); dens = torch.zeros(1); lmax = torch.zeros(1)
    >>> steps = torch.zeros(1, dtype=torch.long); done = torch.zeros(1, dtype=torch.int8)
    >>> _ascent.ascent_steps(pos, dens, lmax, steps, done, torch.arange(1), data.T.contiguous(),
    ...                      None, kernel="flat", tol=1e-3, max_iter=300, n_steps=3)
    >>> pos.tolist(), dens.tolist(), steps.tolist(), done.tolist()
    ([[0.25]], [2.0], [1], [1])
    """
    check_kernel(kernel)
    n_features = positions.shape[1]
    if not 1 <= n_features <= MAX_FEATURES:
        raise ValueError(f"the fused ascent takes 1 to {MAX_FEATURES} features, got {n_features}")
    dtype = positions.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"positions must be float32 or float64, got {dtype}")
    if data_t.dtype != dtype or (weights is not None and weights.dtype != dtype):
        raise TypeError("data and weights must have the positions' dtype")
    if not positions.is_contiguous():
        raise ValueError("positions must be contiguous")
    n_order = order.shape[0]
    if n_order == 0 or n_steps <= 0:
        return
    tile, use_mma = launch_tile(n_features, kernel, positions.device, dtype, tile=tile, variant=variant)
    if ranges is None:
        dummy_int = order
        cell_args = (dummy_int, dummy_int, dummy_int, positions)
        inv_cell, reach2, widen = 1.0, 1.0, 0
    else:
        cell_args = (ranges.cell_start, ranges.cell_stride, ranges.extent, ranges.grid_lo)
        inv_cell = 1.0 / ranges.cell_side
        reach2 = ranges.reach * ranges.reach  # for the flat kernel, kernel_reach's sqrt(edge)
        widen = ranges.cells_per_reach
    meta = dict(
        N_FEATURES=n_features, D_PAD=triton.next_power_of_2(n_features),
        KERNEL=kernel, HAS_WEIGHTS=weights is not None,
        RANGES=ranges is not None, WIDEN=widen,
        TRUNCATE=ranges is not None and kernel == "gaussian",
        DTYPE=tl.float64 if dtype == torch.float64 else tl.float32,
        BLOCK_S=tile.rows, BLOCK_N=tile.cols,
        MMA=use_mma, MMA_WIDTH=max(16, triton.next_power_of_2(n_features + 1)),
    )
    if not INTERPRETED:
        meta.update(num_warps=tile.num_warps, num_stages=tile.num_stages)
    rest_eps = 2.0 * torch.finfo(dtype).eps
    grid = (triton.cdiv(n_order, tile.rows),)
    args = (
        positions, density, logit_max, n_iter, done, order,
        data_t, data_t if weights is None else weights,
        *cell_args,
        n_order, data_t.shape[1], positions.stride(0), data_t.stride(0),
        inv_cell, float(tol), rest_eps, reach2, int(max_iter), flat_slack(),
    )
    for _ in range(n_steps):
        _ascent_kernel[grid](*args, **meta)
