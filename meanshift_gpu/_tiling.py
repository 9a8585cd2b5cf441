"""Mean shift fitted on spatial tiles with halos, the tiles' modes merged afterwards.

For data laid out in space with very many small clusters (voxels of a scan,
points of a map), one exact fit compares every seed with every point; cut
into tiles, each fit compares a tile's seeds with the tile's neighbourhood
only.  Each tile is an ordinary :class:`~meanshift_gpu.MeanShift` fit and the
merge is the estimator's own (:func:`meanshift_gpu._engine.ascent.merge_modes`).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch

from ._engine.ascent import merge_modes
from ._estimator import MeanShift, NoSeedReachedError
from ._reference import flat_edge, squared_distances
from ._seeding import get_bin_seeds
from ._validation import check_bandwidth_value, check_points, resolve_device

# Options that tiled_mean_shift sets itself for every tile.
_SET_PER_TILE = ("seeds", "bin_seeding", "cluster_all")
# Merged-away modes compared with the kept ones per block (bounds the distance matrix).
_OWNER_BLOCK = 256


def tiled_mean_shift(X, *, bandwidth, tile_size, halo=None, tile_features=None, min_bin_freq=1, **options):
    """Mean shift fitted tile by tile over the spatial features, with modes merged across tiles.

    The space of the ``tile_features`` columns is cut into cubes of side
    ``tile_size`` (counted from the smallest coordinates).  Each tile is fitted
    on its own with :class:`MeanShift`: its seeds are the bin seeds of its own
    points (:func:`get_bin_seeds` at the bandwidth, ``min_bin_freq``), they
    climb over its points plus every point within ``halo`` of the tile, and
    the tile's points are labelled by the nearest of its modes.  Modes that
    none of their tile's points chose are dropped.  Modes found by several
    tiles are then merged as the estimator merges modes: densest first (here,
    the mode with more points of its tile; ties in tile order, then in the
    tile's own order), each kept mode absorbing every later one within one
    bandwidth, edge included.  A merged cluster sits at its kept mode.

    With the flat kernel a window reads no point further than one bandwidth,
    so a seed that stays within ``halo`` minus one bandwidth of its tile
    climbs exactly as in a single fit; seeds that wander further see a
    truncated neighbourhood.  The result is then the single fit's, up to
    those seeds and the merge order, for a fraction of the work when there
    are many clusters.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Points to cluster.
    bandwidth : float or array-like of shape (n_features,)
        Bandwidth, or one per feature (features in different units).
    tile_size : float
        Side of the tiles, in the units of the ``tile_features`` columns.
    halo : float, default=None
        Width of the neighbourhood around each tile that its fit reads, in
        the same units; None takes three times the largest bandwidth of the
        ``tile_features``.
    tile_features : sequence of int, default=None
        Columns that are cut into tiles (the spatial coordinates); None tiles
        every column.
    min_bin_freq : int, default=1
        Points a tile's bin needs to become one of its seeds.
    **options
        Further :class:`MeanShift` parameters for every tile's fit
        (``kernel``, ``max_iter``, ``tol``, ``device``, ``backend``,
        ``neighbors``, ...); ``seeds``, ``bin_seeding`` and ``cluster_all``
        are set by the tiling.

    Returns
    -------
    cluster_centers : ndarray of shape (n_clusters, n_features)
        Cluster centers (the kept modes), numbered tile by tile.
    labels : ndarray of shape (n_samples,)
        Cluster of each point; -1 for the points of a tile whose seeds all
        had empty windows.

    Examples
    --------
    Three blobs; the tiles cut through them, and the modes that neighbouring
    tiles find for the same blob merge into one cluster:

    >>> import numpy as np
    >>> from meanshift_gpu import tiled_mean_shift
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(c, 0.5, (100, 2)) for c in ([0, 0], [10, 0], [20, 5])])
    >>> centers, labels = tiled_mean_shift(X, bandwidth=2.0, tile_size=5.0, device="cpu")
    >>> len(centers), [len(set(labels[i : i + 100].tolist())) for i in (0, 100, 200)]
    (3, [1, 1, 1])
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = check_points(X, "X")
    n_features = X.shape[1]
    scale = np.array(np.broadcast_to(check_bandwidth_value(bandwidth, n_features), (n_features,)), np.float64)
    tiled = _check_tile_features(tile_features, n_features)
    tile_size = _check_length(tile_size, "tile_size", positive=True)
    halo = 3.0 * float(scale[tiled].max()) if halo is None else _check_length(halo, "halo", positive=False)
    if isinstance(min_bin_freq, bool) or not isinstance(min_bin_freq, numbers.Integral) or min_bin_freq < 1:
        raise ValueError(f"min_bin_freq must be an integer >= 1, got {min_bin_freq!r}")
    for name in _SET_PER_TILE:
        if name in options:
            raise TypeError(f"tiled_mean_shift sets {name} for every tile itself; drop {name}={options[name]!r}")
    # Bad options fail here, once, rather than in the first tile's fit.
    MeanShift(bandwidth=scale, **options)._validate_params()
    resolve_device(options.get("device", "auto"))

    position = X[:, tiled].astype(np.float64)
    low = position.min(0)
    cell = np.floor((position - low) / tile_size).astype(np.int64)
    tile_keys, tile_of = np.unique(cell, axis=0, return_inverse=True)
    tile_of = tile_of.reshape(-1)
    modes, sizes, labels = [], [], np.full(len(X), -1, np.int64)
    for t, key in enumerate(tile_keys):
        core = np.flatnonzero(tile_of == t)
        box_low = low + key * tile_size - halo
        box_high = low + (key + 1) * tile_size + halo
        near = np.flatnonzero(np.all((position >= box_low) & (position < box_high), axis=1))
        with warnings.catch_warnings():
            # A sparse tile with every point alone in its bin seeds from its
            # points: the right fallback here, not worth a warning per tile.
            warnings.simplefilter("ignore", UserWarning)
            seeds = get_bin_seeds(X[core] / scale, 1.0, min_bin_freq) * scale
        if len(seeds) == 0:
            continue
        model = MeanShift(bandwidth=scale, seeds=seeds.astype(X.dtype), **options)
        try:
            model.fit(X[near])
        except NoSeedReachedError:  # a sparse tile: its points keep label -1, as documented
            continue
        local = model.predict(X[core])
        used = np.unique(local)
        renumber = np.full(len(model.cluster_centers_), -1, np.int64)
        renumber[used] = np.arange(len(modes), len(modes) + len(used))
        labels[core] = renumber[local]
        modes.extend(model.cluster_centers_[used])
        sizes.extend(np.bincount(local, minlength=len(renumber))[used])
    if not modes:
        return np.zeros((0, n_features), X.dtype), labels
    modes = np.asarray(modes)
    owner = _merge_across_tiles(modes.astype(np.float64) / scale, np.asarray(sizes))
    kept, cluster_of_mode = np.unique(owner, return_inverse=True)
    labels = np.where(labels >= 0, cluster_of_mode.reshape(-1)[np.maximum(labels, 0)], -1)
    return modes[kept], labels


def _merge_across_tiles(scaled_modes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """For each mode (scaled coordinates), the index of the kept mode it merges into."""
    n_modes = len(scaled_modes)
    order = np.argsort(-sizes, kind="stable")
    # merge_modes sorts by intensity, then by coordinates: distinct intensities
    # falling along ``order`` make its order this one (ties in tile order).
    intensity = np.empty(n_modes)
    intensity[order] = np.arange(n_modes, 0, -1)
    positions = torch.from_numpy(np.ascontiguousarray(scaled_modes))
    kept_rows = merge_modes(positions, torch.from_numpy(intensity)).numpy()
    # Kept modes are rows of the input; bit-identical twins collapse onto the first in order.
    first_with_row: dict[bytes, int] = {}
    for i in order:
        first_with_row.setdefault(scaled_modes[i].tobytes(), int(i))
    kept = np.array([first_with_row[row.tobytes()] for row in kept_rows], np.int64)
    owner = np.full(n_modes, -1, np.int64)
    owner[kept] = kept
    # A merged-away mode joins the first kept mode (in merge order) that covers it,
    # as the greedy merge removed it.
    merged_away = np.flatnonzero(owner < 0)
    edge = flat_edge()
    for start in range(0, len(merged_away), _OWNER_BLOCK):
        block = merged_away[start : start + _OWNER_BLOCK]
        covers = squared_distances(positions[block], positions[kept], edge) <= edge
        owner[block] = kept[covers.to(torch.uint8).argmax(1).numpy()]
    return owner


def _check_tile_features(tile_features, n_features: int) -> np.ndarray:
    if tile_features is None:
        return np.arange(n_features)
    columns = np.atleast_1d(np.asarray(tile_features))
    if (
        columns.ndim != 1
        or columns.size == 0
        or columns.dtype.kind not in "iu"
        or len(set(columns.tolist())) != columns.size
        or columns.min() < 0
        or columns.max() >= n_features
    ):
        raise ValueError(
            f"tile_features must be distinct column indices of X (0 to {n_features - 1}), got {tile_features!r}"
        )
    return columns


def _check_length(value, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'at least 0'}, got {value!r}")
    return float(value)
