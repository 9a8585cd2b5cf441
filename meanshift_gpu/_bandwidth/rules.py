"""Named bandwidth rules: rules of thumb, k-th neighbour quantile, and "auto".

All rules take the data as a torch tensor (on its device, in the compute
dtype) and return what the estimator uses: a float (isotropic) or a numpy
array with one bandwidth per feature.  ``"adaptive"`` is resolved here too,
into per-point bandwidths (see :mod:`meanshift_gpu._bandwidth.adaptive`).

"auto" -- the bandwidth path
----------------------------
Mean shift at bandwidth ``h`` finds the modes of the data smoothed at scale
``h``.  Real clusters are the ones that *persist* while ``h`` grows over a
wide range (scale-space clustering, Leung, Zhang and Xu, 2000): below it the
clusters fragment into noise modes, above it neighbouring clusters merge.
``"auto"`` runs the engine itself over a geometric ladder of bandwidths (four
rungs per octave) on a subsample, counts the *significant* clusters at each
rung, and returns the geometric middle of a *persistent* range of bandwidths
over which that count stays the same: the finest clustering (most clusters)
whose range lasts at least half as long as the longest-lived multi-cluster
range.  Details that make it robust:

- modes are tracked up the ladder: the seeds of each rung are the modes of the
  previous one (plus a few fresh points), so a rung costs a few iterations;
- a cluster is significant when it holds at least 1% of the (weighted)
  points; a rung whose significant clusters cover under 80% of the points is
  "fragmented" and never part of a plateau;
- the ladder runs from the typical distance at which a window holds one
  significant cluster's worth of points up to the 99th-percentile distance
  from the centroid, so the one-cluster regime gets a bounded, comparable
  width; it wins only when no multi-cluster regime spans 20% of the ladder.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .._decisions import auto_blocks, record
from .._engine import ascent as _engine
from .adaptive import PointBandwidths, adaptive_backend, pilot_k, relative_bandwidths
from .._engine.backends import Backend
from .estimate import kth_neighbor_bandwidth

FIXED_RULES = ("auto", "scott", "silverman", "knn", "sklearn")
RULE_NAMES = FIXED_RULES + ("adaptive",)

# Subsample sizes: enough for the statistics to settle, small enough that a
# rule costs well under a second on a CPU core.
_KNN_MAX_SAMPLES = 1000
_PATH_MAX_SAMPLES = 1000
_PATH_SEEDS = 256
_PATH_FRESH_SEEDS = 32
_RUNGS_PER_OCTAVE = 4
_MAX_RUNGS = 48
_MIN_RUNGS = 16
_PATH_MAX_ITER = 100
_MIN_CLUSTER_FRACTION = 0.01
_MIN_COVERAGE = 0.8
_MIN_PLATEAU_FRACTION = 0.2
_PLATEAU_RELATIVE_WIDTH = 0.5


def unknown_rule_message(name) -> str:
    return (
        f"unknown bandwidth rule {name!r}; expected a positive float, an array with one "
        f"bandwidth per feature, a dict of feature groups, None, or one of "
        f"{', '.join(repr(r) for r in RULE_NAMES)}"
    )


# ----------------------------------------------------------------- rules of thumb
def weighted_quantiles(values: torch.Tensor, weights: torch.Tensor | None, qs) -> torch.Tensor:
    """Per-column quantiles ``qs`` of ``values`` (n, d) with optional row weights.

    Linear interpolation on the weighted empirical CDF (midpoint rule), which
    reduces to numpy's ``"hazen"`` definition for equal weights.
    """
    if values.shape[0] == 1:  # one point: every quantile is that point
        return values.expand(len(qs), -1).clone()
    sorted_values, order = torch.sort(values, dim=0)
    if weights is None:
        w = torch.ones_like(sorted_values)
    else:
        w = weights.to(values.dtype)[order]
    cumulative = torch.cumsum(w, 0)
    total = cumulative[-1:]
    position = (cumulative - 0.5 * w) / total  # (n, d), increasing down each column
    out = []
    for q in qs:
        target = torch.full((1, values.shape[1]), float(q), dtype=values.dtype, device=values.device)
        hi = torch.searchsorted(position.T.contiguous(), target.T.contiguous()).T.clamp_(1, values.shape[0] - 1)
        lo = hi - 1
        p_lo, p_hi = position.gather(0, lo), position.gather(0, hi)
        v_lo, v_hi = sorted_values.gather(0, lo), sorted_values.gather(0, hi)
        span = torch.where(p_hi > p_lo, p_hi - p_lo, 1.0)
        t = ((target - p_lo) / span).clamp_(0.0, 1.0)
        out.append((v_lo + t * (v_hi - v_lo))[0])
    return torch.stack(out)


def robust_scale(data: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-feature spread ``min(std, IQR / 1.349)``, positive wherever possible.

    The interquartile range of a normal distribution is 1.349 standard
    deviations, so both terms estimate the same sigma; the minimum guards
    against outliers (which inflate the std) and against multimodal features
    (which inflate the IQR).  Where the minimum is zero (a feature with more
    than half its mass on one value) the larger of the two is used; a
    constant feature gets the mean spread of the others (any positive value
    would do: its differences are all zero), or 1 if every feature is constant.
    """
    values = data.double()
    if weights is None:
        mean = values.mean(0)
        var = (values - mean).square().mean(0)
    else:
        w = weights.double()
        mean = (w[:, None] * values).sum(0) / w.sum()
        var = (w[:, None] * (values - mean).square()).sum(0) / w.sum()
    std = var.sqrt()
    q1, q3 = weighted_quantiles(values, weights, (0.25, 0.75))
    iqr_sigma = (q3 - q1) / 1.349
    sigma = torch.minimum(std, iqr_sigma)
    sigma = torch.where(sigma > 0, sigma, torch.maximum(std, iqr_sigma))
    positive = sigma > 0
    fill = sigma[positive].mean() if bool(positive.any()) else torch.ones((), dtype=sigma.dtype)
    return torch.where(positive, sigma, fill)


def effective_sample_size(n_samples: int, weights: torch.Tensor | None) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (``n`` when unweighted)."""
    if weights is None:
        return float(n_samples)
    w = weights.double()
    return float(w.sum().square() / w.square().sum())


def kernel_radius_factor(kernel: str, n_features: int) -> float:
    """Bandwidth of ``kernel`` whose per-feature variance equals a unit Gaussian's.

    The rules of thumb give the standard deviation of a Gaussian kernel.  A
    flat kernel on the unit d-ball has per-coordinate variance ``1/(d+2)``
    and an Epanechnikov one ``1/(d+4)``, so matching variances multiplies the
    radius by ``sqrt(d+2)`` or ``sqrt(d+4)``.  (In one dimension this is
    within 1% of the AMISE-equivalent "canonical" bandwidth conversion.)
    """
    if kernel == "flat":
        return math.sqrt(n_features + 2)
    if kernel == "epanechnikov":
        return math.sqrt(n_features + 4)
    return 1.0


def rule_of_thumb(data: torch.Tensor, weights: torch.Tensor | None, rule: str, kernel: str) -> np.ndarray:
    """Scott's or Silverman's normal-reference rule, per feature.

    ``h_j = sigma_j * n^(-1/(d+4))`` (Scott) or
    ``h_j = sigma_j * (4 / ((d+2) n))^(1/(d+4))`` (Silverman), with
    ``sigma_j`` from :func:`robust_scale` and ``n`` the effective sample size,
    converted to ``kernel`` by :func:`kernel_radius_factor`.  These rules are
    optimal for estimating a *single* Gaussian density; on clustered data the
    spread includes the distances between clusters, so they tend to merge
    nearby clusters.
    """
    n, d = data.shape
    n_eff = max(effective_sample_size(n, weights), 1.0)
    if rule == "scott":
        factor = n_eff ** (-1.0 / (d + 4))
    elif rule == "silverman":
        factor = (4.0 / ((d + 2) * n_eff)) ** (1.0 / (d + 4))
    else:  # pragma: no cover - dispatch guards this
        raise ValueError(unknown_rule_message(rule))
    sigma = robust_scale(data, weights)
    return (sigma * factor * kernel_radius_factor(kernel, d)).cpu().numpy()


# ------------------------------------------------------------------------ knn
def subsample_indices(n_samples: int, max_samples: int, device, random_state: int = 0) -> torch.Tensor | None:
    """A fixed random subset of ``max_samples`` row indices, or None to keep all rows."""
    if n_samples <= max_samples:
        return None
    idx = np.random.RandomState(random_state).permutation(n_samples)[:max_samples]
    return torch.from_numpy(np.sort(idx)).to(device)


def knn_bandwidth(
    data: torch.Tensor, quantile: float, backend: Backend, blocks, max_samples: int = _KNN_MAX_SAMPLES
) -> float:
    """scikit-learn's statistic on a fixed subsample of at most ``max_samples`` points.

    The mean distance to the ``max(1, int(m * quantile))``-th neighbour: since
    ``k`` scales with the subsample size ``m``, this estimates the same
    quantity as the full computation at a cost independent of ``n``.
    """
    idx = subsample_indices(data.shape[0], max_samples, data.device)
    points = data if idx is None else data[idx]
    return kth_neighbor_bandwidth(points, quantile, backend, blocks)


# ----------------------------------------------------------------------- auto
@dataclass(frozen=True)
class BandwidthPath:
    """Diagnostics of the "auto" search.

    Attributes
    ----------
    bandwidths : ndarray of shape (n_rungs,)
        The ladder (geometric), in the data's units (for adaptive fits, the
        median point bandwidth).
    n_clusters : ndarray of shape (n_rungs,)
        Significant clusters found at each rung; 0 marks a fragmented rung.
    n_modes : ndarray of shape (n_rungs,)
        All clusters found at each rung, insignificant ones included.
    bandwidth : float
        The chosen bandwidth (NaN when no rung was usable).
    plateau : tuple of int
        First and last rung of the chosen range (inclusive); (-1, -1) when
        no rung was usable.
    """

    bandwidths: np.ndarray
    n_clusters: np.ndarray
    n_modes: np.ndarray
    bandwidth: float
    plateau: tuple[int, int]


@contextmanager
def _single_cpu_thread(device: torch.device):
    """Run torch on one CPU thread inside the block (no-op off the CPU).

    The path search makes thousands of small calls (<= 1,000 points, a few
    hundred seeds); intra-op threads only add synchronisation to those, and
    on a loaded machine they spin against each other (timings in
    benchmarks/README.md, "Tuning history").
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bandwidth_path(
    data: torch.Tensor,
    weights: torch.Tensor | None,
    kernel: str,
    backend: Backend,
    *,
    relative: torch.Tensor | None = None,
    max_samples: int = _PATH_MAX_SAMPLES,
    random_state: int = 0,
) -> BandwidthPath:
    """Run mean shift on a subsample over a bandwidth ladder and pick a persistent plateau.

    See the module docstring for the method.  ``relative`` (per-point
    bandwidths relative to their median) makes every rung a variable-bandwidth
    fit, so the same search scales the adaptive bandwidths.
    """
    with _single_cpu_thread(data.device):
        return _bandwidth_path(data, weights, kernel, backend, relative, max_samples, random_state)


def _bandwidth_path(data, weights, kernel, backend, relative, max_samples, random_state) -> BandwidthPath:
    device = data.device
    if weights is not None and not bool((weights > 0).all()):
        # Zero-weight points add nothing to any kernel sum: drop them, so that
        # the ladder and the subsample are those of the weighted points alone.
        keep = torch.nonzero(weights > 0).flatten()
        data, weights = data[keep], weights[keep]
        relative = None if relative is None else relative[keep]
    idx = subsample_indices(data.shape[0], max_samples, device, random_state)
    points = data if idx is None else data[idx]
    # float32 is ample to count clusters, and twice as fast; centre in the
    # input precision first so a large offset cannot eat the spread.
    points = (points - points.mean(0)).float()
    m = points.shape[0]
    sub_weights = None
    if weights is not None:
        sub_weights = (weights if idx is None else weights[idx]).float()
    sub_relative = None
    if relative is not None:
        sub_relative = (relative if idx is None else relative[idx]).float()
        backend = adaptive_backend(backend, sub_relative)
    blocks = auto_blocks(device, "auto", torch.float32)
    config = _engine.EngineConfig(
        backend=backend, kernel=kernel, blocks=blocks, tol=1e-3, max_iter=_PATH_MAX_ITER
    )

    mass = torch.ones(m, device=device) if sub_weights is None else sub_weights
    total_mass = float(mass.sum())
    min_points = max(3, math.ceil(_MIN_CLUSTER_FRACTION * m))
    min_mass = total_mass * min_points / m
    ladder = _ladder(points, min_points, backend)
    if ladder is None:
        empty = np.array([], dtype=int)
        return BandwidthPath(np.array([]), empty, empty, math.nan, (-1, -1))

    rng = np.random.RandomState(random_state)
    usable = torch.nonzero(mass > 0).flatten()
    tracked = points[usable[torch.from_numpy(rng.permutation(usable.numel())[:_PATH_SEEDS]).to(device)]]
    counts = np.zeros(len(ladder), dtype=int)
    modes = np.zeros(len(ladder), dtype=int)
    for rung, h in enumerate(ladder):
        fresh = usable[torch.from_numpy(rng.permutation(usable.numel())[:_PATH_FRESH_SEEDS]).to(device)]
        seeds = torch.cat([tracked, points[fresh]]) / h
        scaled = points / h
        ascent = _engine.ascend_seeds(seeds, scaled, sub_weights, config)
        centers = _engine.merge_modes(ascent.positions, ascent.log_density)
        if centers.shape[0] == 0:
            continue
        labels = _engine.assign_labels(scaled, centers, config, True)
        cluster_mass = torch.zeros(centers.shape[0], device=device).index_add_(0, labels, mass)
        significant = cluster_mass >= min_mass
        coverage = float(cluster_mass[significant].sum()) / total_mass
        counts[rung] = int(significant.sum()) if coverage >= _MIN_COVERAGE else 0
        modes[rung] = centers.shape[0]
        tracked = centers * h
    first, last = choose_plateau(counts, modes)
    chosen = math.sqrt(ladder[first] * ladder[last]) if first >= 0 else math.nan
    return BandwidthPath(ladder, counts, modes, float(chosen), (first, last))


def choose_plateau(counts: np.ndarray, modes: np.ndarray) -> tuple[int, int]:
    """First and last rung of the chosen range, (-1, -1) if no rung is usable.

    The persistent plateau (see :func:`_persistent_plateau`), narrowed to its longest
    stretch of rungs without insignificant (outlier) clusters when it has one,
    so the fit returns exactly the stable clusters.
    """
    first, last = _persistent_plateau(counts)
    if first < 0:
        return first, last
    lo, hi = _longest_true_run(modes[first : last + 1] == counts[first : last + 1])
    if lo >= 0:
        first, last = first + lo, first + hi
    return first, last


def _longest_true_run(flags: np.ndarray) -> tuple[int, int]:
    best, start = (-1, -1), None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if best[0] < 0 or i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = None
    return best


def _ladder(points: torch.Tensor, min_points: int, backend: Backend) -> np.ndarray | None:
    """Geometric bandwidths from the significant-cluster scale up to the data radius."""
    m = points.shape[0]
    if m < 2 * min_points:
        return None
    blocks = auto_blocks(points.device, "auto", points.dtype)
    low = float(backend.kth_distance(points, points, min(min_points, m), blocks).median())
    high = float(torch.quantile(torch.linalg.vector_norm(points, dim=1), 0.99))
    if not (low > 0 and high > low):
        return None
    n_rungs = int(math.ceil(math.log2(high / low) * _RUNGS_PER_OCTAVE)) + 1
    return np.geomspace(low, high, min(_MAX_RUNGS, max(n_rungs, _MIN_RUNGS)))


def _plateaus(counts: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs ``(count, first, last)`` of equal, non-zero counts."""
    runs = []
    start = 0
    for i in range(1, len(counts) + 1):
        if i == len(counts) or counts[i] != counts[start]:
            if counts[start] > 0:
                runs.append((int(counts[start]), start, i - 1))
            start = i
    return runs


def _persistent_plateau(counts: np.ndarray) -> tuple[int, int]:
    """First and last index of the chosen plateau, (-1, -1) if there is none.

    Multi-cluster runs are *persistent* when they last at least
    ``_PLATEAU_RELATIVE_WIDTH`` (half) as long as the widest multi-cluster
    run; among those the one with the most clusters wins (ties: the wider).
    Clusters are often hierarchical -- two tight groups of blobs far apart
    hold "2 clusters" over a longer range of bandwidths than the blobs
    themselves -- and the finer persistent level is what a person sees
    (on ``make_blobs(3000, centers=8, random_state=0)`` the widest run is
    2 clusters, the finest persistent one 7).

    The data are taken as one cluster (when some rung saw one) unless the
    widest multi-cluster run spans at least ``_MIN_PLATEAU_FRACTION`` of the
    ladder.  On unimodal data (Gaussian, uniform and Student-t samples, 1 to
    16 dimensions, 300 to 3,000 points) spurious splits spanned at most ~15%
    of the ladder in 88 of 90 trials, while well-separated blobs held their
    true count over >= 24% of it.
    """
    runs = _plateaus(counts)
    if not runs:
        return -1, -1
    multi = [r for r in runs if r[0] >= 2]
    single = [r for r in runs if r[0] == 1]
    best_single = max(single, key=lambda r: r[2] - r[1]) if single else None
    if multi:
        widest = max(r[2] - r[1] + 1 for r in multi)
        if best_single is None or widest / len(counts) >= _MIN_PLATEAU_FRACTION:
            persistent = [r for r in multi if r[2] - r[1] + 1 >= _PLATEAU_RELATIVE_WIDTH * widest]
            best = max(persistent, key=lambda r: (r[0], r[2] - r[1]))
            return best[1], best[2]
    return best_single[1], best_single[2]


def auto_bandwidth(
    data: torch.Tensor,
    weights: torch.Tensor | None,
    kernel: str,
    backend: Backend,
    quantile: float = 0.3,
    relative: torch.Tensor | None = None,
) -> float:
    """The "auto" bandwidth; falls back to the k-th neighbour rule on degenerate data."""
    path = bandwidth_path(data, weights, kernel, backend, relative=relative)
    if math.isfinite(path.bandwidth) and path.bandwidth > 0:
        return path.bandwidth
    record("bandwidth_rule", "knn", "'auto' found no positive finite bandwidth on these (degenerate) data, "
           "so the k-th neighbour rule gives it", through_pause=True)
    blocks = auto_blocks(data.device, "auto", data.dtype)
    return knn_bandwidth(data, quantile, backend, blocks)


def adaptive_bandwidths(
    data: torch.Tensor, weights: torch.Tensor | None, kernel: str, backend: Backend, quantile: float = 0.3
) -> PointBandwidths:
    """Per-point bandwidths ``h_i = h_ref * r_k(x_i) / median r_k``.

    ``r_k`` is the distance to the k-th neighbour with ``k ~ sqrt(n)``
    (:func:`meanshift_gpu._bandwidth.adaptive.pilot_k`); the overall scale ``h_ref`` is
    chosen by the "auto" path search run with these relative bandwidths.

    Variable bandwidths spread the merges of neighbouring clusters over more
    of the ladder, so the adaptive search sees shorter plateaus.  When it
    finds no lasting multi-cluster range but the fixed-bandwidth search does,
    that search's bandwidth becomes ``h_ref`` (on eight overlapping blobs,
    ``make_blobs(3000, centers=8, random_state=0)``, this gives 7 clusters
    instead of 1; on the benchmark suite and on unimodal samples it changes
    no choice).
    """
    blocks = auto_blocks(data.device, "auto", data.dtype)
    n_positive = data.shape[0] if weights is None else int((weights > 0).sum())
    relative = relative_bandwidths(data, pilot_k(n_positive), backend, blocks, weights)
    path = bandwidth_path(data, weights, kernel, backend, relative=relative)
    first = path.plateau[0]
    if first >= 0 and path.n_clusters[first] == 1:
        fixed = bandwidth_path(data, weights, kernel, backend)
        if fixed.plateau[0] >= 0 and fixed.n_clusters[fixed.plateau[0]] >= 2:
            path = fixed
    if math.isfinite(path.bandwidth) and path.bandwidth > 0:
        reference = path.bandwidth
    else:
        reference = knn_bandwidth(data, quantile, backend, blocks)
    return PointBandwidths(reference=float(reference), relative=relative)


def resolve_rule(
    name: str,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    kernel: str,
    backend: Backend,
    quantile: float,
):
    """Dispatch a rule name to its bandwidth (float, per-feature array or PointBandwidths)."""
    if name in ("scott", "silverman"):
        return rule_of_thumb(data, weights, name, kernel)
    if name == "knn":
        blocks = auto_blocks(data.device, "auto", data.dtype)
        return knn_bandwidth(data, quantile, backend, blocks)
    if name == "auto":
        return auto_bandwidth(data, weights, kernel, backend, quantile)
    if name == "adaptive":
        return adaptive_bandwidths(data, weights, kernel, backend, quantile)
    raise ValueError(unknown_rule_message(name))
