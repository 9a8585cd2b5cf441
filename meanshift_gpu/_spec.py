"""One resolution of a fit's settings, shared by the single-machine and Dask estimators.

Both estimators are thin: they validate their parameters, turn them into a
:class:`FitSpec` with :meth:`FitSpec.from_estimator`, and resolve the
bandwidth, the centring offset, the scale and the flat window's edge with the
functions here, so that a fit on one machine and a fit on a cluster start from
exactly the same numbers.  Only where the data live differs: the Dask
estimator draws a sample before calling :func:`resolve_bandwidth` and says how
large the full data are (``full_effective_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._bandwidth.estimate import estimate_bandwidth, feature_bandwidths
from ._bandwidth.rules import RULE_NAMES, effective_sample_size, resolve_rule, unknown_rule_message
from ._decisions import auto_blocks, record
from ._engine import ascent as _engine
from ._engine.backends import resolve_backend
from ._neighbors import check_neighbor_options
from ._reference import flat_edge_for, typical_extent
from ._validation import check_bandwidth_value

__all__ = [
    "FitSpec",
    "bandwidth_scale",
    "engine_config",
    "flat_edge_of",
    "median_offset",
    "resolve_bandwidth",
    "short_bandwidth",
]

# Rules whose bandwidth shrinks with the (effective) number of points as
# n ** (-1 / (d + 4)): on a subsample they must be rescaled to the full data.
_SAMPLE_SIZE_RULES = ("scott", "silverman")


@dataclass(frozen=True, eq=False)
class FitSpec:
    """The resolved, validated settings of one mean-shift fit.

    Made by :meth:`from_estimator`; small and picklable, so the Dask
    estimator sends it to its workers inside its plan.  The data-dependent
    choices (the device's backend, tile sizes, the bandwidth itself) are made
    from it later, where the data are.  Compared by identity: the bandwidth
    request may be an array.

    Attributes
    ----------
    kernel, algorithm : str
        As in :class:`meanshift_gpu.MeanShift`.
    tol : float
        Convergence threshold, in bandwidths.
    max_iter : int
        Iterations per seed.
    cluster_all : bool
        Label every point (True) or give orphans -1 (False).
    bin_seeding : bool
        Seed from occupied grid cells.
    min_bin_freq : int
        Least (weighted) count of a seeding cell.
    device, backend, neighbors : str or torch.device
        As requested ("auto" is resolved on the machine that computes).
    batch_size : int or "auto"
        Seeds per tile.
    neighbor_options : dict
        The user's options merged over the defaults and checked.
    bandwidth : float, array-like, dict, str or None
        The bandwidth as requested; see :func:`resolve_bandwidth`.
    bandwidth_quantile : float
        Quantile of the neighbour-distance rules (None, "sklearn", "knn").
    verbose : bool
        Log what the fit does.
    """

    kernel: str
    algorithm: str
    tol: float
    max_iter: int
    cluster_all: bool
    bin_seeding: bool
    min_bin_freq: int
    device: str | torch.device
    backend: str
    neighbors: str
    batch_size: int | str
    neighbor_options: dict
    bandwidth: object
    bandwidth_quantile: float
    verbose: bool

    @classmethod
    def from_estimator(cls, est) -> "FitSpec":
        """The settings of ``est`` (a :class:`meanshift_gpu.MeanShift` or its Dask twin).

        Checks what no single parameter's constraint can: the combinations
        of parameters and the contents of ``neighbor_options``.  The seeds
        are data, not settings, and stay on the estimator.

        Parameters
        ----------
        est : MeanShift
            An estimator whose parameters have passed their constraints.

        Returns
        -------
        spec : FitSpec

        Raises
        ------
        ValueError
            ``algorithm="blurring"`` with ``seeds`` or ``bin_seeding``, or
            invalid ``neighbor_options``.
        """
        if est.algorithm == "blurring" and (est.seeds is not None or est.bin_seeding):
            raise ValueError(
                "algorithm='blurring' moves the data themselves, so seeds and bin_seeding do "
                "not apply; use algorithm='standard' with them"
            )
        return cls(
            kernel=est.kernel,
            algorithm=est.algorithm,
            tol=float(est.tol),
            max_iter=int(est.max_iter),
            cluster_all=bool(est.cluster_all),
            bin_seeding=bool(est.bin_seeding),
            min_bin_freq=int(est.min_bin_freq),
            device=est.device,
            backend=est.backend,
            neighbors=est.neighbors,
            batch_size=est.batch_size,
            neighbor_options=check_neighbor_options(est.neighbor_options),
            bandwidth=est.bandwidth,
            bandwidth_quantile=float(est.bandwidth_quantile),
            verbose=bool(est.verbose),
        )


def engine_config(
    spec: FitSpec, device: torch.device, dtype: torch.dtype, *, verbose: bool | None = None
) -> _engine.EngineConfig:
    """The engine's settings for computing on ``device`` in ``dtype``.

    Parameters
    ----------
    spec : FitSpec
        The fit's settings.
    device : torch.device
        Where the ascent runs (the backend and the tile sizes depend on it).
    dtype : torch.dtype
        The compute dtype (tiles are sized in its bytes).
    verbose : bool, default=None
        Override of ``spec.verbose``: Dask workers pass False, since their
        output would not reach the user.

    Returns
    -------
    config : meanshift_gpu._engine.ascent.EngineConfig
    """
    return _engine.EngineConfig(
        backend=resolve_backend(spec.backend, device),
        kernel=spec.kernel,
        blocks=auto_blocks(device, spec.batch_size, dtype),
        tol=spec.tol,
        max_iter=spec.max_iter,
        verbose=spec.verbose if verbose is None else bool(verbose),
    )


def resolve_bandwidth(spec: FitSpec, X, data: torch.Tensor, weights, *, full_effective_size: float | None = None):
    """The bandwidth that ``spec.bandwidth`` asks for, on these data.

    Parameters
    ----------
    spec : FitSpec
        The fit's settings.
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        The validated input: scikit-learn's estimate (None, "sklearn") runs
        on it as given, as in scikit-learn.
    data : torch.Tensor of shape (n_samples, n_features)
        ``X`` in the compute dtype, on the device the rules run on.
    weights : torch.Tensor of shape (n_samples,) or None
        Sample weights on ``data``'s device.
    full_effective_size : float, default=None
        When ``data`` is a sample of larger data: the full data's effective
        size (:func:`~meanshift_gpu._bandwidth.rules.effective_sample_size`).
        Scott's and Silverman's rules shrink as ``n_eff ** (-1 / (d + 4))``,
        so their value on the sample is rescaled to it; the other rules do
        not depend on the number of points.  None: ``data`` is all the data.

    Returns
    -------
    bandwidth : float, ndarray of shape (n_features,) or PointBandwidths
        A positive float, one bandwidth per feature (arrays, dicts,
        "scott", "silverman"), per-point bandwidths ("adaptive"), or 0.0
        from scikit-learn's estimate on heavily duplicated data.
    """
    requested = spec.bandwidth
    value, why = _bandwidth_and_reason(spec, X, data, weights, full_effective_size)
    shown = value.values() if hasattr(value, "values") else value  # PointBandwidths: their values
    record("bandwidth", short_bandwidth(shown), why, automatic=requested is None or isinstance(requested, str),
           through_pause=True)
    return value


def _bandwidth_and_reason(spec: FitSpec, X, data, weights, full_effective_size):
    requested = spec.bandwidth
    n_features = data.shape[1]
    if requested is None or (isinstance(requested, str) and requested == "sklearn"):
        value = float(
            estimate_bandwidth(X, quantile=spec.bandwidth_quantile, device=spec.device, backend=spec.backend)
        )
        return value, f"scikit-learn's estimate_bandwidth, quantile {spec.bandwidth_quantile:g}"
    if isinstance(requested, str):
        if requested not in RULE_NAMES:
            raise ValueError(unknown_rule_message(requested))
        value = resolve_rule(
            requested,
            data,
            weights,
            kernel=spec.kernel,
            backend=resolve_backend(spec.backend, data.device),
            quantile=spec.bandwidth_quantile,
        )
        why = f"rule {requested!r}"
        if requested in _SAMPLE_SIZE_RULES and full_effective_size is not None:
            sample_size = effective_sample_size(data.shape[0], weights)
            if sample_size < full_effective_size:
                value = value * (sample_size / full_effective_size) ** (1.0 / (n_features + 4))
                why += f" on a sample, rescaled from {sample_size:.4g} to {full_effective_size:.4g} effective points"
        return value, why
    if isinstance(requested, dict):
        return feature_bandwidths(requested, n_features), "per feature group, asked for"
    return check_bandwidth_value(requested, n_features), "asked for"


def short_bandwidth(bandwidth) -> str:
    """A bandwidth (scalar or per feature) in 3 significant digits, tiny and huge ones too."""
    values = np.atleast_1d(np.asarray(bandwidth, dtype=np.float64))
    shown = ", ".join(f"{v:.3g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
    return shown if values.size == 1 else f"[{shown}]"


def median_offset(data: torch.Tensor) -> torch.Tensor:
    """The point the fit centres the data on: the per-feature median.

    Not the mean: one far outlier (1e9 beside clusters near 10) would move
    the mean so far that the clusters' coordinates lose their precision, and
    a mean of values near the float maximum overflows.

    Parameters
    ----------
    data : torch.Tensor of shape (n_samples, n_features)

    Returns
    -------
    offset : torch.Tensor of shape (n_features,)

    Examples
    --------
    >>> median_offset(torch.tensor([[0.0, 1.0], [1.0, 2.0], [1e9, 3.0]])).tolist()
    [1.0, 2.0]
    """
    return data.median(0).values


def bandwidth_scale(bandwidth, n_features: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The per-feature divisor of the scaled coordinates: the bandwidth, broadcast.

    Parameters
    ----------
    bandwidth : float or array-like of shape (n_features,)
        A resolved bandwidth (for per-point bandwidths, their reference).
    n_features : int
    dtype : torch.dtype
        The compute dtype (the bandwidth is rounded to it once, here).
    device : torch.device, default=None
        Where the scale is needed; None for the CPU.

    Returns
    -------
    scale : torch.Tensor of shape (n_features,)

    Examples
    --------
    >>> bandwidth_scale(2.0, 3, torch.float64).tolist()
    [2.0, 2.0, 2.0]
    """
    return torch.as_tensor(np.array(np.broadcast_to(bandwidth, (n_features,))), dtype=dtype, device=device)


def flat_edge_of(scaled: torch.Tensor, scaled_seeds: torch.Tensor | None = None) -> float:
    """The flat window's edge for points (and seeds) in scaled coordinates.

    The flat window includes its edge as scikit-learn's does, allowing for
    the rounding that the centring and scaling put into the distances; that
    rounding grows with the coordinates' size, taken from the points and
    the seeds (see :func:`meanshift_gpu._reference.flat_edge_for`).

    Parameters
    ----------
    scaled : torch.Tensor of shape (n_samples, n_features)
        ``(data - offset) / scale`` (the Dask estimator passes its sample).
    scaled_seeds : torch.Tensor of shape (n_seeds, n_features), default=None
        User seeds in the same coordinates, when given.

    Returns
    -------
    edge : float
        Slightly above 1, the limit of squared scaled distances.
    """
    extent = typical_extent(scaled)
    if scaled_seeds is not None and scaled_seeds.numel():
        extent = max(extent, typical_extent(scaled_seeds))
    return flat_edge_for(scaled.dtype, scaled.shape[1], extent)
