"""Bandwidth estimation (scikit-learn's rule, computed in chunked torch)."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._engine.backends import resolve_backend
from .._decisions import auto_blocks
from .._validation import as_tensor, check_points, resolve_device


def kth_neighbor_bandwidth(points: torch.Tensor, quantile: float, backend, blocks) -> float:
    """Mean over points of the distance to their k-th nearest neighbour.

    ``k = max(1, int(n * quantile))`` and a point is its own first neighbour,
    exactly as :func:`sklearn.cluster.estimate_bandwidth`.  The data are
    centred first so that the distance expansion does not lose precision.
    """
    k = max(1, int(points.shape[0] * quantile))
    if k == 1:
        # Every point is its own first neighbour, so the answer is exactly 0
        # (sklearn's value, which selects the zero-bandwidth path); the
        # distance expansion would leave ~1e-8 of rounding noise instead.
        return 0.0
    centred = points - points.mean(0)
    distances = backend.kth_distance(centred, centred, k, blocks)
    return float(distances.double().mean())


def estimate_bandwidth(
    X,
    *,
    quantile: float = 0.3,
    n_samples: int | None = None,
    random_state=0,
    n_jobs: int | None = None,
    device="auto",
    backend: str = "auto",
):
    """Estimate the bandwidth to use with the mean-shift algorithm.

    Same value as :func:`sklearn.cluster.estimate_bandwidth`: the mean, over
    the (optionally subsampled) points, of the distance to the
    ``max(1, int(n * quantile))``-th nearest neighbour, the point itself
    counting as the first.  Computed in tiles with torch (on the GPU when
    available), without a neighbour tree; time is quadratic in ``n_samples``.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Input points.
    quantile : float, default=0.3
        Fraction of the points that the k-th neighbour covers; in [0, 1].
    n_samples : int, default=None
        Number of points to subsample (without replacement, drawn exactly as
        scikit-learn draws them); all points when None.
    random_state : int, RandomState instance or None, default=0
        Seed of the subsampling.
    n_jobs : int, default=None
        Accepted for compatibility with scikit-learn; parallelism comes from
        torch's threads or the GPU.
    device : str or torch.device, default="auto"
        Where to compute.
    backend : str, default="auto"
        Implementation of the k-th neighbour search ("auto", "torch", "triton").

    Returns
    -------
    bandwidth : numpy float
        The bandwidth, with ``X``'s float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 1], [2, 1], [1, 0], [4, 7], [3, 5], [3, 6]])
    >>> round(float(estimate_bandwidth(X, quantile=0.5)), 2)
    1.62
    """
    if isinstance(quantile, bool) or not isinstance(quantile, numbers.Real) or not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be a number in [0, 1], got {quantile!r}")
    if n_samples is not None and (
        isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1
    ):
        raise ValueError(f"n_samples must be a positive integer or None, got {n_samples!r}")
    points = check_points(X, "X")
    out_dtype = np.float32 if points.dtype in (np.float32, torch.float32) else np.float64
    if n_samples is not None:
        idx = check_random_state(random_state).permutation(points.shape[0])[:n_samples]
        points = points[torch.from_numpy(idx).to(points.device) if isinstance(points, torch.Tensor) else idx]
    dev = resolve_device(device, points)
    # Float64 keeps parity with sklearn's tree-based distances; the cost is
    # small next to the neighbour search itself on the CPU.  On a GPU float32
    # data are searched in float32 (the fast path) and float64 data in float64.
    compute = torch.float64 if dev.type == "cpu" or out_dtype is np.float64 else torch.float32
    tensor = as_tensor(points, dev, compute)
    chosen = resolve_backend(backend, dev)
    value = kth_neighbor_bandwidth(tensor, quantile, chosen, auto_blocks(dev, "auto", compute))
    return out_dtype(value)


def feature_bandwidths(groups, n_features: int, *, default: float | None = None) -> np.ndarray:
    """One bandwidth per feature from bandwidths given per feature group.

    For feature vectors that mix units (millimetres, Hounsfield units, a
    shape index), give each group of features its own kernel radius; the
    result is the per-feature array that ``MeanShift(bandwidth=...)`` takes
    (passing the dict itself as ``bandwidth`` does the same).

    Parameters
    ----------
    groups : dict
        Maps a feature index, or a tuple or range of indices, to a positive
        bandwidth.  Negative indices count from the end.  Every
        feature may appear at most once.
    n_features : int
        Total number of features.
    default : float, default=None
        Bandwidth of the features that no group names; when None every
        feature must be named.

    Returns
    -------
    bandwidth : ndarray of shape (n_features,)
        Per-feature bandwidths (float64).

    Raises
    ------
    ValueError
        If a bandwidth is not positive and finite, an index is out of range,
        a feature is named twice, or a feature is missing and there is no
        ``default``.

    Examples
    --------
    >>> from meanshift_gpu import feature_bandwidths
    >>> feature_bandwidths({(0, 1, 2): 4.0, 3: 100.0, 4: 0.1}, n_features=5)
    array([  4. ,   4. ,   4. , 100. ,   0.1])
    >>> feature_bandwidths({range(0, 2): 1.5}, n_features=3, default=10.0)
    array([ 1.5,  1.5, 10. ])
    """
    if not isinstance(groups, dict):
        raise TypeError(
            f"groups must be a dict mapping feature indices to bandwidths, got {type(groups).__name__}"
        )
    if isinstance(n_features, bool) or not isinstance(n_features, numbers.Integral) or n_features < 1:
        raise ValueError(f"n_features must be a positive integer, got {n_features!r}")
    out = np.full(n_features, np.nan)
    for key, value in groups.items():
        width = _positive_bandwidth(value, f"the bandwidth of feature group {key!r}")
        for index in _group_indices(key, n_features):
            if not np.isnan(out[index]):
                raise ValueError(
                    f"feature {index} appears in more than one group of the bandwidth dict; "
                    "name each feature once"
                )
            out[index] = width
    missing = np.flatnonzero(np.isnan(out))
    if missing.size:
        if default is None:
            raise ValueError(
                f"features {missing.tolist()} have no bandwidth: name them in a group or pass "
                "default=..."
            )
        out[missing] = _positive_bandwidth(default, "default")
    return out


def _positive_bandwidth(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be positive and finite, got {value!r}")
    return float(value)


def _group_indices(key, n_features: int) -> list[int]:
    if isinstance(key, (tuple, range, frozenset)):
        keys = list(key)
    else:
        keys = [key]
    indices = []
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(
                f"feature group keys must be integer indices or tuples / ranges of them, got {k!r}"
            )
        if not -n_features <= k < n_features:
            raise ValueError(f"feature index {k} is out of range for {n_features} features")
        indices.append(int(k) % n_features)
    return indices
