"""The row-sum flat step (:mod:`meanshift_gpu._rowsum`) as a compiled CPU loop (numba).

The vectorised torch version materialises every (seed, row) pair and every
tested (seed, point) pair as tensors: memory traffic, not arithmetic, bounds
it, and in 3-D (``~pi m**2`` rows per seed) that made it slower than the
plain grid.  Here one compiled loop walks the rows around a group of seeds in
key order, finds each row's reach with binary searches on the sorted first
coordinate (galloping from the previous seed's bounds), adds the interior
from the running sums and tests the band's points in place, in a loop LLVM
vectorises (the points and summands are read feature-major); nothing is
materialised.

Groups are boxes of a Z-order k-d split (:func:`split_groups`).  Late in a
fit seeds crowd around the modes, and a group that fits in a small ball
shares its rows' work (:func:`shared_row_sums`): what is inside or outside
every window of the group is decided once, and only a thin shell is tested
seed by seed.

The arithmetic is the torch version's: the same int64 fixed-point summands
and running sums (order-independent, so results equal it bit for bit), the
same interior margin (every point decided without the dense formula is at
least that margin inside or outside the window), and the band test is the
dense step's formula in the seeds' dtype, summed feature by feature in the
same order.

This module imports numba; it is imported only when a compiled step is
asked for (:func:`meanshift_gpu._rowsum.compiled_rowsum_step`).  Compiled
code is cached on disk by numba, so only the first process pays for it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["accumulate_groups", "split_groups"]

# Runs of at most this many points are tested whole (~0.4 ns a point) rather
# than searched for an interior (two more searches, ~5 ns a step).
_SHORT_RUN = 48


@numba.njit(inline="always")
def lower_bound(values, lo, hi, target):
    """First index in ``[lo, hi)`` with ``values[i] >= target`` (``hi`` if none)."""
    # Halving with conditional moves: no branch to mispredict.
    n = hi - lo
    while n > 0:
        half = n >> 1
        below = values[lo + half] < target
        lo = lo + half + 1 if below else lo
        n = n - half - 1 if below else half
    return lo


@numba.njit(inline="always")
def upper_bound(values, lo, hi, target):
    """First index in ``[lo, hi)`` with ``values[i] > target`` (``hi`` if none)."""
    n = hi - lo
    while n > 0:
        half = n >> 1
        below = values[lo + half] <= target
        lo = lo + half + 1 if below else lo
        n = n - half - 1 if below else half
    return lo


@numba.njit(inline="always", cache=True)
def lower_bound_near(values, lo, hi, target, hint):
    """:func:`lower_bound` that gallops out from ``hint`` (any int; outside ``[lo, hi)`` it searches all).

    Consecutive seeds of a group are sorted along the rows, so each one's
    bound lies a few points from the last seed's: O(log distance) loads
    instead of O(log row).
    """
    if hint < lo or hint >= hi:
        return lower_bound(values, lo, hi, target)
    step = 1
    if values[hint] < target:
        below, bound = hint, hint + 1
        while bound < hi and values[bound] < target:
            below, step = bound, step * 2
            bound = below + step
        return lower_bound(values, below + 1, min(bound, hi), target)
    above, bound = hint, hint - 1
    while bound >= lo and values[bound] >= target:
        above, step = bound, step * 2
        bound = above - step
    return lower_bound(values, max(bound + 1, lo), above, target)


@numba.njit(inline="always", cache=True)
def upper_bound_near(values, lo, hi, target, hint):
    """:func:`upper_bound` that gallops out from ``hint`` (see :func:`lower_bound_near`)."""
    if hint < lo or hint >= hi:
        return upper_bound(values, lo, hi, target)
    step = 1
    if values[hint] <= target:
        below, bound = hint, hint + 1
        while bound < hi and values[bound] <= target:
            below, step = bound, step * 2
            bound = below + step
        return upper_bound(values, below + 1, min(bound, hi), target)
    above, bound = hint, hint - 1
    while bound >= lo and values[bound] > target:
        above, step = bound, step * 2
        bound = above - step
    return upper_bound(values, max(bound + 1, lo), above, target)


# Not inlined (nor shared_row_sums): at every call site its three loops were
# compiled again, and numba's first compile of the module took twice as long.
@numba.njit(nogil=True, cache=True)
def band_sums(lo, hi, d, s0, s1, s2, coords, sums, unit):
    """Sums ``[w x_0, w x_1, w x_2, w]`` (int64; features beyond ``d`` give 0) over the points of
    ``[lo, hi)`` inside the seed's window, tested one by one.

    The loop runs over unsigned indices: with signed ones numba adds a
    negative-index wrap to every load, which keeps LLVM from vectorising the
    loop (measured: 3.7 ns per point against 0.4 ns).  A 0/1 select instead
    of a branch: about half of a band is inside, so a branch would mispredict.
    ``unit``: every point counts 1 (no weights), so the count column is not read.
    """
    a0 = np.int64(0)
    a1 = np.int64(0)
    a2 = np.int64(0)
    a3 = np.int64(0)
    first, w0, w1 = coords[0], sums[0], sums[1]
    # The dense step's formula in the seeds' dtype, feature by feature.
    if d == 1:
        for p in range(numba.uint64(lo), numba.uint64(hi)):
            diff = s0 - first[p]
            inside = diff * diff <= 1.0
            a0 += w0[p] if inside else 0
            if unit:
                a1 += 1 if inside else 0
            else:
                a1 += w1[p] if inside else 0
    elif d == 2:
        second, w2 = coords[1], sums[d]
        for p in range(numba.uint64(lo), numba.uint64(hi)):
            diff = s0 - first[p]
            d2 = diff * diff
            diff = s1 - second[p]
            d2 += diff * diff
            inside = d2 <= 1.0
            a0 += w0[p] if inside else 0
            a1 += w1[p] if inside else 0
            if unit:
                a2 += 1 if inside else 0
            else:
                a2 += w2[p] if inside else 0
    else:
        second, third, w2, w3 = coords[1], coords[2], sums[2], sums[d]
        for p in range(numba.uint64(lo), numba.uint64(hi)):
            diff = s0 - first[p]
            d2 = diff * diff
            diff = s1 - second[p]
            d2 += diff * diff
            diff = s2 - third[p]
            d2 += diff * diff
            inside = d2 <= 1.0
            a0 += w0[p] if inside else 0
            a1 += w1[p] if inside else 0
            a2 += w2[p] if inside else 0
            if unit:
                a3 += 1 if inside else 0
            else:
                a3 += w3[p] if inside else 0
    return a0, a1, a2, a3


@numba.njit(nogil=True, cache=True)
def band_sums_pair(lo, hi, d, s, t, coords, sums, unit):
    """:func:`band_sums` for two seeds at once (``s``, ``t``: 3-tuples; ``d`` is 2 or 3).

    Each point is loaded once for both seeds: the test of a shared shell is
    bound by loading the points, and this took 0.15 ns per seed-point pair
    against 0.21-0.30 ns seed by seed (four seeds at once was no faster).
    Same formula, same results.  Returns the first seed's four sums, then the second's.
    """
    a0 = np.int64(0)
    a1 = np.int64(0)
    a2 = np.int64(0)
    a3 = np.int64(0)
    b0 = np.int64(0)
    b1 = np.int64(0)
    b2 = np.int64(0)
    b3 = np.int64(0)
    s0, s1, s2 = s
    t0, t1, t2 = t
    first, second, w0, w1 = coords[0], coords[1], sums[0], sums[1]
    if d == 2:
        w2 = sums[2]
        for p in range(numba.uint64(lo), numba.uint64(hi)):
            x = first[p]
            y = second[p]
            diff = s0 - x
            ds = diff * diff
            diff = s1 - y
            ds += diff * diff
            diff = t0 - x
            dt = diff * diff
            diff = t1 - y
            dt += diff * diff
            in_s = ds <= 1.0
            in_t = dt <= 1.0
            u0 = w0[p]
            u1 = w1[p]
            a0 += u0 if in_s else 0
            a1 += u1 if in_s else 0
            b0 += u0 if in_t else 0
            b1 += u1 if in_t else 0
            if unit:
                a2 += 1 if in_s else 0
                b2 += 1 if in_t else 0
            else:
                u2 = w2[p]
                a2 += u2 if in_s else 0
                b2 += u2 if in_t else 0
    else:
        third, w2, w3 = coords[2], sums[2], sums[3]
        for p in range(numba.uint64(lo), numba.uint64(hi)):
            x = first[p]
            y = second[p]
            z = third[p]
            diff = s0 - x
            ds = diff * diff
            diff = s1 - y
            ds += diff * diff
            diff = s2 - z
            ds += diff * diff
            diff = t0 - x
            dt = diff * diff
            diff = t1 - y
            dt += diff * diff
            diff = t2 - z
            dt += diff * diff
            in_s = ds <= 1.0
            in_t = dt <= 1.0
            u0 = w0[p]
            u1 = w1[p]
            u2 = w2[p]
            a0 += u0 if in_s else 0
            a1 += u1 if in_s else 0
            a2 += u2 if in_s else 0
            b0 += u0 if in_t else 0
            b1 += u1 if in_t else 0
            b2 += u2 if in_t else 0
            if unit:
                a3 += 1 if in_s else 0
                b3 += 1 if in_t else 0
            else:
                u3 = w3[p]
                a3 += u3 if in_s else 0
                b3 += u3 if in_t else 0
    return a0, a1, a2, a3, b0, b1, b2, b3


@numba.njit(inline="always")
def row_sums(q0, s0, s1, s2, d, rank, rho_min2, rho_max2, row_bounds, first, coords, sums, prefix,
             margin, hints, unit):
    """One row's share of a seed's window: ``[sum w x_0, sum w x_1, sum w x_2, sum w]``.

    Four int64 scalars (features beyond ``d`` give 0) rather than an array, so
    they stay in registers.  ``rho_min2`` / ``rho_max2``: squared smallest and
    largest distance from the seed to the row's cell across the rows.
    ``hints`` holds the previous seed's four bounds in this row (-1: none)
    and is updated.
    """
    start, end = row_bounds[rank], row_bounds[rank + 1]
    reach_out = math.sqrt(max(0.0, 1.0 + margin - rho_min2))
    lo_out = lower_bound_near(first, start, end, q0 - reach_out, hints[0])
    hi_out = upper_bound_near(first, lo_out, end, q0 + reach_out, hints[1])
    hints[0], hints[1] = lo_out, hi_out
    inner2 = 1.0 - margin - rho_max2
    lo_in = hi_in = hi_out
    # Short runs are cheaper to test whole than to search for their interior.
    if inner2 > 0.0 and hi_out - lo_out > _SHORT_RUN:
        reach_in = math.sqrt(inner2)
        lo_in = lower_bound_near(first, lo_out, hi_out, q0 - reach_in, hints[2])
        hi_in = upper_bound_near(first, lo_in, hi_out, q0 + reach_in, hints[3])
        hints[2], hints[3] = lo_in, hi_in
    # The band, [lo_out, lo_in) and [hi_in, hi_out), is tested; the interior summed.
    a0, a1, a2, a3 = band_sums(lo_out, lo_in, d, s0, s1, s2, coords, sums, unit)
    b0, b1, b2, b3 = band_sums(hi_in, hi_out, d, s0, s1, s2, coords, sums, unit)
    a0 += b0
    a1 += b1
    a2 += b2
    a3 += b3
    if hi_in > lo_in:
        a0 += prefix[hi_in, 0] - prefix[lo_in, 0]
        a1 += prefix[hi_in, 1] - prefix[lo_in, 1]
        if d >= 2:
            a2 += prefix[hi_in, 2] - prefix[lo_in, 2]
        if d >= 3:
            a3 += prefix[hi_in, 3] - prefix[lo_in, 3]
    return a0, a1, a2, a3


@numba.njit(cache=True)
def split_groups(keys, codes, top_bit, max_size):
    """Starts (and the end) of groups of at most ``max_size`` seeds, cut along a Z-order curve.

    ``keys`` (own row cells) and ``codes`` (Morton codes) are sorted by
    (key, code).  A run of equal keys is halved at the highest bit where its
    codes differ, recursively, until the pieces are small: each piece is a
    box of the Z-order's implicit k-d tree, so groups stay compact instead of
    straddling the curve's jumps.  (Also cutting pieces wider than a radius
    into smaller groups was slower: 15 s against 11 s on a 200k fit.)
    """
    n = keys.shape[0]
    starts = np.empty(n + 1, np.int64)
    k = 0
    stack = np.empty((2 * 66, 3), np.int64)
    i = 0
    while i < n:
        j = i
        while j < n and keys[j] == keys[i]:
            j += 1
        stack[0, 0], stack[0, 1], stack[0, 2] = i, j, top_bit
        depth = 1
        while depth > 0:
            depth -= 1
            lo, hi, bit = stack[depth, 0], stack[depth, 1], stack[depth, 2]
            if hi - lo <= max_size or bit < 0:
                for start in range(lo, hi, max_size):
                    starts[k] = start
                    k += 1
                continue
            # Codes of a piece share every bit above ``bit``: those with it clear come first.
            mask = np.int64(1) << bit
            a, b = lo, hi
            while a < b:
                middle = (a + b) >> 1
                if codes[middle] & mask:
                    b = middle
                else:
                    a = middle + 1
            # The lower half is popped (and emitted) first.
            stack[depth, 0], stack[depth, 1], stack[depth, 2] = a, hi, bit - 1
            stack[depth + 1, 0], stack[depth + 1, 1], stack[depth + 1, 2] = lo, a, bit - 1
            depth += 2
        i = j
    starts[k] = n
    return starts[: k + 1]


@numba.njit(inline="always")
def _box_radius(q, i0, i1, box_lo, box_hi, center):
    """Bounding box of seeds ``i0 .. i1 - 1`` (into ``box_lo``, ``box_hi``), its centre, and a
    radius around the centre that holds every seed, rounded up."""
    d = q.shape[1]
    for j in range(d):
        box_lo[j] = q[i0, j]
        box_hi[j] = q[i0, j]
    for i in range(i0 + 1, i1):
        for j in range(d):
            box_lo[j] = min(box_lo[j], q[i, j])
            box_hi[j] = max(box_hi[j], q[i, j])
    radius2 = 0.0
    for j in range(d):
        center[j] = 0.5 * (box_lo[j] + box_hi[j])
        half = max(box_hi[j] - center[j], center[j] - box_lo[j])
        radius2 += half * half
    return math.sqrt(radius2) * (1.0 + 1e-12) + 1e-300


@numba.njit(inline="always")
def _cell_distances(lo, hi, box_lo, box_hi):
    """Smallest and largest distance, along one coordinate, between ``[box_lo, box_hi]`` and ``[lo, hi]``."""
    gap = max(lo - box_hi, 0.0) + max(box_lo - hi, 0.0)
    far = max(box_hi - lo, hi - box_lo)
    return gap, far


@numba.njit(nogil=True, cache=True)
def shared_row_sums(q, seeds, i0, i1, d, rank, lo_last, hi_last, lo_1, hi_1, box_lo, box_hi, center,
                    radius, row_bounds, first, coords, sums, prefix, margin, scratch_coords, scratch_sums,
                    scratch_dist, scratch_index, unit, acc):
    """One row's share of the windows of a compact group of seeds, ``i0 .. i1 - 1``, into ``acc``.

    The row's points that lie in every seed's window for sure (the run
    inside all the windows, and band points deep enough inside the ball of
    radius ``1 - radius`` around the group's centre) are summed once for
    the group; those far enough outside the ball of radius ``1 + radius``
    are skipped; only the rest -- a shell of width ``2 radius`` -- is copied
    aside and tested seed by seed with the dense formula.  "For sure" keeps
    the interior margin, so the dense test would decide every skipped or
    summed point the same way: results equal the per-seed path bit for bit.
    """
    start, end = row_bounds[rank], row_bounds[rank + 1]
    gap, far = _cell_distances(lo_last, hi_last, box_lo[d - 1], box_hi[d - 1])
    rho_min2 = gap * gap
    rho_max2 = far * far
    if d == 3:
        gap, far = _cell_distances(lo_1, hi_1, box_lo[1], box_hi[1])
        rho_min2 += gap * gap
        rho_max2 += far * far
    if rho_min2 > 1.0 + margin:
        return
    reach_out = math.sqrt(1.0 + margin - rho_min2)
    lo_out = lower_bound(first, start, end, box_lo[0] - reach_out)
    hi_out = upper_bound(first, lo_out, end, box_hi[0] + reach_out)
    inner2 = 1.0 - margin - rho_max2
    lo_in = hi_in = hi_out
    if inner2 > 0.0:
        # Inside every window: |x_0 - q_0| <= reach_in for every seed's q_0.
        reach_in = math.sqrt(inner2)
        if box_hi[0] - reach_in <= box_lo[0] + reach_in:
            lo_in = lower_bound(first, lo_out, hi_out, box_hi[0] - reach_in)
            hi_in = upper_bound(first, lo_in, hi_out, box_lo[0] + reach_in)
            if hi_in <= lo_in:
                lo_in = hi_in = hi_out
    a0 = np.int64(0)
    a1 = np.int64(0)
    a2 = np.int64(0)
    a3 = np.int64(0)
    if hi_in > lo_in:
        a0 += prefix[hi_in, 0] - prefix[lo_in, 0]
        a1 += prefix[hi_in, 1] - prefix[lo_in, 1]
        a2 += prefix[hi_in, 2] - prefix[lo_in, 2]
        if d == 3:
            a3 += prefix[hi_in, 3] - prefix[lo_in, 3]
    # Squared distances from the centre: inside every window below ``sure_in``,
    # outside all above ``sure_out`` (float64 rounding allowed for).
    inside = math.sqrt(1.0 - margin) - radius
    sure_in = inside * inside * (1.0 - 1e-12) if inside > 0.0 else -1.0
    outside = math.sqrt(1.0 + margin) + radius
    sure_out = outside * outside * (1.0 + 1e-12)
    c0, c1, c2 = center[0], center[1], center[2]
    # Distances first (a loop without branches, vectorised), then the shell
    # is gathered through a list of its positions: 1.4-2.2 ns per band point
    # against 3.3-3.9 for one loop that branches on each point.
    n_low = lo_in - lo_out
    x0, x1, x2 = coords[0], coords[1], coords[d - 1]
    for part in range(2):
        lo, hi, base = (lo_out, lo_in, 0) if part == 0 else (hi_in, hi_out, n_low)
        lo_u = numba.uint64(lo)
        base_u = numba.uint64(base)
        for p in range(lo_u, numba.uint64(hi)):
            diff = np.float64(x0[p]) - c0
            dist2 = diff * diff
            diff = np.float64(x1[p]) - c1
            dist2 += diff * diff
            if d == 3:
                diff = np.float64(x2[p]) - c2
                dist2 += diff * diff
            scratch_dist[base_u + (p - lo_u)] = dist2
            in_all = dist2 <= sure_in
            a0 += sums[0, p] if in_all else 0
            a1 += sums[1, p] if in_all else 0
            a2 += sums[2, p] if in_all else 0
            if d == 3:
                a3 += sums[3, p] if in_all else 0
    k = 0
    for at in range(n_low + hi_out - hi_in):
        scratch_index[k] = at
        dist2 = scratch_dist[at]
        k += (dist2 > sure_in) & (dist2 <= sure_out)
    for j in range(k):
        at = scratch_index[j]
        point = lo_out + at if at < n_low else hi_in + (at - n_low)
        for f in range(d):
            scratch_coords[f, j] = coords[f][point]
        for f in range(d if unit else d + 1):
            scratch_sums[f, j] = sums[f, point]
    # Seeds two by two over the shell (each point loaded once for both), an odd one alone.
    i = i0
    while i + 1 < i1:
        s = (seeds[i, 0], seeds[i, 1], seeds[i, 2] if d == 3 else seeds[i, 0])
        t = (seeds[i + 1, 0], seeds[i + 1, 1], seeds[i + 1, 2] if d == 3 else seeds[i + 1, 0])
        b0, b1, b2, b3, e0, e1, e2, e3 = band_sums_pair(0, k, d, s, t, scratch_coords, scratch_sums, unit)
        acc[i, 0] += a0 + b0
        acc[i, 1] += a1 + b1
        acc[i, 2] += a2 + b2
        acc[i + 1, 0] += a0 + e0
        acc[i + 1, 1] += a1 + e1
        acc[i + 1, 2] += a2 + e2
        if d == 3:
            acc[i, 3] += a3 + b3
            acc[i + 1, 3] += a3 + e3
        i += 2
    if i < i1:
        s0 = seeds[i, 0]
        s1 = seeds[i, 1]
        s2 = seeds[i, 2] if d == 3 else s0
        b0, b1, b2, b3 = band_sums(0, k, d, s0, s1, s2, scratch_coords, scratch_sums, unit)
        acc[i, 0] += a0 + b0
        acc[i, 1] += a1 + b1
        acc[i, 2] += a2 + b2
        if d == 3:
            acc[i, 3] += a3 + b3


@numba.njit(nogil=True, cache=True)
def accumulate_groups(q, seeds, group_starts, g_first, g_end, row_keys, row_bounds, first, coords,
                      sums, prefix, origin, strides, cell_lo, cell_hi, m, margin, shared_radius, unit, acc):
    """Add the window sums of the seeds of groups ``g_first .. g_end - 1`` into ``acc``.

    ``q`` are the seeds in float64 (geometry), ``seeds`` the same in their own
    dtype (the band test); a group is a run of seeds with the same own row
    cell (``group_starts``).  The other arrays are a
    :class:`meanshift_gpu._rowsum.RowSumIndex`'s, with its points and
    summands feature-major (``coords``: (d, n), ``sums``: (d + 1, n)) so the
    band loop reads contiguous columns; ``m`` is its cells per unit and
    ``margin`` the interior margin in squared distance.

    A group of seeds that fits in a ball of radius ``shared_radius`` (in 3-D
    nearly all do; in 2-D those crowding around a mode) shares its rows'
    work: see :func:`shared_row_sums`.  ``unit``: unweighted data (every count is 1).
    """
    d = q.shape[1]
    n_rows = row_keys.shape[0]
    if n_rows == 0:
        return
    reach = m + 1
    hints = np.full(4, -1, np.int64)
    longest_row = np.max(row_bounds[1:] - row_bounds[:-1])
    scratch_coords = np.empty((3, longest_row), seeds.dtype)
    scratch_sums = np.empty((4, longest_row), np.int64)
    scratch_dist = np.empty(longest_row)
    scratch_index = np.empty(longest_row, np.int64)
    box_lo = np.empty(3)
    box_hi = np.empty(3)
    center = np.zeros(3)
    for g in range(g_first, g_end):
        i0, i1 = group_starts[g], group_starts[g + 1]
        radius = _box_radius(q, i0, i1, box_lo, box_hi, center)
        shared = i1 - i0 > 1 and radius <= shared_radius
        if d == 1:
            # No coordinate across the rows: one row, at distance 0.
            for i in range(i0, i1):
                s0 = seeds[i, 0]
                a0, a1, a2, a3 = row_sums(q[i, 0], s0, s0, s0, d, 0, 0.0, 0.0, row_bounds, first,
                                          coords, sums, prefix, margin, hints, unit)
                acc[i, 0] += a0
                acc[i, 1] += a1
            continue
        # Rows outer, seeds inner: the row's points stay in cache for the group.
        own1 = math.floor(q[i0, 1] * m)
        own2 = math.floor(q[i0, d - 1] * m) if d == 3 else 0
        last = d - 2  # the coordinate (of the last d - 1) that varies along a line of rows
        own_last = own2 if d == 3 else own1
        for line in range(2 * reach + 1 if d == 3 else 1):
            c1 = own1 + line - reach if d == 3 else 0
            if d == 3 and (c1 < cell_lo[0] or c1 > cell_hi[0]):
                continue
            ptr = -1
            for step in range(2 * reach + 1):
                c = own_last + step - reach
                if c < cell_lo[last] or c > cell_hi[last]:
                    continue
                key = (c - origin[last]) * strides[last]
                if d == 3:
                    key += (c1 - origin[0]) * strides[0]
                if ptr < 0:
                    # One binary search per line; the line's keys are consecutive.
                    ptr = lower_bound(row_keys, 0, n_rows, key)
                while ptr < n_rows and row_keys[ptr] < key:
                    ptr += 1
                if ptr >= n_rows or row_keys[ptr] != key:
                    continue
                lo_last, hi_last = c / m, (c + 1) / m
                lo_1, hi_1 = c1 / m, (c1 + 1) / m
                if shared:
                    shared_row_sums(q, seeds, i0, i1, d, ptr, lo_last, hi_last, lo_1, hi_1, box_lo, box_hi,
                                    center, radius, row_bounds, first, coords, sums, prefix, margin,
                                    scratch_coords, scratch_sums, scratch_dist, scratch_index, unit, acc)
                    continue
                hints[:] = -1
                for i in range(i0, i1):
                    x = q[i, last + 1]
                    gap = max(lo_last - x, 0.0) + max(x - hi_last, 0.0)
                    far = max(x - lo_last, hi_last - x)
                    rho_min2 = 0.0
                    rho_max2 = 0.0
                    if d == 3:
                        y = q[i, 1]
                        gap1 = max(lo_1 - y, 0.0) + max(y - hi_1, 0.0)
                        far1 = max(y - lo_1, hi_1 - y)
                        rho_min2 = gap1 * gap1
                        rho_max2 = far1 * far1
                    rho_min2 += gap * gap
                    rho_max2 += far * far
                    if rho_min2 > 1.0 + margin:
                        continue
                    s0 = seeds[i, 0]
                    s1 = seeds[i, 1]
                    s2 = seeds[i, 2] if d == 3 else s0
                    a0, a1, a2, a3 = row_sums(q[i, 0], s0, s1, s2, d, ptr, rho_min2, rho_max2,
                                              row_bounds, first, coords, sums, prefix, margin, hints, unit)
                    acc[i, 0] += a0
                    acc[i, 1] += a1
                    acc[i, 2] += a2
                    if d == 3:
                        acc[i, 3] += a3

