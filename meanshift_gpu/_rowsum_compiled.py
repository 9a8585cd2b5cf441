"""The row-sum flat step (:mod:`meanshift_gpu._rowsum`) as a compiled CPU loop (numba).

The vectorised torch version materialises every (seed, row) pair and every
tested (seed, point) pair as tensors: memory traffic, not arithmetic, bounds
it, and in 3-D (``~pi m**2`` rows per seed) that made it slower than the
plain grid.  Here one compiled loop walks the rows around a group of seeds in
key order, finds each row's reach with binary searches on the sorted first
coordinate, adds the interior from the running sums and tests the band's
points in place; nothing is materialised.

The arithmetic is the torch version's: the same int64 fixed-point summands
and running sums (order-independent, so results equal it bit for bit), the
same interior margin, and the band test is the dense step's formula in the
seeds' dtype, summed feature by feature in the same order.

This module imports numba; it is imported only when a compiled step is
asked for (:func:`meanshift_gpu._rowsum.compiled_rowsum_step`).  Compiled
code is cached on disk by numba, so only the first process pays for it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["accumulate_groups"]


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


@numba.njit(inline="always")
def row_sums(q0, s0, s1, s2, d, rank, rho_min2, rho_max2, row_bounds, first, points, summands,
             prefix, margin):
    """One row's share of a seed's window: ``[sum w x_0, sum w x_1, sum w x_2, sum w]``.

    Four int64 scalars (features beyond ``d`` give 0) rather than an array, so
    they stay in registers.  ``rho_min2`` / ``rho_max2``: squared smallest and
    largest distance from the seed to the row's cell across the rows.
    """
    start, end = row_bounds[rank], row_bounds[rank + 1]
    reach_out = math.sqrt(max(0.0, 1.0 + margin - rho_min2))
    lo_out = lower_bound(first, start, end, q0 - reach_out)
    hi_out = upper_bound(first, lo_out, end, q0 + reach_out)
    inner2 = 1.0 - margin - rho_max2
    # The interior [lo_in, hi_in) is found by walking in from both ends of
    # [lo_out, hi_out): the points walked over are the band, tested next.
    left_of = q0 - math.sqrt(inner2) if inner2 > 0.0 else math.inf
    right_of = q0 + math.sqrt(inner2) if inner2 > 0.0 else math.inf
    a0 = np.int64(0)
    a1 = np.int64(0)
    a2 = np.int64(0)
    a3 = np.int64(0)
    lo_in = lo_out
    while lo_in < hi_out and first[lo_in] < left_of:
        lo_in += 1
    hi_in = hi_out
    while hi_in > lo_in and first[hi_in - 1] > right_of:
        hi_in -= 1
    n_left = lo_in - lo_out
    for k in range(n_left + hi_out - hi_in):
        p = lo_out + k if k < n_left else hi_in + (k - n_left)
        # The dense step's formula in the seeds' dtype, feature by feature.
        diff = s0 - points[p, 0]
        d2 = diff * diff
        if d >= 2:
            diff = s1 - points[p, 1]
            d2 += diff * diff
        if d >= 3:
            diff = s2 - points[p, 2]
            d2 += diff * diff
        # Multiplying by the 0/1 hit instead of branching: about half of a
        # band is inside, so a branch mispredicts often (15-25% slower).
        hit = np.int64(d2 <= 1.0)
        a0 += summands[p, 0] * hit
        a1 += summands[p, 1] * hit
        if d >= 2:
            a2 += summands[p, 2] * hit
        if d >= 3:
            a3 += summands[p, 3] * hit
    if hi_in > lo_in:
        a0 += prefix[hi_in, 0] - prefix[lo_in, 0]
        a1 += prefix[hi_in, 1] - prefix[lo_in, 1]
        if d >= 2:
            a2 += prefix[hi_in, 2] - prefix[lo_in, 2]
        if d >= 3:
            a3 += prefix[hi_in, 3] - prefix[lo_in, 3]
    return a0, a1, a2, a3


@numba.njit(nogil=True, cache=True)
def accumulate_groups(q, seeds, group_starts, g_first, g_end, row_keys, row_bounds, first, points,
                      summands, prefix, origin, strides, cell_lo, cell_hi, m, margin, acc):
    """Add the window sums of the seeds of groups ``g_first .. g_end - 1`` into ``acc``.

    ``q`` are the seeds in float64 (geometry), ``seeds`` the same in their own
    dtype (the band test); a group is a run of seeds with the same own row
    cell (``group_starts``).  The other arrays are a
    :class:`meanshift_gpu._rowsum.RowSumIndex`'s; ``m`` its cells per unit and
    ``margin`` the interior margin in squared distance.
    """
    d = q.shape[1]
    n_rows = row_keys.shape[0]
    if n_rows == 0:
        return
    reach = m + 1
    for g in range(g_first, g_end):
        i0, i1 = group_starts[g], group_starts[g + 1]
        if d == 1:
            # No coordinate across the rows: one row, at distance 0.
            for i in range(i0, i1):
                s0 = seeds[i, 0]
                a0, a1, a2, a3 = row_sums(q[i, 0], s0, s0, s0, d, 0, 0.0, 0.0, row_bounds, first,
                                          points, summands, prefix, margin)
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
                                              row_bounds, first, points, summands, prefix, margin)
                    acc[i, 0] += a0
                    acc[i, 1] += a1
                    acc[i, 2] += a2
                    if d == 3:
                        acc[i, 3] += a3

