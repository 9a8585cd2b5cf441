"""Automatic bandwidths: named rules, per-feature groups, adaptive bandwidths.

Covers each rule's definition (checked against an independent numpy / sklearn
computation), equivariance under scaling, determinism, ``sample_weight``,
per-feature dicts, error messages, and clustering quality on data with a
known structure (adjusted Rand index against the generating labels).

Rules and fits take the ``device`` argument (CPU, and CUDA where present);
the internals checked directly (quantiles, the ladder's plateau) run on CPU
tensors with the torch backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import estimate_bandwidth as sk_estimate_bandwidth
from sklearn.datasets import load_iris, make_blobs
from sklearn.metrics import adjusted_rand_score

from meanshift_gpu import MeanShift, feature_bandwidths
from meanshift_gpu._engine.backends import resolve_backend
from meanshift_gpu._bandwidth.adaptive import PointBandwidths
from meanshift_gpu._bandwidth.rules import (
    _persistent_plateau,
    bandwidth_path,
    resolve_rule,
    weighted_quantiles,
)

TORCH = resolve_backend("torch", torch.device("cpu"))


def _rule(name, X, sample_weight=None, kernel="flat", quantile=0.3, *, device):
    """What ``MeanShift(bandwidth=name, device=device).fit(X)`` stores in ``bandwidth_``, without the fit."""
    device = torch.device(device)
    weights = None
    if sample_weight is not None:
        weights = torch.as_tensor(np.ascontiguousarray(sample_weight), dtype=torch.float64, device=device)
    data = torch.as_tensor(np.ascontiguousarray(X), device=device)
    # The estimator's choice of backend for the device ("auto").
    backend = resolve_backend("auto", device)
    value = resolve_rule(name, data, weights, kernel=kernel, backend=backend, quantile=quantile)
    return value.values() if isinstance(value, PointBandwidths) else value


def _grid_blobs(k: int, n_per: int, gap: float, d: int = 2, seed: int = 0):
    """k unit-variance Gaussian blobs on a random scatter whose closest pair is ``gap`` apart."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=2)
    centers *= gap / dist[np.triu_indices(k, 1)].min()
    y = np.repeat(np.arange(k), n_per)
    X = centers[y] + rng.normal(size=(k * n_per, d))
    return X, y


@pytest.fixture(scope="module")
def blobs():
    return _grid_blobs(5, 60, gap=10.0, seed=3)


# ------------------------------------------------------------------ rules of thumb
@pytest.mark.parametrize("rule", ["scott", "silverman"])
@pytest.mark.parametrize("kernel", ["flat", "gaussian", "epanechnikov"])
def test_rule_of_thumb_matches_formula(rule, kernel, device):
    rng = np.random.default_rng(1)
    X = rng.standard_t(4, size=(257, 3)) * np.array([1.0, 10.0, 0.1])
    n, d = X.shape
    std = X.std(0)
    q1, q3 = np.quantile(X, [0.25, 0.75], axis=0, method="hazen")
    sigma = np.minimum(std, (q3 - q1) / 1.349)
    if rule == "scott":
        factor = n ** (-1 / (d + 4))
    else:
        factor = (4 / ((d + 2) * n)) ** (1 / (d + 4))
    radius = {"flat": math.sqrt(d + 2), "epanechnikov": math.sqrt(d + 4), "gaussian": 1.0}[kernel]
    np.testing.assert_allclose(_rule(rule, X, kernel=kernel, device=device), sigma * factor * radius, rtol=1e-10)
    if kernel == "flat":  # the estimator stores what the rule gives
        model = MeanShift(bandwidth=rule, bin_seeding=True, device=device).fit(X)
        np.testing.assert_allclose(model.bandwidth_, sigma * factor * radius, rtol=1e-10)


def test_rule_of_thumb_constant_feature_gets_a_positive_bandwidth(device):
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.normal(size=200), np.full(200, 3.0), rng.normal(size=200) * 4])
    h = _rule("scott", X, device=device)
    assert np.all(np.isfinite(h)) and np.all(h > 0)
    # Its bandwidth is irrelevant to the clustering (all its differences are 0),
    # so it is filled with the mean spread of the others.
    np.testing.assert_allclose(h[1], (h[0] + h[2]) / 2)


def test_weighted_quantiles_reduce_to_hazen():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(101, 4))
    qs = (0.05, 0.25, 0.5, 0.9)
    got = weighted_quantiles(torch.as_tensor(X), None, qs).numpy()
    np.testing.assert_allclose(got, np.quantile(X, qs, axis=0, method="hazen"), atol=1e-12)
    # Integer weights act as repeated rows (up to the hazen interpolation grid).
    w = rng.integers(1, 4, size=101)
    got_w = weighted_quantiles(torch.as_tensor(X), torch.as_tensor(w, dtype=torch.float64), (0.5,))
    expected = np.quantile(np.repeat(X, w, axis=0), 0.5, axis=0, method="hazen")
    np.testing.assert_allclose(got_w[0].numpy(), expected, atol=0.15)


# ----------------------------------------------------------------------- knn
@pytest.mark.parametrize("quantile", [0.1, 0.6])
def test_knn_and_none_equal_sklearn_estimate(blobs, quantile, device):
    X, _ = blobs
    expected = sk_estimate_bandwidth(X, quantile=quantile)
    assert _rule("knn", X, quantile=quantile, device=device) == pytest.approx(expected, rel=1e-9)
    for rule in (None, "sklearn"):
        got = MeanShift(bandwidth=rule, bandwidth_quantile=quantile, bin_seeding=True, device=device).fit(X).bandwidth_
        assert isinstance(got, float)
        assert got == pytest.approx(expected, rel=1e-9), rule


def test_knn_subsamples_like_sklearn_n_samples(device):
    X, _ = _grid_blobs(4, 300, gap=8.0, seed=5)  # 1,200 points: "knn" subsamples 1,000
    expected = sk_estimate_bandwidth(X, quantile=0.2, n_samples=1000, random_state=0)
    got = _rule("knn", X, quantile=0.2, device=device)
    assert got == pytest.approx(expected, rel=1e-9)
    full = sk_estimate_bandwidth(X, quantile=0.2)
    assert got != pytest.approx(full, rel=1e-9)  # really a subsample, yet the same statistic
    assert got == pytest.approx(full, rel=0.1)


# ------------------------------------------------------------- equivariance
@pytest.mark.parametrize("rule", ["scott", "knn", "auto", "adaptive"])
def test_rules_are_scale_equivariant(blobs, rule, device):
    X, _ = blobs
    # A power of two scales every float exactly, so the rules must agree exactly
    # (up to the float32 of the path search).
    base, scaled = np.asarray(_rule(rule, X, device=device)), np.asarray(_rule(rule, 4.0 * X, device=device))
    np.testing.assert_allclose(scaled, 4.0 * base, rtol=1e-6)


def test_auto_fit_is_scale_and_translation_equivariant(blobs, device):
    X, _ = blobs
    base = MeanShift(bandwidth="auto", bin_seeding=True, device=device).fit(X)
    moved = MeanShift(bandwidth="auto", bin_seeding=True, device=device).fit(4.0 * X + 1000.0)
    assert moved.bandwidth_ == pytest.approx(4.0 * base.bandwidth_, rel=1e-4)
    assert adjusted_rand_score(base.labels_, moved.labels_) == 1.0


def test_rule_of_thumb_is_per_feature(device):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 3))
    h = _rule("silverman", X, device=device)
    h2 = _rule("silverman", X * np.array([1.0, 100.0, 0.01]), device=device)
    np.testing.assert_allclose(h2, h * np.array([1.0, 100.0, 0.01]), rtol=1e-10)


def test_auto_ignores_a_stretched_feature_when_given_per_feature_units(device):
    # Clusters separated in x only; y is noise in huge units.  Per-feature
    # scaling (a dict) makes the problem isotropic again.
    X, y = _grid_blobs(3, 80, gap=10.0, d=1, seed=6)
    rng = np.random.default_rng(6)
    X = np.column_stack([X[:, 0], rng.normal(size=len(X)) * 1000.0])
    model = MeanShift(bandwidth={0: 3.0, 1: 3000.0}, bin_seeding=True, device=device).fit(X)
    np.testing.assert_array_equal(model.bandwidth_, [3.0, 3000.0])
    assert adjusted_rand_score(y, model.labels_) > 0.95


# --------------------------------------------------------------- determinism
@pytest.mark.parametrize("rule", ["auto", "adaptive", "knn", "silverman"])
def test_rules_are_deterministic(blobs, rule, device):
    X, _ = blobs
    np.testing.assert_array_equal(np.asarray(_rule(rule, X, device=device)), np.asarray(_rule(rule, X, device=device)))


def test_auto_fit_is_deterministic(blobs, device):
    X, _ = blobs
    a = MeanShift(bandwidth="auto", bin_seeding=True, device=device).fit(X)
    b = MeanShift(bandwidth="auto", bin_seeding=True, device=device).fit(X)
    assert a.bandwidth_ == b.bandwidth_
    np.testing.assert_array_equal(a.labels_, b.labels_)


# ------------------------------------------------------------- sample_weight
@pytest.mark.parametrize("rule", ["scott", "silverman", "auto", "adaptive"])
def test_unit_weights_equal_no_weights(blobs, rule, device):
    X, _ = blobs
    a, b = _rule(rule, X, device=device), _rule(rule, X, sample_weight=np.ones(len(X)), device=device)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6)


@pytest.mark.parametrize("rule", ["scott", "auto", "adaptive"])
def test_zero_weight_points_do_not_change_the_bandwidth(blobs, rule, device):
    X, _ = blobs
    rng = np.random.default_rng(8)
    # Far-away junk with weight 0 would change every statistic if it counted.
    junk = rng.uniform(-200, 200, size=(60, X.shape[1]))
    both = np.vstack([X, junk])
    weights = np.r_[np.ones(len(X)), np.zeros(len(junk))]
    clean = np.asarray(_rule(rule, X, device=device))
    weighted = np.asarray(_rule(rule, both, sample_weight=weights, device=device))
    if rule == "adaptive":
        # Per point: the clean points keep their bandwidths, the junk gets its own.
        assert weighted.shape == (len(both),)
        weighted = weighted[: len(X)]
    np.testing.assert_allclose(weighted, clean, rtol=1e-6)
    unweighted = np.asarray(_rule(rule, both, device=device))
    assert not np.allclose(np.median(unweighted), np.median(clean), rtol=1e-3)


def test_weights_shift_the_rule_of_thumb(device):
    rng = np.random.default_rng(9)
    X = np.r_[rng.normal(size=200), rng.normal(size=200) * 10][:, None]
    heavy_narrow = np.r_[np.full(200, 10.0), np.ones(200)]
    h_plain = _rule("scott", X, device=device)
    assert _rule("scott", X, sample_weight=heavy_narrow, device=device)[0] < 0.7 * h_plain[0]
    assert _rule("scott", X, sample_weight=heavy_narrow[::-1], device=device)[0] > 1.5 * h_plain[0]


def test_sklearn_rules_ignore_weights(blobs, device):
    X, _ = blobs
    w = np.random.default_rng(3).uniform(0.1, 5, size=len(X))
    a = MeanShift(bin_seeding=True, device=device).fit(X).bandwidth_
    b = MeanShift(bin_seeding=True, device=device).fit(X, sample_weight=w).bandwidth_
    assert a == b


# -------------------------------------------------------------- per feature
def test_feature_bandwidths_groups():
    h = feature_bandwidths({(0, 1, 2): 4.0, 3: 100.0, -1: 0.1}, n_features=5)
    np.testing.assert_array_equal(h, [4.0, 4.0, 4.0, 100.0, 0.1])
    h = feature_bandwidths({range(1, 3): 2.0}, n_features=4, default=7.0)
    np.testing.assert_array_equal(h, [7.0, 2.0, 2.0, 7.0])


def test_dict_bandwidth_equals_array_and_prescaling(device):
    # "millimetres, Hounsfield units and a shape index" in one vector.
    X, y = _grid_blobs(3, 70, gap=10.0, d=3, seed=10)
    units = np.array([2.0, 2.0, 150.0])
    X = X * units
    groups = {(0, 1): 6.0, 2: 450.0}
    by_dict = MeanShift(bandwidth=groups, bin_seeding=True, device=device).fit(X)
    by_array = MeanShift(bandwidth=np.array([6.0, 6.0, 450.0]), bin_seeding=True, device=device).fit(X)
    prescaled = MeanShift(bandwidth=1.0, bin_seeding=True, device=device).fit(X / np.array([6.0, 6.0, 450.0]))
    np.testing.assert_array_equal(by_dict.bandwidth_, [6.0, 6.0, 450.0])
    np.testing.assert_array_equal(by_dict.labels_, by_array.labels_)
    assert adjusted_rand_score(by_dict.labels_, prescaled.labels_) == 1.0
    assert adjusted_rand_score(y, by_dict.labels_) > 0.95


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "groups, n_features, match",
    [
        ({0: 1.0, (0, 1): 2.0}, 2, "more than one group"),
        ({0: 1.0, 5: 2.0}, 2, "out of range"),
        ({0: 1.0}, 2, r"features \[1\] have no bandwidth"),
        ({0: -1.0, 1: 1.0}, 2, "positive"),
        ({0: float("inf"), 1: 1.0}, 2, "positive and finite"),
        ({0: "wide", 1: 1.0}, 2, "positive number"),
        ({"x": 1.0}, 1, "integer indices"),
        ({0: 1.0}, 0, "n_features must be a positive integer"),
    ],
)
def test_feature_bandwidths_errors(groups, n_features, match):
    with pytest.raises(ValueError, match=match):
        feature_bandwidths(groups, n_features)


def test_feature_bandwidths_needs_a_dict():
    with pytest.raises(TypeError, match="must be a dict"):
        feature_bandwidths([1.0, 2.0], 2)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"bandwidth": "wide"}, "bandwidth"),
        ({"bandwidth": -1.0}, "bandwidth"),
        ({"bandwidth": [1.0, 2.0, 3.0]}, "3 entries but X has 2 features"),
        ({"bandwidth": [1.0, 0.0]}, "positive and finite"),
        ({"bandwidth": {0: 1.0}}, r"features \[1\] have no bandwidth"),
        ({"bandwidth": "knn", "bandwidth_quantile": 1.5}, "bandwidth_quantile"),
    ],
)
def test_estimator_rejects_bad_bandwidths(params, match, device):
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match=match):
        MeanShift(**params, device=device).fit(X)


def test_unknown_rule_lists_the_rules(device):
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError) as info:
        MeanShift(bandwidth="scot", device=device).fit(X)
    for name in ("scott", "silverman", "knn", "auto", "adaptive"):
        assert name in str(info.value)


# ----------------------------------------------------------------- adaptive
def test_adaptive_bandwidths_positive_finite_and_local(device):
    rng = np.random.default_rng(11)
    tight = rng.normal(size=(150, 2)) * 0.3
    wide = rng.normal(size=(150, 2)) * 3.0 + [30.0, 0.0]
    duplicates = np.zeros((40, 2)) + [0.1, 0.1]  # exact duplicates: k-th distance 0
    X = np.vstack([tight, wide, duplicates])
    h = _rule("adaptive", X, device=device)
    assert h.shape == (len(X),)
    assert np.all(np.isfinite(h)) and np.all(h > 0)
    # Clipped to a factor 10 either side of the (lower) median.
    median = np.sort(h)[(len(h) - 1) // 2]
    assert h.max() / median <= 10 + 1e-9 and median / h.min() <= 10 + 1e-9
    assert np.median(h[150:300]) > 4 * np.median(h[:150])


def test_adaptive_separates_clusters_of_very_different_spreads(device):
    rng = np.random.default_rng(12)
    spreads = np.array([0.5, 1.0, 2.5])
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 20.0]])
    y = np.repeat(np.arange(3), 150)
    X = centers[y] + rng.normal(size=(450, 2)) * spreads[y, None]
    model = MeanShift(bandwidth="adaptive", bin_seeding=True, device=device).fit(X)
    assert len(model.cluster_centers_) == 3
    assert adjusted_rand_score(y, model.labels_) > 0.95


# ------------------------------------------------------------ auto's choice
def test_persistent_plateau_prefers_the_finer_persistent_level():
    # 7 clusters for 3 rungs, then a coarse 2-cluster split for 6 rungs.
    counts = np.array([0, 40, 20, 7, 7, 7, 6, 6, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1])
    assert _persistent_plateau(counts) == (3, 5)
    # A short fine level (under half the coarse one) is not persistent.
    counts = np.array([0, 40, 20, 7, 7, 6, 6, 4, 3, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1])
    assert _persistent_plateau(counts) == (9, 15)
    # Short spurious splits of unimodal data: one cluster.
    counts = np.array([0, 40, 20, 9, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    assert _persistent_plateau(counts) == (7, 19)
    assert _persistent_plateau(np.zeros(10, dtype=int)) == (-1, -1)


def test_bandwidth_path_finds_the_true_count(blobs):
    X, _ = blobs
    path = bandwidth_path(torch.as_tensor(X), None, "flat", TORCH)
    first, last = path.plateau
    assert 0 <= first <= last < len(path.bandwidths)
    assert np.all(path.n_clusters[first : last + 1] == 5)
    assert path.bandwidths[first] <= path.bandwidth <= path.bandwidths[last]
    assert np.all(np.diff(path.bandwidths) > 0)


def test_auto_on_one_gaussian_is_one_cluster(device):
    X = np.random.default_rng(13).normal(size=(400, 2))
    assert len(MeanShift(bandwidth="auto", bin_seeding=True, device=device).fit(X).cluster_centers_) == 1


# ------------------------------------------------------------------ quality
def _quality_cases():
    """Small fixed subset of the benchmark suite: structure a person sees at a glance."""
    cases = {"8 blobs, 10 sigma": _grid_blobs(8, 50, gap=10.0, seed=14)}
    # Hierarchical: two groups of three blobs, the groups far apart.
    X, y = _grid_blobs(3, 60, gap=9.0, seed=15)
    cases["2 x 3 blobs"] = (np.vstack([X, X[::-1] + [80.0, 0.0]]), np.r_[y, y[::-1] + 3])
    X, y = make_blobs(600, centers=8, n_features=2, random_state=0)
    cases["make_blobs 8 (overlapping)"] = (X, y)
    iris = load_iris()
    cases["iris"] = (iris.data, iris.target)
    return cases


def test_auto_beats_the_sklearn_default(device):
    aris = {"auto": [], None: []}
    for name, (X, y) in _quality_cases().items():
        for rule in aris:
            labels = MeanShift(bandwidth=rule, bin_seeding=True, device=device).fit(X).labels_
            aris[rule].append(adjusted_rand_score(y, labels))
    auto, default = np.array(aris["auto"]), np.array(aris[None])
    print("ARI auto", auto.round(3), "sklearn default", default.round(3))
    assert auto[0] > 0.95 and auto[1] > 0.95  # the well-separated cases are solved
    assert np.all(auto >= default - 0.05), (auto, default)
    assert auto.mean() > default.mean() + 0.2, (auto, default)
