"""Exact flat-kernel steps from prefix sums over rows of fine cells (1 <= d <= 3).

The flat step needs, for every seed ``q``, the (weighted) count and sum of the
points in the ball ``|x - q| <= 1`` (scaled coordinates).  Grid hashing reads
every point of the ``3**d`` cells around the seed and tests each one; in 2-D
that is ~3x the ball's area, and every point of a dense window costs a
distance test.  Here most of the ball costs nothing per point:

* Space minus the first axis is cut into cells of side ``1 / m``; a *row* is
  the set of points whose last ``d - 1`` coordinates fall into one such cell.
  Points are sorted by (row, first coordinate), so each row is a contiguous
  run ordered along the first axis, and running sums of ``[w x, w]`` over the
  sorted points give the sum over any run in O(1).
* For a seed and a row whose cell lies at distance between ``rho_min`` and
  ``rho_max`` from the seed (in the last ``d - 1`` coordinates), every point
  with ``|x_0 - q_0| <= sqrt(1 - rho_max^2)`` is inside the ball and every
  point with ``|x_0 - q_0| > sqrt(1 - rho_min^2)`` is outside.  The first run
  is summed from the running sums; only the points between the two bounds
  (two short runs per row) are tested one by one, with the same distance
  formula as the dense step.

With ``m`` cells per bandwidth the tested points fill a band of area about
``4 / m`` in 2-D (``m = 8``: 16% of the unit disc) instead of the grid's 9
cells, and the rest of the ball is ``O(rows)`` per seed whatever its density.
The interior bound keeps a margin of ``_INTERIOR_MARGIN`` in squared distance
so rounding can never put a point there that the dense test would reject;
the band is widened by the same margin, so the result is the dense step's
result up to float rounding (the sums are int64 fixed point, see
:func:`_summands`).

Locating a run is a binary search in one sorted array of *composite keys*
``row_rank * span + x_0``: rows are separated by more than any search window,
and every bound is moved outward (band) or inward (interior) by a few units in
the last place of the largest key, so the search's rounding only moves points
from the interior into the tested band, never out of both.

:func:`compiled_rowsum_step` runs the same step as a compiled CPU loop
(the C extension, :mod:`meanshift_gpu._neighbors.compiled`) on the same index: it walks
each seed group's rows instead of materialising (seed, row) and (seed, point)
pairs, and its results equal :func:`rowsum_step`'s bit for bit.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from .._reference import StepResult, flat_edge
from .._decisions import ROW_CELLS, row_sums_step
from .base import NeighborMethod
from .grid import MAX_KEY_SPACE

__all__ = [
    "RowSumIndex", "RowSumNeighbors", "rowsum_step", "compiled_rowsum_step", "ROW_CELLS",
    "ROWSUM_MAX_FEATURES",
]

# Row sums take 1 to this many features (the default cells per bandwidth,
# ROW_CELLS, and the rule that picks them live in meanshift_gpu._decisions).
ROWSUM_MAX_FEATURES = 3
# Squared-distance margin between the summed interior and the ball's edge.
_INTERIOR_MARGIN = 1e-5
_TOO_WIDE = (
    "the data span too many bandwidths for the row sums' 64-bit keys and sums; "
    "use neighbor_options={'row_sums': False}"
)


class RowSumIndex:
    """Data sorted by (row of fine cells, first coordinate), with running sums.

    Parameters
    ----------
    data : Tensor of shape (n_points, n_features)
        Scaled data (the flat window has radius 1), ``1 <= n_features <= 3``.
    weights : Tensor of shape (n_points,) or None
        Sample weights.
    cells_per_unit : int, optional
        ``m``: rows are cells of side ``1 / m`` in the last ``n_features - 1``
        coordinates (default from ``ROW_CELLS``).

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [0.5, 0.1], [3.0, 0.0]], dtype=torch.float64)
    >>> index = RowSumIndex(x, None)
    >>> step = rowsum_step(torch.tensor([[0.0, 0.0]], dtype=torch.float64), index)
    >>> step.positions.tolist(), round(math.exp(float(step.log_density[0])), 6)
    ([[0.25, 0.05]], 2.0)
    """

    def __init__(self, data: torch.Tensor, weights: torch.Tensor | None, cells_per_unit: int | None = None):
        n, d = data.shape
        if not 1 <= d <= ROWSUM_MAX_FEATURES:
            raise ValueError(f"row sums support 1 to {ROWSUM_MAX_FEATURES} features, got {d}")
        self.n_features = d
        self.m = int(cells_per_unit or ROW_CELLS[d])
        if self.m < 1 or self.m & (self.m - 1):
            # Powers of two keep ``floor(x * m)`` and the cell bounds ``c / m`` exact.
            raise ValueError(f"cells_per_unit must be a power of two, got {cells_per_unit!r}")
        device = data.device
        z = data.to(torch.float64)
        largest = float(z.abs().max()) if n else 0.0
        if largest * self.m >= 2.0**52:
            raise OverflowError(_TOO_WIDE)
        cells = torch.floor(z[:, 1:] * self.m).long()
        reach = self.m + 2  # cells a seed's rows may be away from its own, plus one
        if n:
            lo, hi = cells.amin(0), cells.amax(0)
        else:
            lo = hi = torch.zeros(d - 1, dtype=torch.long, device=device)
        self.origin = lo - reach
        extent = hi - lo + 2 * reach + 1
        if math.prod(int(e) for e in extent.tolist()) >= MAX_KEY_SPACE:
            raise OverflowError(_TOO_WIDE)
        self.cell_lo, self.cell_hi = lo - reach + 1, hi + reach - 1
        strides = torch.ones(d - 1, dtype=torch.long, device=device)
        for j in range(d - 3, -1, -1):
            strides[j] = strides[j + 1] * extent[j + 1]
        self.strides = strides
        key = ((cells - self.origin) * strides).sum(1)
        # Lexicographic (row, x_0): sort by x_0, then stably by row.
        by_x = torch.argsort(z[:, 0], stable=True)
        order = by_x[torch.argsort(key[by_x], stable=True)]
        self.order = order
        self.points = data[order].contiguous()
        key = key[order]
        self.row_keys, row_counts = torch.unique_consecutive(key, return_counts=True)
        self.row_bounds = torch.zeros(self.row_keys.numel() + 1, dtype=torch.long, device=device)
        torch.cumsum(row_counts, 0, out=self.row_bounds[1:])
        rank = torch.repeat_interleave(torch.arange(self.row_keys.numel(), device=device), row_counts)
        x0 = z[order, 0]
        self.first_coordinate = x0
        self.x0_min = float(x0.min()) if n else 0.0
        # Rows are ``span`` apart; a search window is at most 2 + 2 margins wide
        # and clamped into its row's slot, so windows never reach another row.
        self.span = (float(x0.max()) - self.x0_min if n else 0.0) + 8.0
        self.composite = rank.to(torch.float64) * self.span + (x0 - self.x0_min + 4.0)
        top = self.row_keys.numel() * self.span
        # Queries ``x_0 +- w`` round at the size of x_0 itself before the key is formed.
        self.key_eps = 16.0 * (math.ulp(max(top, 1.0)) + math.ulp(largest + 2.0))
        if self.key_eps > 0.5:  # rows (``span`` apart) would blur into each other
            raise OverflowError(_TOO_WIDE)
        self.weights = None if weights is None else weights[order].contiguous()
        self.summands, self.coord_scales, self.weight_scale, self.weight_unit = _summands(z[order], self.weights)
        self.prefix = torch.zeros(n + 1, d + 1, dtype=self.summands.dtype, device=device)
        torch.cumsum(self.summands, 0, out=self.prefix[1:])
        offsets = list(itertools.product(range(-self.m - 1, self.m + 2), repeat=d - 1))
        self.offsets = torch.tensor(offsets, dtype=torch.long, device=device).reshape(len(offsets), d - 1)

    @functools.cached_property
    def compiled_tables(self) -> dict:
        """The arrays as contiguous numpy views, by their name in :class:`meanshift_gpu._neighbors.compiled.RowSumArgs`,
        and the longest row.

        The points, (d, n), and the summands, (d + 1, n), are copied
        feature-major: the compiled band loop reads one contiguous row per
        feature.  Built on first use (only the compiled step needs them) and
        kept for the fit's later steps.
        """
        arrays = {"row_keys": self.row_keys, "row_bounds": self.row_bounds, "first": self.first_coordinate,
                  "coords": self.points.T, "sums": self.summands.T, "prefix": self.prefix, "origin": self.origin,
                  "strides": self.strides, "cell_lo": self.cell_lo, "cell_hi": self.cell_hi}
        tables = {name: a.contiguous().numpy() for name, a in arrays.items()}
        bounds = tables["row_bounds"]
        tables["longest_row"] = int(np.max(bounds[1:] - bounds[:-1])) if bounds.shape[0] > 1 else 0
        return tables

    def _search(self, rank: torch.Tensor, x0: torch.Tensor, right: bool) -> torch.Tensor:
        inside_slot = (x0 - self.x0_min + 4.0).clamp_(0.5, self.span - 0.5)
        return torch.searchsorted(self.composite, rank * self.span + inside_slot, right=right)


def rowsum_step(
    seeds: torch.Tensor, index: RowSumIndex, *, max_pairs: int = 1 << 22
) -> StepResult:
    """One exact flat-kernel mean-shift step (see the module docstring).

    Parameters
    ----------
    seeds : Tensor of shape (n_seeds, n_features)
        Scaled seed positions.
    index : RowSumIndex
        The data.
    max_pairs : int
        Seed-row pairs, and tested seed-point pairs, held at once.

    Returns
    -------
    StepResult
        Same contract as :func:`meanshift_gpu._reference.mean_shift_step` with
        ``kernel="flat"``.
    """
    return _step(seeds, index, _accumulate, max_pairs)


def interior_margin() -> float:
    """Squared-distance margin between the summed interior, the tested band and the outside.

    At least ``_INTERIOR_MARGIN``, and wider than the flat window's edge
    allowance (:func:`meanshift_gpu._reference.flat_edge`), so every point
    the band test could count is tested.
    """
    return max(_INTERIOR_MARGIN, 4.0 * (flat_edge() - 1.0))


def _own_row_keys(q: torch.Tensor, index: RowSumIndex) -> torch.Tensor:
    """Key of the row cell each (float64) seed lies in; all 0 in 1-D, where there is one row."""
    own = torch.floor(q[:, 1:] * index.m).long()
    return ((own - index.origin) * index.strides).sum(1)


def _step(seeds, index, accumulate, max_pairs) -> StepResult:
    n_seeds, d = seeds.shape
    if d != index.n_features:
        raise ValueError(f"seeds have {d} features, the index {index.n_features}")
    device = seeds.device
    if index.points.shape[0] == 0:
        return StepResult(seeds.clone(), torch.full((n_seeds,), -math.inf, dtype=seeds.dtype, device=device))
    # Seeds in the data's (row, x_0) order: neighbouring seeds search and
    # read neighbouring stretches of the sorted data.
    row_key = _own_row_keys(seeds.to(torch.float64), index)
    by_x = torch.argsort(seeds[:, 0], stable=True)
    order = by_x[torch.argsort(row_key[by_x], stable=True)]
    ordered = seeds[order]
    acc = torch.zeros(n_seeds, d + 1, dtype=index.summands.dtype, device=device)
    # ~10 temporaries per (seed, row) pair while the rows are found; the
    # compiled step holds none (``max_pairs=None``: one call).
    chunk = max(1, n_seeds) if max_pairs is None else max(1, max_pairs // (4 * index.offsets.shape[0]))
    for s0 in range(0, n_seeds, chunk):
        accumulate(ordered[s0 : s0 + chunk], index, acc[s0 : s0 + chunk], max_pairs)
    acc = acc[torch.argsort(order)]
    count = acc[:, -1]
    empty = count <= 0
    safe = torch.where(empty, 1, count).to(torch.float64)
    means = (acc[:, :-1].to(torch.float64) / index.coord_scales) / (safe[:, None] / index.weight_scale)
    positions = torch.where(empty[:, None], seeds, means.to(seeds.dtype))
    total = safe / index.weight_scale * index.weight_unit
    log_density = torch.where(empty, -math.inf, torch.log(total)).to(seeds.dtype)
    return StepResult(positions, log_density)


def _rows_near(q: torch.Tensor, index: RowSumIndex):
    """Occupied rows whose cell comes within the ball of each seed.

    Returns ``(seed_id, rank, rho_min2, rho_max2)`` per (seed, row) pair: the
    row's rank and the squared smallest and largest distance from the seed
    to the row's cell in the last ``d - 1`` coordinates.  Pairs come in
    (offset, seed) order: for one offset the rows follow the seeds.
    """
    m = index.m
    own = torch.floor(q[:, 1:] * m).long()
    cells = own[None, :, :] + index.offsets[:, None, :]
    across = q[None, :, 1:]
    lo = cells.to(torch.float64) / m
    hi = (cells + 1).to(torch.float64) / m
    gap = (lo - across).clamp_min(0.0) + (across - hi).clamp_min(0.0)
    far = torch.maximum(across - lo, hi - across)
    rho_min2 = gap.square().sum(-1)
    rho_max2 = far.square().sum(-1)
    near = rho_min2 <= 1.0 + interior_margin()
    near &= ((cells >= index.cell_lo) & (cells <= index.cell_hi)).all(-1)
    key = ((cells - index.origin) * index.strides).sum(-1)
    offset_id, seed_id = torch.nonzero(near, as_tuple=True)
    key = key[offset_id, seed_id]
    rho_min2 = rho_min2[offset_id, seed_id]
    rho_max2 = rho_max2[offset_id, seed_id]
    rank = torch.searchsorted(index.row_keys, key)
    last_row = max(0, index.row_keys.numel() - 1)
    occupied = (rank < index.row_keys.numel()) & (index.row_keys[rank.clamp_max(last_row)] == key)
    return seed_id[occupied], rank[occupied], rho_min2[occupied], rho_max2[occupied]


def _accumulate(seeds: torch.Tensor, index: RowSumIndex, acc: torch.Tensor, max_pairs: int) -> None:
    """Add the window sums ``[sum w x, sum w]`` of ``seeds`` into ``acc``."""
    q = seeds.to(torch.float64)
    seed_id, rank, rho_min2, rho_max2 = _rows_near(q, index)
    rank = rank.to(torch.float64)
    x0 = q[seed_id, 0]
    eps = index.key_eps
    margin = interior_margin()
    w_out = (1.0 + margin - rho_min2).clamp_min(0.0).sqrt()
    inner2 = 1.0 - margin - rho_max2
    w_in = inner2.clamp_min(0.0).sqrt()
    lo_out = index._search(rank, x0 - w_out - eps, right=False)
    hi_out = index._search(rank, x0 + w_out + eps, right=True)
    lo_in = index._search(rank, x0 - w_in + eps, right=False)
    hi_in = index._search(rank, x0 + w_in - eps, right=True)
    no_interior = (inner2 <= 0) | (hi_in <= lo_in)
    lo_in = torch.where(no_interior, lo_out, lo_in.clamp(lo_out, hi_out))
    hi_in = torch.where(no_interior, lo_out, hi_in.clamp(lo_in, hi_out))
    acc.index_add_(0, seed_id, index.prefix[hi_in] - index.prefix[lo_in])
    # The two bands of each (seed, row): [lo_out, lo_in) and [hi_in, hi_out).
    starts = torch.cat([lo_out, hi_in])
    lengths = torch.cat([lo_in - lo_out, hi_out - hi_in])
    owners = torch.cat([seed_id, seed_id])
    keep = lengths > 0
    starts, lengths, owners = starts[keep], lengths[keep], owners[keep]
    if starts.numel() == 0:
        return
    cumulative = torch.cumsum(lengths, 0)
    first = 0
    while first < starts.numel():
        base = int(cumulative[first - 1]) if first else 0
        bound = torch.tensor(base + max_pairs, device=cumulative.device)
        last = min(starts.numel(), max(first + 1, int(torch.searchsorted(cumulative, bound, right=True))))
        _test_band(seeds, index, acc, starts[first:last], lengths[first:last], owners[first:last])
        first = last


def _test_band(seeds, index, acc, starts, lengths, owners) -> None:
    """Test every point of the runs one by one and add the hits.

    The distance is the reference formula, summed feature by feature in the
    same order, so a point on the ball's edge is in or out exactly as in the
    dense step.
    """
    total = int(lengths.sum())
    run_first = torch.cumsum(lengths, 0) - lengths
    point = torch.repeat_interleave(starts - run_first, lengths) + torch.arange(total, device=starts.device)
    owner = torch.repeat_interleave(owners, lengths)
    squares = torch.repeat_interleave(seeds[owners], lengths, dim=0).sub_(index.points[point]).square_()
    d2 = squares[:, 0].clone()
    for j in range(1, squares.shape[1]):
        d2 += squares[:, j]
    hit = torch.nonzero(d2 <= flat_edge()).squeeze(1)
    acc.index_add_(0, owner[hit], index.summands[point[hit]])


def compiled_rowsum_step(seeds: torch.Tensor, index: RowSumIndex, shared_radius: float | None = None) -> StepResult:
    """One exact flat-kernel step from an index's row sums, in compiled CPU code.

    Parameters
    ----------
    seeds : Tensor of shape (n_seeds, n_features)
        Scaled seed positions (CPU tensor).
    index : meanshift_gpu._neighbors.rowsum.RowSumIndex
        The data (CPU tensors).
    shared_radius : float, optional
        Groups of seeds within a ball of this radius (scaled units) share
        their rows' work (default ``SHARED_RADIUS[n_features]``; 0 steps every seed on
        its own).  The result does not depend on it.

    Returns
    -------
    StepResult
        Equal to :func:`meanshift_gpu._neighbors.rowsum.rowsum_step` (bit for bit) and
        to the dense flat step up to float rounding.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [0.5, 0.1], [3.0, 0.0]], dtype=torch.float64)
    >>> step = compiled_rowsum_step(torch.tensor([[0.0, 0.0]], dtype=torch.float64), RowSumIndex(x, None))
    >>> step.positions.tolist()
    [[0.25, 0.05]]
    """
    if seeds.device.type != "cpu" or index.points.device.type != "cpu":
        raise ValueError(
            "the compiled row sums run on the CPU; use neighbor_options={'compiled': False} on other devices"
        )
    from .compiled import RowSumArgs, rowsum_accumulate, split_groups

    tables = index.compiled_tables
    shared_radius = SHARED_RADIUS.get(seeds.shape[1], 0.0) if shared_radius is None else shared_radius

    def accumulate(ordered, index_, acc, max_pairs):
        # Compact groups (seeds close in every coordinate) can share their rows' work.
        geometry = ordered.to(torch.float64)
        order, keys, codes, top_bit = _compact_order(geometry, index_)
        groups = split_groups(keys, codes, top_bit, _GROUP_SEEDS)
        compact = torch.from_numpy(order)
        q = geometry[compact].contiguous().numpy()
        own = ordered[compact].contiguous().numpy()
        sums = torch.zeros_like(acc)
        args = RowSumArgs(
            d=own.shape[1], m=int(index_.m), n_rows=tables["row_keys"].shape[0], longest_row=tables["longest_row"],
            n_points=tables["first"].shape[0], margin=interior_margin(), edge=flat_edge(),
            shared_radius=float(shared_radius), q=q.ctypes.data, seeds=own.ctypes.data,
            group_starts=groups.ctypes.data, acc=sums.numpy().ctypes.data,
            **{name: array.ctypes.data for name, array in tables.items() if name != "longest_row"},
        )
        n_threads, pieces = _pieces(groups)
        rowsum_accumulate(args, own.dtype == np.float64, pieces, n_threads)
        acc[compact] = sums

    return _step(seeds, index, accumulate, max_pairs=None)


# Seeds stepped together over each row: enough to reuse the row's cache
# lines, and to share the work of a crowded group, many times; few enough
# to leave work for every thread and keep groups compact (measurements:
# benchmarks/README.md, "Tuning history").
_GROUP_SEEDS = 256
# Groups within this radius (bandwidths) share their rows' work
# (shared_row_sums in _native_rowsum.h): only a shell of width 2 r is then
# tested seed by seed, against a band of up to the whole window otherwise.
# 2-D rows are thin strips, so a seed's own band is narrow and sharing gains
# little; 3-D rows are wide columns, where sharing wins even for loose groups.
# The cap keeps a long thin group (sparse data) from testing a whole run of
# its column seed by seed.
SHARED_RADIUS = {2: 0.25, 3: 2.0}
_MORTON_BITS = {1: 62, 2: 31, 3: 21}


def _compact_order(q: torch.Tensor, index: RowSumIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Seeds ordered by their own row cell, then along a Morton (Z-order) curve.

    Returns the order; in that order, the own row keys and Morton codes; and
    the codes' top bit (for :func:`meanshift_gpu._neighbors.compiled.split_groups`: all seeds of a
    group share their row cell, so they have the same rows around them, and
    fit in a small box).  One sort of a 63-bit (run of the row cell, code)
    key, in torch, which is faster than ``np.lexsort`` on the two
    (benchmarks/README.md, "Tuning history").
    """
    n, d = q.shape
    key = _own_row_keys(q, index)
    if n == 0:
        return np.zeros(0, dtype=np.int64), key.numpy(), np.zeros(0, dtype=np.int64), 0
    by_key = None
    if not bool((key[1:] >= key[:-1]).all()):  # the step hands them over sorted by row cell already
        by_key = torch.argsort(key, stable=True)
        key, q = key[by_key], q[by_key]
    run = torch.zeros(n, dtype=torch.long)
    torch.cumsum(key[1:] != key[:-1], 0, out=run[1:])
    bits = min(_MORTON_BITS[d], (63 - int(run[-1]).bit_length()) // d)
    low = q.amin(0)
    span = float((q.amax(0) - low).max())
    scale = (2.0**bits - 1) / span if span > 0 else 0.0
    cells = ((q - low) * scale).floor_().clamp_(0, 2**bits - 1).long()
    codes = torch.zeros(n, dtype=torch.long)
    for j in range(d):
        codes |= _spread_bits(cells[:, j], d) << j
    local = torch.argsort(codes | (run << (bits * d)))
    order = local if by_key is None else by_key[local]
    return order.numpy(), key[local].contiguous().numpy(), codes[local].contiguous().numpy(), bits * d - 1


def _spread_bits(values: torch.Tensor, d: int) -> torch.Tensor:
    """Put bit ``k`` of each (int64) value at bit ``d * k`` (``d`` = 1, 2, 3; values below ``2**_MORTON_BITS[d]``)."""
    if d == 1:
        return values.clone()
    v = values.clone()
    for shift, mask in _SPREAD_MASKS[d]:
        v = (v | (v << shift)) & mask
    return v


# Shift-and-mask steps that spread 31 bits two apart, or 21 bits three apart
# (every mask is below 2**63: int64 arithmetic is exact here).
_SPREAD_MASKS = {
    2: ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F), (2, 0x3333333333333333),
        (1, 0x5555555555555555)),
    3: ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F), (4, 0x10C30C30C30C30C3),
        (2, 0x1249249249249249)),
}


_SEEDS_PER_THREAD = 2048
# Pieces per thread: threads take them one by one from a shared counter, so
# uneven groups (a crowded group that shares its rows costs a fraction of a
# loose one) and a core shared with another process even out.
_PIECES_PER_THREAD = 16


def _pieces(group_starts: np.ndarray) -> tuple[int, np.ndarray]:
    """Threads for the compiled step, and bounds of pieces of groups cut at about equal seed counts."""
    from .._engine.threads import usable_threads

    n_groups = group_starts.shape[0] - 1
    # Starting a thread costs ~0.1 ms: small batches of seeds run in one.
    threads = max(1, min(usable_threads(), n_groups, int(group_starts[-1]) // _SEEDS_PER_THREAD))
    if threads == 1:
        return 1, np.array([0, n_groups], dtype=np.int64)
    cuts = np.searchsorted(group_starts, np.linspace(0, group_starts[-1], _PIECES_PER_THREAD * threads + 1)[1:-1])
    bounds = [0, *sorted(set(int(b) for b in cuts) - {0, n_groups}), n_groups]
    return threads, np.array(bounds, dtype=np.int64)


def _summands(z: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Int64 fixed-point rows ``[w x, w]`` to be summed, the scales of ``w x`` and ``w``, and the weight unit.

    The sums are in units of ``weight_unit`` (the largest weight, or 1):
    ``sum w = count / weight_scale * weight_unit``.

    Integer sums do not depend on the order of summation: two seeds whose
    windows hold the same points get bit-identical means (so the engine
    steps them once from then on), chunking cannot change a result, and a
    difference of running sums carries no cancellation error.  Weights are
    divided by the largest one, and every feature gets its own power-of-two
    scale, the largest for which its total cannot overflow.  Unweighted data
    and small integer weights count exactly (integer weights multiply the
    rounded ``x``, like repeated rows).

    Raises OverflowError where fixed point would lose precision that the
    dense float step keeps: a feature whose resolution would be coarser than
    ``2**-_MIN_FRACTION_BITS`` bandwidths, or positive weights more than
    ``2**_MAX_WEIGHT_RANGE_BITS`` apart.
    """
    n, d = z.shape
    unit = 1.0
    if weights is None:
        w = torch.ones(n, dtype=torch.float64, device=z.device)
        counts = torch.ones(n, dtype=torch.long, device=z.device)
        weight_scale = 1.0
    else:
        w = weights.to(torch.float64)
        top = float(w.max()) if n else 1.0
        positive = w[w > 0]
        if positive.numel() and float(positive.min()) < top * 2.0**-_MAX_WEIGHT_RANGE_BITS:
            raise OverflowError(
                f"sample weights span more than 2**{_MAX_WEIGHT_RANGE_BITS}, beyond the row sums' "
                "fixed point; use neighbor_options={'row_sums': False}"
            )
        small_integers = bool(((w == torch.round(w)) & (w <= 2.0**20)).all())
        if small_integers and float(w.sum()) * 2.0**_MIN_FRACTION_BITS < 2.0**62:
            counts = w.long()
            weight_scale = 1.0
        else:
            unit = max(top, 1e-300)
            w = w / unit
            weight_scale = _fixed_point_scale(float(w.sum()))
            counts = torch.round(w * weight_scale).long()
    scales = torch.tensor(
        [_fixed_point_scale(float(t)) for t in (z.abs() * w[:, None]).sum(0).tolist()],
        dtype=torch.float64, device=z.device,
    ) if n else torch.full((d,), 2.0**40, dtype=torch.float64, device=z.device)
    if bool((scales < 2.0**_MIN_FRACTION_BITS).any()):
        raise OverflowError(_TOO_WIDE)
    if weights is None or weight_scale == 1.0:
        fixed = torch.round(z * scales).long() * counts[:, None]
    else:
        fixed = torch.round(z * w[:, None] * scales).long()
    return torch.cat([fixed, counts[:, None]], dim=1), scales, weight_scale, unit


# Fixed point must resolve at least this many bits of a bandwidth, and
# positive weights may span at most this many bits, else the row sums step aside.
_MIN_FRACTION_BITS = 30
_MAX_WEIGHT_RANGE_BITS = 16


def _fixed_point_scale(total: float) -> float:
    """Largest ``2**k`` with ``total * 2**k`` (plus rounding) below ``2**62``; capped at ``2**80``."""
    if total <= 0.0:
        return 2.0**80
    return 2.0 ** min(80, math.floor(math.log2(2.0**62 / (total * (1 + 1e-9)))))


class RowSumNeighbors(NeighborMethod):
    """``neighbors="grid"`` for the flat kernel in 1-3 D: running sums over rows of fine cells.

    ``compiled=True`` runs :func:`compiled_rowsum_step` (the C extension,
    CPU, which spreads its work over the threads itself); else
    :func:`rowsum_step` in torch, holding ``max_pairs(blocks)`` pairs at once.

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu._engine.backends import Blocks
    >>> from meanshift_gpu._neighbors.rowsum import RowSumIndex, RowSumNeighbors
    >>> data = torch.tensor([[0.0, 0.0], [0.5, 0.0], [5.0, 5.0]], dtype=torch.float64)
    >>> method = RowSumNeighbors(RowSumIndex(data, None, 8), compiled=False, max_pairs=lambda blocks: 1 << 20)
    >>> method.step(data[:1], "flat", Blocks(8, 256)).positions
    tensor([[0.2500, 0.0000]], dtype=torch.float64)
    """

    name = "grid"

    def __init__(self, index: RowSumIndex, *, compiled: bool, max_pairs, detail: str = ""):
        self.index = index
        self.compiled = compiled
        self.threaded = compiled
        self._max_pairs = max_pairs
        self.detail = detail or row_sums_step(compiled, index.m)

    def step(self, seeds, kernel, blocks):
        if self.compiled:
            return compiled_rowsum_step(seeds, self.index)
        return rowsum_step(seeds, self.index, max_pairs=self._max_pairs(blocks))
