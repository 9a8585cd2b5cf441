"""The scikit-learn compatible ``MeanShift`` estimator and ``mean_shift`` function.

The estimator only validates, resolves its settings into private attributes and
calls the engine; the algorithms live in :mod:`meanshift_gpu._engine.ascent`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._engine import ascent as _engine
from ._bandwidth.adaptive import PointBandwidths, adaptive_backend
from ._bandwidth.rules import RULE_NAMES
from ._decisions import (
    DecisionLog, decide_ascent, decide_device, decide_kernel_tile, decide_dtype, decide_neighbors, decide_step_kernels,
    decide_threads, paused, record, recording,
)
from ._neighbors import (
    NEIGHBOR_METHODS, choose_neighbors, host_loop_method, kernel_reach,
)
from ._reference import KERNELS, flat_edge, using_flat_edge
from ._seeding import bin_seeds
from ._spec import (
    FitSpec, bandwidth_scale, engine_config, flat_edge_of, median_offset, resolve_bandwidth, short_bandwidth,
)
from ._engine.threads import ascent_threads, split_across_threads
from ._validation import (
    as_tensor,
    check_nested_sequence,
    check_points,
    check_sample_weight,
    check_tensor,
    compute_dtype,
    resolve_device,
)

ALGORITHMS = ("standard", "blurring")


class NoSeedReachedError(ValueError):
    """No seed's window held a point (scikit-learn raises a ValueError with the same message)."""


@dataclass
class _FitResult:
    centers: torch.Tensor  # original units
    labels: torch.Tensor
    n_iter: int
    bandwidth: float | np.ndarray
    scale: torch.Tensor
    offset: torch.Tensor
    neighbors: str = "dense"


class MeanShift(ClusterMixin, BaseEstimator):
    """Mean shift clustering, a drop-in for :class:`sklearn.cluster.MeanShift`.

    Every seed repeatedly moves to the kernel-weighted mean of the data around
    it until it stops moving; seeds that end within one bandwidth of a denser
    mode are merged into it, and every point is labelled with its nearest mode.
    With the defaults this reproduces scikit-learn's flat-kernel algorithm
    exactly (same windows, stopping rule, merge order and labels), computed
    in tiles with torch on the GPU or CPU.

    Parameters
    ----------
    bandwidth : float, array-like of shape (n_features,), dict, str or None, default=None
        Kernel radius (flat, Epanechnikov) or standard deviation (Gaussian).

        - float: one bandwidth for every feature.
        - array: one bandwidth per feature (an anisotropic product kernel,
          the same as dividing each feature by its bandwidth).
        - dict: bandwidths per feature group, for features in different
          units, e.g. ``{(0, 1, 2): 4.0, 3: 100.0, 4: 0.1}``; see
          :func:`feature_bandwidths`.
        - None: :func:`estimate_bandwidth` with ``quantile=bandwidth_quantile``
          (scikit-learn's rule; the default reproduces scikit-learn exactly).
          It tends to over-smooth: on eight well-separated blobs it finds
          about two clusters.
        - "sklearn": the same as None.
        - "knn": the same statistic, on a fixed random subsample of at most
          1,000 points (a cost independent of ``n_samples``).
        - "scott", "silverman": multivariate normal-reference rules of thumb,
          per feature, from the robust spread ``min(std, IQR / 1.349)``; they
          give a Gaussian sigma, converted to the flat or Epanechnikov radius
          of equal variance.  Optimal for one Gaussian blob, so they merge
          nearby clusters.
        - "auto": a bandwidth at which the clustering is stable.  Mean
          shift runs on a subsample of at most 1,000 points over a geometric
          ladder of bandwidths (four per octave), counting the significant
          (>= 1% of the points) clusters at each; among the ranges with a
          constant count that last at least half as long as the longest
          multi-cluster range, the one with the most clusters is taken
          (one cluster when no multi-cluster range spans 20% of the ladder),
          and its geometric middle is returned.  Deterministic; about a
          second on a CPU.
        - "adaptive": variable-bandwidth mean shift (Comaniciu, Ramesh and
          Meer, 2001) for clusters of very different spreads.  Point ``i``
          gets ``h_i`` proportional to the distance to its ``sqrt(n)``-th
          neighbour (clipped to 10x either side of the median), the overall
          scale chosen as in "auto"; a seed ``q`` moves with weights
          ``s_i / h_i**(d+2) * g(|q - x_i|**2 / h_i**2)``.  The median ``h_i``
          is the merge radius, the convergence unit, the bin-seeding grid and
          the orphan radius of ``cluster_all=False``.  Its steps always run on
          the pure-torch engine (on the data's device), whatever ``backend``.

        Rules "scott", "silverman", "auto" and "adaptive" use
        ``sample_weight``; None, "sklearn" and "knn" ignore it, as
        scikit-learn does.
    bandwidth_quantile : float, default=0.3
        Fraction of the points whose k-th neighbour distance defines the
        bandwidth for None, "sklearn" and "knn" (scikit-learn's ``quantile``).
    seeds : array-like of shape (n_seeds, n_features), default=None
        Initial kernel positions; all points (or bin seeds) when None.
    bin_seeding : bool, default=False
        Seed from the occupied cells of a grid with spacing = bandwidth.
        Ignored when ``seeds`` is given.
    min_bin_freq : int, default=1
        Only cells with at least this (weighted) number of points become seeds.
    cluster_all : bool, default=True
        If False, points farther than one bandwidth from every center get
        label -1.
    n_jobs : int, default=None
        Accepted for compatibility with scikit-learn and ignored: parallelism
        comes from torch's threads (``torch.set_num_threads``) or the GPU.
    max_iter : int, default=300
        Maximum number of iterations per seed.
    kernel : {"flat", "gaussian", "epanechnikov"}, default="flat"
        Kernel profile.  "flat" is scikit-learn's.
    algorithm : {"standard", "blurring"}, default="standard"
        "standard" moves seeds over fixed data; "blurring" moves the data
        themselves each iteration and stops when no point moves more than
        ``tol * bandwidth`` (``seeds`` and ``bin_seeding`` do not apply).
    tol : float, default=1e-3
        A seed has converged when its shift is at most ``tol * bandwidth``
        (scikit-learn's fixed value is 1e-3).
    device : str or torch.device, default="auto"
        "auto" (a CUDA tensor's device, else CUDA if available, else CPU),
        "cpu", "cuda", "cuda:1" or a :class:`torch.device`.
    backend : str, default="auto"
        Implementation of the hot loop: "auto" (Triton kernels on CUDA when
        installed, else torch), "torch" or "triton".
    neighbors : {"auto", "dense", "grid", "lsh", "faiss"}, default="auto"
        Which data points each step reads (neighbour pruning, see
        :mod:`meanshift_gpu._neighbors` for the size table behind "auto").
        "dense": all of them, exact.  "grid": cells of side one bandwidth,
        exact for the flat and Epanechnikov kernels, up to 6 features.
        "lsh" (torch random projections) and "faiss" (range search, flat or
        IVF index): approximate, for large data in more dimensions.  The
        Gaussian kernel is truncated at ``neighbor_options["truncate"]``
        bandwidths (default 3) by every method but "dense".  Seeds combine
        freely with pruning: ``bin_seeding=True`` cuts the number of seeds,
        pruning the points each seed reads.
    neighbor_options : dict, default=None
        Options of the neighbour methods: ``truncate`` (Gaussian reach in
        bandwidths, 3.0), LSH ``n_tables`` (16), ``n_bits`` (3),
        ``bucket_width`` (2.0 reaches), ``seed`` (0); faiss ``index``
        ("auto", "flat" or "ivf"), ``nlist``, ``nprobe``; ``max_pairs``
        (seed-point pairs held at once, 2**22); grid ``row_sums`` ("auto",
        True or False: the flat kernel's exact step from running sums over
        rows of fine cells, d <= 3) and ``compiled`` ("auto", True or False:
        run those sums as a compiled CPU loop, the C extension built at
        install, which "auto" uses for data on the CPU); ``cells_per_reach``
        ("auto" or 1 to 8: the grid's cells per kernel reach when the fused
        Triton ascent reads it as ranges of cell-sorted points; "auto" is 2
        in 1-3 D and 1 above).
    batch_size : int or "auto", default="auto"
        Seeds per tile; "auto" sizes tiles from a memory budget.  Results do
        not depend on it beyond float rounding.
    verbose : bool, default=False
        Show a progress bar (tqdm, if installed) or log lines.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Coordinates of the cluster centers, densest first.
    labels_ : ndarray of shape (n_samples,)
        Label of each point (-1 for orphans when ``cluster_all=False``).
    n_iter_ : int
        Maximum number of iterations performed on any seed.
    neighbors_ : str
        The neighbour method actually used ("auto" resolved).
    fit_info_ : dict
        Every choice the fit made on its own (all made in
        :mod:`meanshift_gpu._decisions`), by name, and under ``"reasons"``
        why each was made; ``verbose=True`` prints the same.  Keys:
        ``device``; ``dtype`` (the compute dtype: the input's float dtype, so
        float64 data are computed in float64 on the GPU too); ``bandwidth``;
        ``backend``; ``tiles`` (seeds x points per tile); ``neighbors``;
        ``kernels`` (what runs the steps: Triton, or torch where Triton
        cannot); ``ascent`` (``"fused (...)"``: the device-resident Triton
        loop, with ``kernel_tile``; ``"host loop"`` otherwise); ``step``
        (in the host loop: what each step runs, e.g. row prefix sums in
        compiled C; None for the fused ascent); ``merge`` and ``labels``
        (hash grid in C or the blockwise search); ``threads`` (on the CPU;
        None elsewhere) and ``flat_edge`` (the flat window's edge on squared
        scaled distances: 1 plus the rounding of the centring and scaling, so
        that points exactly one bandwidth away are inside, as in
        scikit-learn).  A choice that does not apply to the fit is None.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when ``X`` has string column names.
    bandwidth_ : float, ndarray of shape (n_features,) or ndarray of shape (n_samples,)
        The bandwidth actually used: a float, one per feature (arrays, dicts,
        "scott", "silverman"), or one per training point ("adaptive").
    cluster_sizes_ : ndarray of shape (n_clusters,)
        Number of points labelled with each cluster.

    See Also
    --------
    sklearn.cluster.MeanShift : The CPU reference this estimator reproduces.
    mean_shift : Functional interface.

    Examples
    --------
    >>> import numpy as np
    >>> from meanshift_gpu import MeanShift
    >>> X = np.array([[1, 1], [2, 1], [1, 0], [4, 7], [3, 5], [3, 6]])
    >>> clustering = MeanShift(bandwidth=2).fit(X)
    >>> clustering.labels_
    array([1, 1, 1, 0, 0, 0])
    >>> clustering.predict([[0, 0], [5, 5]])
    array([1, 0])
    """

    _parameter_constraints: dict = {
        "bandwidth": [
            Interval(numbers.Real, 0, None, closed="neither"),
            "array-like",
            dict,
            StrOptions(set(RULE_NAMES)),
            None,
        ],
        "bandwidth_quantile": [Interval(numbers.Real, 0, 1, closed="both")],
        "seeds": ["array-like", None],
        "bin_seeding": ["boolean"],
        "min_bin_freq": [Interval(numbers.Integral, 1, None, closed="left")],
        "cluster_all": ["boolean"],
        "n_jobs": [numbers.Integral, None],
        "max_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "kernel": [StrOptions(set(KERNELS))],
        "algorithm": [StrOptions(set(ALGORITHMS))],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "device": [str, torch.device],
        "backend": [str],
        "neighbors": [StrOptions(set(NEIGHBOR_METHODS))],
        "neighbor_options": [dict, None],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        bandwidth=None,
        bandwidth_quantile=0.3,
        seeds=None,
        bin_seeding=False,
        min_bin_freq=1,
        cluster_all=True,
        n_jobs=None,
        max_iter=300,
        kernel="flat",
        algorithm="standard",
        tol=1e-3,
        device="auto",
        backend="auto",
        neighbors="auto",
        neighbor_options=None,
        batch_size="auto",
        verbose=False,
    ):
        self.bandwidth = bandwidth
        self.bandwidth_quantile = bandwidth_quantile
        self.seeds = seeds
        self.bin_seeding = bin_seeding
        self.min_bin_freq = min_bin_freq
        self.cluster_all = cluster_all
        self.n_jobs = n_jobs
        self.max_iter = max_iter
        self.kernel = kernel
        self.algorithm = algorithm
        self.tol = tol
        self.device = device
        self.backend = backend
        self.neighbors = neighbors
        self.neighbor_options = neighbor_options
        self.batch_size = batch_size
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def _validate_X(self, X, *, reset: bool):
        if isinstance(X, torch.Tensor):
            n_features = None if reset else self.n_features_in_
            X = check_tensor(X, "X", n_features)
            if reset:
                self.n_features_in_ = X.shape[1]
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            return X
        check_nested_sequence(X, "X")
        return validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Perform clustering.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features)
            Samples to cluster.  A tensor stays on its device (with
            ``device="auto"``).
        y : Ignored
            Not used, present for API consistency by convention.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each point in every kernel sum; a point of
            integer weight w counts as w copies of it.  Zero-weight points
            are not seeds but still get a label.

        Returns
        -------
        self : MeanShift
            Fitted estimator.
        """
        input_dtype = getattr(X, "dtype", None)  # before validation turns integers into float64
        X = self._validate_X(X, reset=True)
        with recording(DecisionLog()) as decisions:
            device = decide_device(self.device, X).choice
            dtype = decide_dtype(X.dtype if input_dtype is None else input_dtype).choice
            data = as_tensor(X, device, dtype)
            weights = check_sample_weight(sample_weight, data.shape[0], device, dtype)
            result = _fit(self, X, data, weights, device)
        out_dtype = np.float32 if dtype == torch.float32 else np.float64
        self.cluster_centers_ = result.centers.cpu().numpy().astype(out_dtype, copy=False)
        self.labels_ = result.labels.cpu().numpy().astype(np.int64, copy=False)
        self.n_iter_ = result.n_iter
        self.neighbors_ = result.neighbors
        self.fit_info_ = decisions.as_fit_info()
        if self.verbose:
            for line in decisions.lines():
                _engine.log_line(line)
        self.bandwidth_ = result.bandwidth
        self.cluster_sizes_ = np.bincount(
            self.labels_[self.labels_ >= 0], minlength=len(self.cluster_centers_)
        )
        self._scale = result.scale.cpu().numpy()
        self._offset = result.offset.cpu().numpy()
        return self

    def predict(self, X):
        """Predict the closest cluster each sample in X belongs to.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features)
            New data.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Index of the nearest cluster center (per-feature bandwidths define
            the metric when given).
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        device = resolve_device(self.device, X)
        dtype = compute_dtype(X.dtype)
        points = as_tensor(X, device, dtype)
        scale = torch.as_tensor(self._scale, device=device, dtype=dtype)
        offset = torch.as_tensor(self._offset, device=device, dtype=dtype)
        centers = (as_tensor(self.cluster_centers_, device, dtype) - offset) / scale
        config = engine_config(FitSpec.from_estimator(self), device, dtype)
        labels = _engine.assign_labels((points - offset) / scale, centers, config, True)
        return labels.cpu().numpy().astype(np.int64, copy=False)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit and return the labels of the training points.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features)
            Samples to cluster.
        y : Ignored
            Not used.
        sample_weight : array-like of shape (n_samples,), default=None
            See :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster labels.
        """
        return self.fit(X, sample_weight=sample_weight).labels_


def _fit(est: MeanShift, X, data: torch.Tensor, weights, device) -> _FitResult:
    n_samples, n_features = data.shape
    dtype = data.dtype
    spec = FitSpec.from_estimator(est)
    config = engine_config(spec, device, dtype)
    with paused():  # a bandwidth rule's own inner fits are not this fit's decisions
        bandwidth = resolve_bandwidth(spec, X, data, weights)
    values = bandwidth.values() if isinstance(bandwidth, PointBandwidths) else bandwidth
    if not np.all(np.isfinite(np.asarray(values, dtype=np.float64))):
        # An estimate from data whose spread overflows the float range.
        raise ValueError(
            f"the bandwidth estimated from X is not finite ({short_bandwidth(values)}): the "
            f"data's distances overflow {_dtype_name(data.dtype)} (largest |X| = "
            f"{float(data.abs().max()):.3g}); rescale X (e.g. divide it by its largest value) or pass a bandwidth"
        )
    point_bandwidths = None
    if isinstance(bandwidth, PointBandwidths):
        # Adaptive: scale by the median h_i and step with per-point windows.
        point_bandwidths, bandwidth = bandwidth, bandwidth.reference
        step_backend = adaptive_backend(config.backend, point_bandwidths.relative.to(dtype))
        config = replace(config, backend=step_backend)
        record("backend", step_backend.name, "per-point (adaptive) bandwidths step in the pure-torch engine")
    used = bandwidth if point_bandwidths is None else point_bandwidths.values()
    scale = bandwidth_scale(bandwidth, n_features, dtype, device)
    offset = median_offset(data)

    seeds = None
    if est.seeds is not None:
        seeds = as_tensor(check_points(est.seeds, "seeds", n_features), device, dtype)
    elif spec.bin_seeding and np.all(scale.cpu().numpy() > 0):
        # Bin in the user's coordinates (not centred) so the grid is sklearn's.
        binned = bin_seeds(data / scale, 1.0, spec.min_bin_freq, weights)
        if binned is None:
            import warnings

            warnings.warn(
                f"Binning data failed with provided bin_size={float(np.max(bandwidth)):f}, "
                "using data points as seeds."
            )
        else:
            seeds = binned * scale

    if not bool((scale > 0).all()):
        return _fit_zero_bandwidth(spec, data, weights, seeds, used, scale, config)

    scaled = (data - offset) / scale
    if not bool(torch.isfinite(scaled).all()):
        raise ValueError(
            f"X divided by bandwidth={short_bandwidth(bandwidth)} overflows "
            f"{_dtype_name(data.dtype)} (largest |X| = {float(data.abs().max()):.3g}); "
            "rescale X or use a larger bandwidth"
        )
    # The flat window includes its edge as scikit-learn's does, allowing for
    # the rounding that the centring and scaling put into the distances.
    scaled_seeds = None if seeds is None else (seeds - offset) / scale
    with using_flat_edge(flat_edge_of(scaled, scaled_seeds)):
        return _fit_scaled(spec, config, scaled, weights, scaled_seeds, offset, scale, bandwidth, used,
                           point_bandwidths)


def _fit_scaled(spec, config, scaled, weights, scaled_seeds, offset, scale, bandwidth, used, point_bandwidths):
    n_samples, n_features = scaled.shape
    device = scaled.device
    options = spec.neighbor_options
    reach = kernel_reach(spec.kernel, options)
    record("flat_edge", flat_edge(), "the flat window's edge on squared scaled distances: 1 plus the rounding "
           "of the centring and scaling, so points one bandwidth away are inside, as in scikit-learn")
    if spec.algorithm == "blurring":
        method = decide_neighbors(
            spec.neighbors, n_seeds=n_samples, n_points=n_samples, n_features=n_features, device=device,
            kernel=spec.kernel, compiled=options["compiled"], per_point_bandwidths=point_bandwidths is not None,
        ).value
        decide_step_kernels(config.backend.name, scaled.dtype, spec.kernel, method)
        decide_ascent(config.backend.name, method, options, n_features, blurring=True)
        decide_threads(device, "torch")

        def rebuild_method(points):
            # The data move every iteration, so the index is rebuilt on them.
            return host_loop_method(method, points, weights, kernel=spec.kernel, options=options,
                                    backend=config.backend).step

        ascent = _engine.blur(scaled, weights, config, None if method == "dense" else rebuild_method)
        if method == "dense":
            record("step", "dense: every point against every point", "blurring with neighbors='dense'")
        else:
            record("step", f"{method}: the index rebuilt on the moved data every iteration", "blurring moves the data")
        modes_at = ascent.positions
        if weights is not None:
            # Zero-weight points move along but, as in the standard algorithm,
            # are not seeds: they must not become modes (weights == repeats).
            keep = weights > 0
            ascent = ascent._replace(
                positions=ascent.positions[keep], log_density=ascent.log_density[keep]
            )
    else:
        if scaled_seeds is None:
            scaled_seeds = scaled if weights is None else scaled[weights > 0]
        method, grid = choose_neighbors(
            spec.neighbors, scaled, weights, n_seeds=scaled_seeds.shape[0], kernel=spec.kernel, options=options,
            per_point_bandwidths=point_bandwidths is not None,
        )
        ascent = _fused_ascent(config, method, options, scaled_seeds, scaled, weights, reach, point_bandwidths)
        if ascent is None:
            neighbors = host_loop_method(method, scaled, weights, kernel=spec.kernel, options=options,
                                         backend=config.backend, grid=grid)
            decide_threads(device, "compiled" if neighbors.threaded else "pieces")
            with ascent_threads(device) as threads:
                step = neighbors.step if neighbors.threaded else split_across_threads(neighbors.step, threads)
                ascent = _engine.ascend_seeds(scaled_seeds, scaled, weights, config, step)
        modes_at = scaled
    centers = _engine.merge_modes(ascent.positions, ascent.log_density)
    if centers.shape[0] == 0:
        raise NoSeedReachedError(
            f"No point was within bandwidth={short_bandwidth(bandwidth)} of any seed. Try a "
            "different seeding strategy or increase the bandwidth."
        )
    labels = _engine.assign_labels(modes_at, centers, config, spec.cluster_all)
    return _FitResult(
        centers=centers * scale + offset,
        labels=labels,
        n_iter=int(ascent.n_iter.max()) if ascent.n_iter.numel() else 0,
        bandwidth=used,
        scale=scale,
        offset=offset,
        neighbors=method,
    )


def _fused_ascent(config, method, options, seeds, data, weights, reach, point_bandwidths):
    """The seeds' ascent through the fused device-resident kernel, or None where :func:`decide_ascent` says
    host loop.

    Serves dense and grid fits of the Triton backend (auto on CUDA); the grid
    runs as ranges of cell-sorted points.
    """
    plan = decide_ascent(config.backend.name, method, options, data.shape[1],
                         per_point_bandwidths=point_bandwidths is not None)
    if plan.value == "host loop":
        return None
    ranges = None
    if method == "grid":
        from .kernels import _ascent_module

        ranges = _ascent_module().GridRanges.build(data, weights, reach, cells_per_reach=plan.choice)
        if ranges is None:
            record("ascent", "host loop", "the grid's cell table would be too large for ranges")
            return None
        record("ascent", f"fused (ranges over {ranges.n_cells} cells of {ranges.cell_side:.4g} bandwidths)",
               plan.reason)
    decide_kernel_tile(data.shape[1], config.kernel, data.device, data.dtype)
    decide_step_kernels(config.backend.name, data.dtype, config.kernel, method, fused=True)
    decide_threads(data.device, "torch")
    record("step", None, "the fused ascent is its own step")
    return _engine.ascend_fused(seeds, data, weights, config, ranges)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fit_zero_bandwidth(spec, data, weights, seeds, bandwidth, scale, config) -> _FitResult:
    """Bandwidth 0 (an estimate on heavily duplicated data): modes are the points.

    Every kernel shrinks to "the identical points", so each distinct point
    that is also a seed is a mode, weighted by its multiplicity.
    """
    why = "bandwidth 0: every distinct point is its own mode"
    for name in ("neighbors", "step", "ascent"):
        record(name, None, why)
    record("merge", "exact duplicates", why)
    record("labels", "exact matches, else the nearest mode", why)
    unique, inverse = torch.unique(data, dim=0, return_inverse=True)
    w = torch.ones(data.shape[0], dtype=data.dtype, device=data.device) if weights is None else weights
    multiplicity = torch.zeros(unique.shape[0], dtype=data.dtype, device=data.device)
    multiplicity.index_add_(0, inverse, w)
    rows = _match_rows(unique, data if seeds is None else seeds)
    rows = torch.unique(rows[rows >= 0])
    rows = rows[multiplicity[rows] > 0]
    if rows.numel() == 0:
        raise NoSeedReachedError(
            "No point was within bandwidth=0 of any seed. Try a different seeding strategy "
            "or increase the bandwidth."
        )
    # Radius 0: only exact duplicates merge, and they are already unique.
    candidates = unique[rows]
    centers = candidates[_engine.densest_first(candidates, multiplicity[rows])]
    center_of_unique = torch.full((unique.shape[0],), -1, dtype=torch.long, device=data.device)
    center_of_unique[_match_rows(unique, centers)] = torch.arange(centers.shape[0], device=data.device)
    labels = center_of_unique[inverse]
    if spec.cluster_all and bool((labels < 0).any()):
        missing = labels < 0
        labels[missing] = _reference_nearest(data[missing], centers)
    return _FitResult(centers, labels, 0, bandwidth, torch.ones_like(scale), torch.zeros_like(scale))


def _reference_nearest(points, centers):
    from ._reference import nearest_centers

    return nearest_centers(points, centers)[0]


def _match_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Index in ``table`` (unique rows) of each row of ``rows``, or -1."""
    both = torch.cat([table, rows])
    _, inverse = torch.unique(both, dim=0, return_inverse=True)
    lookup = torch.full((int(inverse.max()) + 1,), -1, dtype=torch.long, device=table.device)
    lookup[inverse[: table.shape[0]]] = torch.arange(table.shape[0], device=table.device)
    return lookup[inverse[table.shape[0] :]]


def mean_shift(
    X,
    *,
    bandwidth=None,
    seeds=None,
    bin_seeding: bool = False,
    min_bin_freq: int = 1,
    cluster_all: bool = True,
    max_iter: int = 300,
    n_jobs: int | None = None,
    sample_weight=None,
    **options,
):
    """Perform mean shift clustering of data (functional interface).

    Same signature and results as :func:`sklearn.cluster.mean_shift`, plus
    ``sample_weight`` and any :class:`MeanShift` option (``kernel``,
    ``algorithm``, ``tol``, ``device``, ``backend``, ``batch_size``,
    ``verbose``) as keyword arguments.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Input data.
    bandwidth, seeds, bin_seeding, min_bin_freq, cluster_all, max_iter, n_jobs
        See :class:`MeanShift`.
    sample_weight : array-like of shape (n_samples,), default=None
        Weight of each point.
    **options
        Further :class:`MeanShift` parameters.

    Returns
    -------
    cluster_centers : ndarray or Tensor of shape (n_clusters, n_features)
        Cluster centers; a tensor on ``X``'s device when ``X`` is a tensor.
    labels : ndarray or Tensor of shape (n_samples,)
        Cluster label of each point.

    Examples
    --------
    >>> import numpy as np
    >>> from meanshift_gpu import mean_shift
    >>> X = np.array([[1, 1], [2, 1], [1, 0], [4, 7], [3, 5], [3, 6]])
    >>> centers, labels = mean_shift(X, bandwidth=2)
    >>> labels
    array([1, 1, 1, 0, 0, 0])
    """
    model = MeanShift(
        bandwidth=bandwidth,
        seeds=seeds,
        bin_seeding=bin_seeding,
        min_bin_freq=min_bin_freq,
        cluster_all=cluster_all,
        max_iter=max_iter,
        n_jobs=n_jobs,
        **options,
    ).fit(X, sample_weight=sample_weight)
    if isinstance(X, torch.Tensor):
        return (
            torch.as_tensor(model.cluster_centers_, device=X.device),
            torch.as_tensor(model.labels_, device=X.device),
        )
    return model.cluster_centers_, model.labels_
