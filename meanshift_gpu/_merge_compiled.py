"""scikit-learn's merge of near-duplicate modes on a hash grid, as a compiled CPU loop (numba).

The rule (:func:`meanshift_gpu._engine.merge_modes`): candidates in order,
each kept unless a mode kept before it lies within distance 1.  Compared
block by block with every kept mode it costs ``candidates x kept``: with
tens of thousands of clusters that outgrew the ascent (200k uniform 3-D
points, 18k clusters: 7 s of a 16 s fit).  Kept modes are more than 1
apart, so a cell of a grid holds only a few of them; each candidate looks
into its own and the 3**d adjacent cells only.

The distance is the dense test's, :func:`meanshift_gpu._reference.squared_distances`
for up to 3 features: ``(c_j - k_j)**2`` summed feature by feature in the
data's dtype, compared with ``<= 1``, so every decision is the same.
Cells are wider than 1 (``_CELL_SIDE``) so that a pair whose rounded
distance is 1 can never be two cells apart.

This module imports numba; it is imported only when the merge asks for it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["keep_separated_modes", "nearest_on_grid", "CELL_SIDE"]

CELL_SIDE = 1.25
_EMPTY = np.iinfo(np.int64).min


@numba.njit(inline="always")
def _cell_key(c0, c1, c2):
    # Different cells may share a key: the lists then mix, which costs a few
    # extra distance tests and changes no decision.
    return (c0 * np.int64(-7046029254386353131)) ^ (c1 * np.int64(-4658895280553007687)) ^ (
        c2 * np.int64(1442695040888963407))


@numba.njit(inline="always")
def _slot(table_keys, key):
    """Slot of ``key`` in the open-addressing table, or the empty slot where it would go."""
    mask = table_keys.shape[0] - 1
    slot = (key ^ (key >> 29)) & mask
    while table_keys[slot] != _EMPTY and table_keys[slot] != key:
        slot = (slot + 1) & mask
    return slot


@numba.njit(inline="always")
def _squared_distance(a, i, b, j, d):
    """``sum_f (a[i, f] - b[j, f])**2`` feature by feature in the arrays' dtype (the dense formula)."""
    diff = a[i, 0] - b[j, 0]
    dist2 = diff * diff
    for f in range(1, d):
        diff = a[i, f] - b[j, f]
        dist2 += diff * diff
    return dist2


@numba.njit(inline="always")
def _cell_of(x, i, d, side, cell):
    """Grid cell of row ``i`` of ``x`` into ``cell`` (3 int64s, 0 beyond ``d``)."""
    for f in range(3):
        cell[f] = np.int64(np.floor(np.float64(x[i, f]) / side)) if f < d else 0


@numba.njit
def _new_table(n_items):
    """An empty open-addressing table (keys, list heads) for up to ``n_items`` cells."""
    size = 4
    while size < 2 * n_items + 2:
        size *= 2
    return np.full(size, _EMPTY, np.int64), np.full(size, -1, np.int64)


@numba.njit(inline="always")
def _list_head(table_keys, table_heads, key):
    """First item of the cell's list, or -1."""
    slot = _slot(table_keys, key)
    return table_heads[slot] if table_keys[slot] != _EMPTY else -1


@numba.njit(inline="always")
def _push(table_keys, table_heads, next_item, key, item):
    """Put ``item`` at the front of the cell's list."""
    slot = _slot(table_keys, key)
    if table_keys[slot] == _EMPTY:
        table_keys[slot] = key
    next_item[item] = table_heads[slot]
    table_heads[slot] = item


@numba.njit(inline="always")
def _covered(candidates, i, d, cell, table_keys, table_heads, next_kept):
    """Whether a kept mode in the candidate's or an adjacent cell lies within distance 1."""
    reach1 = 1 if d >= 2 else 0
    reach2 = 1 if d >= 3 else 0
    for o0 in range(-1, 2):
        for o1 in range(-reach1, reach1 + 1):
            for o2 in range(-reach2, reach2 + 1):
                j = _list_head(table_keys, table_heads, _cell_key(cell[0] + o0, cell[1] + o1, cell[2] + o2))
                while j >= 0:
                    if _squared_distance(candidates, i, candidates, j, d) <= 1.0:
                        return True
                    j = next_kept[j]
    return False


@numba.njit(cache=True)
def keep_separated_modes(candidates):
    """Which of ``candidates`` (n, d <= 3, in merge order) the merge keeps, as a boolean mask."""
    n, d = candidates.shape
    table_keys, table_heads = _new_table(n)
    next_kept = np.full(n, -1, np.int64)
    kept = np.zeros(n, np.bool_)
    cell = np.zeros(3, np.int64)
    for i in range(n):
        _cell_of(candidates, i, d, CELL_SIDE, cell)
        if not _covered(candidates, i, d, cell, table_keys, table_heads, next_kept):
            kept[i] = True
            _push(table_keys, table_heads, next_kept, _cell_key(cell[0], cell[1], cell[2]), i)
    return kept


@numba.njit(cache=True)
def nearest_on_grid(points, centers, side, max_ring):
    """Index of, and squared distance to, the nearest of ``centers`` for every point (d <= 3).

    Centers are hashed into cells of ``side``; each point searches rings of
    cells around its own (Chebyshev distance r) until the best distance found
    is below ``r * side`` (no center in a farther ring can be as close), and
    past ``max_ring`` rings compares with every center.  Distances are the
    dense formula's, in the data's dtype; ties go to the lowest center index,
    as in :func:`meanshift_gpu._reference.nearest_centers`.
    """
    n, d = points.shape
    k = centers.shape[0]
    table_keys, table_heads = _new_table(k)
    next_center = np.full(k, -1, np.int64)
    cell = np.zeros(3, np.int64)
    # Highest index first into each list, so lists run in increasing index.
    for c in range(k - 1, -1, -1):
        _cell_of(centers, c, d, side, cell)
        _push(table_keys, table_heads, next_center, _cell_key(cell[0], cell[1], cell[2]), c)
    index = np.empty(n, np.int64)
    dist = np.empty(n, points.dtype)
    for i in range(n):
        _cell_of(points, i, d, side, cell)
        best = -1
        best_d2 = np.inf
        ring = 0
        while ring <= max_ring:
            r1 = ring if d >= 2 else 0
            r2 = ring if d >= 3 else 0
            for o0 in range(-ring, ring + 1):
                for o1 in range(-r1, r1 + 1):
                    for o2 in range(-r2, r2 + 1):
                        if max(abs(o0), abs(o1), abs(o2)) != ring:
                            continue  # an inner ring, already searched
                        c = _list_head(table_keys, table_heads, _cell_key(cell[0] + o0, cell[1] + o1, cell[2] + o2))
                        while c >= 0:
                            d2 = _squared_distance(points, i, centers, c, d)
                            if best < 0 or d2 < best_d2 or (d2 == best_d2 and c < best):
                                best, best_d2 = c, d2
                            c = next_center[c]
            # Every center beyond this ring is more than ring * side away
            # (a margin for rounding; a tie there must still be seen).
            if best >= 0 and np.float64(best_d2) < (ring * side) ** 2 * (1.0 - 1e-5):
                break
            ring += 1
        if ring > max_ring:  # far from every cell searched: every center
            best = -1
            for c in range(k):
                d2 = _squared_distance(points, i, centers, c, d)
                if best < 0 or d2 < best_d2:
                    best, best_d2 = c, d2
        index[i] = best
        dist[i] = best_d2
    return index, dist
