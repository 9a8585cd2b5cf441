"""Hypothesis property tests: invariances, equivalences and a brute-force oracle.

Data are Gaussian blobs whose shape (samples, features, number and spread of
blobs, bandwidth, kernel, weights) Hypothesis draws; the coordinates come
from a drawn seed.  Clusterings are compared by matched centers and labels
equal after renaming (``assert_same_clustering``), never by raw label ids.

Tolerances.  The flat kernel's modes are means of point subsets, so two
computations that differ only by rounding agree to ~1e-12.  The smooth
kernels (Gaussian, Epanechnikov) stop each seed within ~``tol`` bandwidths of
its mode, and the merge keeps the candidate of highest density; when rounding
reorders two nearly equal densities, a different candidate (up to a few
``tol`` away) is kept.  Those tests therefore run with a small ``tol`` and
compare centers to a fraction of the bandwidth.

Every property takes the ``device`` argument (CPU, and CUDA where present):
it compares two computations on the same device.

The examples are derandomized (the same ones on every run) so that CI is
reproducible; set ``MEANSHIFT_GPU_HYPOTHESIS=random`` (and optionally
``MEANSHIFT_GPU_HYPOTHESIS_EXAMPLES``) to explore new ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from meanshift_gpu import MeanShift
from meanshift_gpu._engine import ascent as _engine
from meanshift_gpu._engine.backends import Blocks, resolve_backend

_EXAMPLES = int(os.environ.get("MEANSHIFT_GPU_HYPOTHESIS_EXAMPLES", "15"))
PROPERTY = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("MEANSHIFT_GPU_HYPOTHESIS", "fixed") != "random",
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KERNELS = ("flat", "gaussian", "epanechnikov")


@dataclass
class Problem:
    X: np.ndarray
    y: np.ndarray  # generating blob of each point
    bandwidth: float
    kernel: str

    @property
    def tol(self) -> float:
        # See the module docstring: smooth kernels converge to a tight tol.
        return 1e-3 if self.kernel == "flat" else 1e-7

    @property
    def atol(self) -> float:
        return 1e-9 * self.bandwidth if self.kernel == "flat" else 1e-4 * self.bandwidth

    def fit(self, X=None, *, device, **params) -> MeanShift:
        params = {"bandwidth": self.bandwidth, "kernel": self.kernel, "tol": self.tol, "device": device, **params}
        sample_weight = params.pop("sample_weight", None)
        return MeanShift(**params).fit(self.X if X is None else X, sample_weight=sample_weight)


@st.composite
def problems(draw, kernels=KERNELS, max_samples=60, max_features=3):
    """Blobs: 1-4 centers in a box, normal spread, bandwidth 0.6-3 spreads."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_features = draw(st.integers(1, max_features))
    n_blobs = draw(st.integers(1, 4))
    n_samples = draw(st.integers(max(5, n_blobs), max_samples))
    spread = draw(st.floats(0.3, 2.0))
    kernel = draw(st.sampled_from(kernels))
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-8.0, 8.0, size=(n_blobs, n_features))
    y = rng.integers(0, n_blobs, n_samples)
    X = centers[y] + rng.normal(scale=spread, size=(n_samples, n_features))
    bandwidth = spread * draw(st.floats(0.6, 3.0))
    return Problem(X, y, bandwidth, kernel)


def _assert_same(a: MeanShift, b: MeanShift, problem: Problem, assert_same_clustering, *, transform=None, labels=None):
    centers = a.cluster_centers_ if transform is None else transform(a.cluster_centers_)
    assert_same_clustering(
        centers,
        a.labels_ if labels is None else labels,
        b.cluster_centers_,
        b.labels_,
        atol=problem.atol,
        rtol=1e-7,
    )


# -------------------------------------------------------- tiling independence
@PROPERTY
@given(problem=problems(), batch_size=st.integers(1, 40))
def test_results_do_not_depend_on_batch_size(problem, batch_size, assert_same_clustering, device):
    reference = problem.fit(device=device)
    tiled = problem.fit(batch_size=batch_size, device=device)
    _assert_same(reference, tiled, problem, assert_same_clustering)
    assert tiled.n_iter_ == reference.n_iter_


@PROPERTY
@given(
    problem=problems(max_samples=80),
    seeds_per_block=st.integers(1, 50),
    points_per_block=st.integers(1, 50),
    weighted=st.booleans(),
)
def test_engine_ascent_does_not_depend_on_tile_sizes(problem, seeds_per_block, points_per_block, weighted, device):
    data = torch.from_numpy(problem.X / problem.bandwidth).to(device)
    weights = None
    if weighted:
        weights = torch.from_numpy(np.random.default_rng(0).uniform(0.1, 3.0, len(data))).to(device)

    def ascend(blocks):
        config = _engine.EngineConfig(
            resolve_backend("torch", torch.device(device)), problem.kernel, blocks, problem.tol, 300
        )
        return _engine.ascend_seeds(data, data, weights, config)

    reference = ascend(Blocks(4096, 4096))
    tiled = ascend(Blocks(seeds_per_block, points_per_block))
    torch.testing.assert_close(tiled.positions, reference.positions, rtol=0, atol=1e-9)
    torch.testing.assert_close(tiled.log_density, reference.log_density, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tiled.n_iter, reference.n_iter)


# ------------------------------------------------------------------ invariances
@PROPERTY
@given(problem=problems(), perm_seed=st.integers(0, 2**32 - 1), weighted=st.booleans())
def test_permutation_invariance(problem, perm_seed, weighted, assert_same_clustering, device):
    n = len(problem.X)
    perm = np.random.default_rng(perm_seed).permutation(n)
    weights = np.random.default_rng(perm_seed).integers(1, 4, n).astype(float) if weighted else None
    reference = problem.fit(sample_weight=weights, device=device)
    shuffled = problem.fit(problem.X[perm], sample_weight=None if weights is None else weights[perm], device=device)
    _assert_same(reference, shuffled, problem, assert_same_clustering, labels=reference.labels_[perm])
    assert adjusted_rand_score(reference.labels_[perm], shuffled.labels_) == 1.0
    assert shuffled.n_iter_ == reference.n_iter_


@PROPERTY
@given(problem=problems(), shift=st.floats(-100, 100), direction_seed=st.integers(0, 2**16))
def test_translation_equivariance(problem, shift, direction_seed, assert_same_clustering, device):
    offset = shift * np.random.default_rng(direction_seed).uniform(0.2, 1.0, problem.X.shape[1])
    reference = problem.fit(device=device)
    moved = problem.fit(problem.X + offset, device=device)
    _assert_same(reference, moved, problem, assert_same_clustering, transform=lambda c: c + offset)
    assert moved.n_iter_ == reference.n_iter_


@PROPERTY
@given(problem=problems(), scale=st.floats(0.01, 100.0))
def test_scale_equivariance(problem, scale, assert_same_clustering, device):
    reference = problem.fit(device=device)
    scaled = problem.fit(problem.X * scale, bandwidth=problem.bandwidth * scale, device=device)
    assert_same_clustering(
        reference.cluster_centers_ * scale,
        reference.labels_,
        scaled.cluster_centers_,
        scaled.labels_,
        atol=problem.atol * scale,
        rtol=1e-7,
    )
    assert scaled.n_iter_ == reference.n_iter_
    assert scaled.bandwidth_ == pytest.approx(problem.bandwidth * scale)


@PROPERTY
@given(problem=problems(max_features=2), feature_scale=st.lists(st.floats(0.1, 10.0), min_size=2, max_size=2))
def test_per_feature_bandwidth_equals_rescaled_features(problem, feature_scale, assert_same_clustering, device):
    # Stretch each feature by s_j and give it bandwidth h * s_j: the same clustering.
    s = np.array(feature_scale[: problem.X.shape[1]])
    reference = problem.fit(device=device)
    stretched = problem.fit(problem.X * s, bandwidth=problem.bandwidth * s, device=device)
    assert_same_clustering(
        reference.cluster_centers_ * s, reference.labels_, stretched.cluster_centers_, stretched.labels_,
        atol=problem.atol * s.max(), rtol=1e-7,
    )


# ---------------------------------------------------------- weights == repeats
@PROPERTY
@given(
    problem=problems(max_samples=40),
    weight_seed=st.integers(0, 2**16),
    algorithm=st.sampled_from(["standard", "blurring"]),
    cluster_all=st.booleans(),
)
def test_integer_sample_weight_equals_repeated_rows(problem, weight_seed, algorithm, cluster_all, assert_same_clustering, device):
    n = len(problem.X)
    weights = np.random.default_rng(weight_seed).integers(0, 4, n)
    weights[np.random.default_rng(weight_seed).integers(0, n)] = 2  # at least one positive
    params = {"algorithm": algorithm, "cluster_all": cluster_all}
    weighted = problem.fit(sample_weight=weights.astype(float), **params, device=device)
    repeated = problem.fit(np.repeat(problem.X, weights, axis=0), **params, device=device)
    # The repeated fit labels each copy; the weighted fit labels each point once.
    assert_same_clustering(
        repeated.cluster_centers_,
        repeated.labels_,
        weighted.cluster_centers_,
        np.repeat(weighted.labels_, weights),
        atol=problem.atol,
        rtol=1e-7,
    )
    assert weighted.n_iter_ == repeated.n_iter_
    # Zero-weight points still get the label of their nearest center.
    zero = weights == 0
    if algorithm == "standard" and cluster_all and zero.any():
        np.testing.assert_array_equal(weighted.labels_[zero], weighted.predict(problem.X[zero]))


def test_blurring_zero_weight_points_are_not_modes(device):
    # A zero-weight point between two weighted groups sees both in its window,
    # so its density is the highest; as a candidate mode it would absorb both
    # groups into one center.  Like the standard algorithm's seeds, it must
    # only be carried along and labelled.
    X = np.array([[0.0], [0.1], [1.7], [1.8], [0.9]])
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    weighted = MeanShift(bandwidth=1.0, algorithm="blurring", device=device).fit(X, sample_weight=weights)
    dropped = MeanShift(bandwidth=1.0, algorithm="blurring", device=device).fit(X[:4])
    np.testing.assert_allclose(np.sort(weighted.cluster_centers_, 0), np.sort(dropped.cluster_centers_, 0))
    assert len(weighted.cluster_centers_) == 2


def test_blurring_zero_weight_points_do_not_delay_the_stop(device):
    # The weighted points collapse in one step; the zero-weight point at 1.35
    # first jumps to 0.4, then to the collapsed 0.2 (a second iteration).
    X = np.array([[0.0], [0.2], [0.4], [5.0], [5.3], [1.35]])
    weights = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    params = {"bandwidth": 1.0, "algorithm": "blurring"}
    weighted = MeanShift(**params, device=device).fit(X, sample_weight=weights)
    dropped = MeanShift(**params, device=device).fit(X[:5])
    assert weighted.n_iter_ == dropped.n_iter_


def test_bin_seeding_with_weights_falls_back_like_repeated_rows(device):
    # Every point is alone in its grid cell.  Repeated rows (10 of them) bin
    # into 5 seeds, so scikit-learn's rule keeps the bin seeds (3 clusters);
    # the weighted fit must too, rather than fall back to the points as seeds
    # (which gives 4 clusters).
    X = np.array([[2.83, -3.58], [1.66, -3.32], [3.50, -2.74], [1.49, -4.95], [1.57, -3.64]])
    weights = np.array([3, 2, 2, 1, 1])
    params = {"bandwidth": 1.0, "bin_seeding": True}
    weighted = MeanShift(**params, device=device).fit(X, sample_weight=weights)
    repeated = MeanShift(**params, device=device).fit(np.repeat(X, weights, axis=0))
    np.testing.assert_allclose(np.sort(weighted.cluster_centers_, 0), np.sort(repeated.cluster_centers_, 0))
    assert len(weighted.cluster_centers_) == 3
    # Unit weights are no weights: all alone in their cells, binning falls back.
    with pytest.warns(UserWarning, match="Binning data failed"):
        unit = MeanShift(**params, device=device).fit(X, sample_weight=np.ones(5))
    assert len(unit.cluster_centers_) == len(MeanShift(bandwidth=1.0, device=device).fit(X).cluster_centers_) == 4


@PROPERTY
@given(problem=problems(kernels=("flat",), max_samples=50), weight_seed=st.integers(0, 2**16), min_bin_freq=st.integers(1, 3))
def test_integer_sample_weight_equals_repeated_rows_with_bin_seeding(problem, weight_seed, min_bin_freq, assert_same_clustering, device):
    n = len(problem.X)
    weights = np.random.default_rng(weight_seed).integers(1, 4, n)
    params = {"bin_seeding": True, "min_bin_freq": min_bin_freq}
    try:
        repeated = problem.fit(np.repeat(problem.X, weights, axis=0), **params, device=device)
    except ValueError as exc:  # every bin seed an orphan: the weighted fit must agree
        with pytest.raises(ValueError, match="No point was within bandwidth"):
            problem.fit(sample_weight=weights, **params, device=device)
        assert "No point was within bandwidth" in str(exc)
        return
    weighted = problem.fit(sample_weight=weights, **params, device=device)
    assert_same_clustering(
        repeated.cluster_centers_, repeated.labels_,
        weighted.cluster_centers_, np.repeat(weighted.labels_, weights),
        atol=problem.atol, rtol=1e-7,
    )


# ------------------------------------------------------------ float32 / float64
@st.composite
def separated_blobs(draw, kernels=KERNELS):
    """1-4 blobs of 25-40 points, 12 bandwidths apart, bandwidth 2.5-3.5 spreads."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_features = draw(st.integers(1, 3))
    n_blobs = draw(st.integers(1, 4))
    kernel = draw(st.sampled_from(kernels))
    spread = draw(st.floats(0.1, 10.0))
    bandwidth = spread * draw(st.floats(2.5, 3.5))
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=n_features)
    direction /= np.linalg.norm(direction)
    centers = np.arange(n_blobs)[:, None] * 12 * bandwidth * direction
    y = np.repeat(np.arange(n_blobs), rng.integers(25, 41, n_blobs))
    X = centers[y] + rng.normal(scale=spread, size=(len(y), n_features))
    return Problem(X, y, bandwidth, kernel)


@PROPERTY
@given(problem=separated_blobs(kernels=("gaussian", "epanechnikov")))
def test_float32_agrees_with_float64(problem, match_centers, device):
    # Well-sampled, well-separated blobs (an ill-conditioned problem, e.g. two
    # points just over 2 sigma apart, has modes that float32 cannot resolve).
    # Smooth kernels here; the flat kernel's windows are discontinuous (below).
    f64 = problem.fit(tol=1e-5, device=device)
    f32 = problem.fit(problem.X.astype(np.float32), tol=1e-5, device=device)
    assert f32.cluster_centers_.dtype == np.float32 and f64.cluster_centers_.dtype == np.float64
    assert f32.cluster_centers_.shape == f64.cluster_centers_.shape
    match = match_centers(f64.cluster_centers_, f32.cluster_centers_)
    # Observed: <= 1.2e-5 bandwidths over 300 random examples (tol is 1e-5).
    np.testing.assert_allclose(f32.cluster_centers_[match], f64.cluster_centers_, atol=1e-3 * problem.bandwidth)
    assert adjusted_rand_score(f64.labels_, f32.labels_) == 1.0


@PROPERTY
@given(problem=separated_blobs(kernels=("flat",)))
def test_float32_agrees_with_float64_flat_kernel(problem, match_centers, device):
    # float32 rounding could in principle move a point across a window
    # boundary (a mode then moves by ~bandwidth / window size); on
    # well-sampled blobs it does not happen (0 of 400 random examples), and
    # the modes agree to float32 precision (~1e-5 bandwidths; the bound
    # leaves room for one such boundary point).
    f64 = problem.fit(device=device)
    f32 = problem.fit(problem.X.astype(np.float32), device=device)
    assert f32.cluster_centers_.dtype == np.float32
    assert f32.cluster_centers_.shape == f64.cluster_centers_.shape
    assert adjusted_rand_score(f64.labels_, f32.labels_) == 1.0
    match = match_centers(f64.cluster_centers_, f32.cluster_centers_)
    np.testing.assert_allclose(f32.cluster_centers_[match], f64.cluster_centers_, atol=0.05 * problem.bandwidth)


# -------------------------------------------------------------------- blurring
@PROPERTY
@given(problem=separated_blobs())
def test_blurring_recovers_separated_blobs(problem, device):
    # Each blob collapses to one point inside it, and the stopping rule
    # (no point moved more than tol bandwidths) is reached long before max_iter.
    # A lone edge point can be stranded when its blob contracts away from it
    # faster than the point follows (blurring's known behaviour), so the
    # requirement is: no cluster spans two blobs, and each blob keeps at least
    # 90% of its points in one cluster.
    model = problem.fit(algorithm="blurring", tol=1e-3, device=device)
    assert model.n_iter_ < 100
    for k in range(len(model.cluster_centers_)):
        members = model.labels_ == k
        assert len(np.unique(problem.y[members])) == 1, "a cluster spans two blobs"
        assert np.linalg.norm(model.cluster_centers_[k] - problem.X[members].mean(0)) <= problem.bandwidth
    for blob in np.unique(problem.y):
        labels = model.labels_[problem.y == blob]
        assert np.bincount(labels).max() >= 0.9 * labels.size


@PROPERTY
@given(problem=problems(max_samples=40), max_iter=st.integers(0, 5))
def test_blurring_engine_collapses_and_stops(problem, max_iter, device):
    data = torch.from_numpy(problem.X / problem.bandwidth).to(device)
    config = _engine.EngineConfig(
        resolve_backend("torch", torch.device(device)), problem.kernel, Blocks(64, 64), 1e-3, 300
    )
    result = _engine.blur(data, None, config)
    n_iter = int(result.n_iter[0])
    assert (result.n_iter == n_iter).all() and n_iter < 300
    # Blurring contracts: the point cloud never grows.
    assert float(torch.cdist(result.positions, result.positions).max()) <= float(torch.cdist(data, data).max()) + 1e-9
    # Running it again from the blurred data moves nothing by more than tol.
    again = _engine.blur(result.positions, None, replace(config, max_iter=0))
    assert float((again.positions - result.positions).norm(dim=1).max()) <= 1e-3 + 1e-12
    # A cap on iterations is obeyed exactly.
    capped = _engine.blur(data, None, replace(config, max_iter=max_iter))
    assert int(capped.n_iter[0]) == min(max_iter, n_iter)


# ------------------------------------------------------- brute-force numpy oracle
@PROPERTY
@given(
    problem=problems(max_samples=40),
    algorithm=st.sampled_from(["standard", "blurring"]),
    weighted=st.booleans(),
    anisotropic=st.booleans(),
    cluster_all=st.booleans(),
)
def test_kernels_match_numpy_brute_force(problem, algorithm, weighted, anisotropic, cluster_all, numpy_mean_shift, assert_same_clustering, device):
    rng = np.random.default_rng(len(problem.X))
    weights = rng.uniform(0.2, 3.0, len(problem.X)) if weighted else None
    bandwidth = problem.bandwidth
    if anisotropic:
        bandwidth = problem.bandwidth * rng.uniform(0.5, 2.0, problem.X.shape[1])
    params = dict(kernel=problem.kernel, algorithm=algorithm, tol=problem.tol, cluster_all=cluster_all)
    centers, labels, n_iter = numpy_mean_shift(problem.X, bandwidth, sample_weight=weights, **params)
    model = MeanShift(bandwidth=bandwidth, **params, device=device).fit(problem.X, sample_weight=weights)
    assert_same_clustering(centers, labels, model.cluster_centers_, model.labels_, atol=problem.atol * 10, rtol=1e-7)
    assert model.n_iter_ == n_iter
