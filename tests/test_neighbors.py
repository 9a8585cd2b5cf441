"""Neighbour pruning (grid, LSH, faiss) against the dense exact pass.

Fits and the grid step take the ``device`` argument (CPU, and CUDA where
present); the recall and size-table checks run on CPU tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.cluster
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from meanshift_gpu import MeanShift, _decisions, _neighbors
from meanshift_gpu._engine import ascent as _engine
from meanshift_gpu._neighbors.grid import GridIndex, grid_mean_shift_step
from meanshift_gpu._reference import mean_shift_step


def _blobs(n, d, centers, *, std=1.0, seed=0, box=(-10.0, 10.0)):
    X, y = make_blobs(n, n_features=d, centers=centers, cluster_std=std, center_box=box, random_state=seed)
    return X, y


def _fit(X, **params):
    return MeanShift(**params).fit(X)


# ------------------------------------------------------------------------ grid: exact
@pytest.mark.parametrize("n_features", [1, 2, 3, 5])
@pytest.mark.parametrize("kernel", ["flat", "epanechnikov"])
def test_grid_step_equals_dense_step(n_features, kernel, device):
    gen = torch.Generator().manual_seed(n_features)
    data = (torch.randn(700, n_features, generator=gen, dtype=torch.float64) * 2.0).to(device)
    seeds = torch.cat([data[:150] + 0.3, data.amax(0, keepdim=True) + 5.0])  # last: empty window
    weights = torch.rand(700, generator=gen, dtype=torch.float64).to(device)
    index = GridIndex(data, 1.0, weights)
    got = grid_mean_shift_step(seeds, index, kernel=kernel, seed_block=7, max_indices=5000)
    want = mean_shift_step(seeds, data, weights, kernel=kernel)
    torch.testing.assert_close(got.positions, want.positions, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.log_density, want.log_density, rtol=1e-12, atol=1e-12)
    assert torch.isneginf(got.log_density[-1])


@pytest.mark.parametrize("n_features", [2, 3])
def test_grid_flat_fit_identical_to_dense_and_sklearn(n_features, assert_same_clustering, device):
    X, _ = _blobs(700, n_features, 5, seed=n_features)
    dense = _fit(X, bandwidth=1.1, neighbors="dense", device=device)
    grid = _fit(X, bandwidth=1.1, neighbors="grid", device=device)
    assert grid.neighbors_ == "grid" and dense.neighbors_ == "dense"
    assert_same_clustering(dense.cluster_centers_, dense.labels_, grid.cluster_centers_, grid.labels_, atol=1e-10, rtol=1e-10)
    assert grid.n_iter_ == dense.n_iter_
    sk = sklearn.cluster.MeanShift(bandwidth=1.1).fit(X)
    assert_same_clustering(sk.cluster_centers_, sk.labels_, grid.cluster_centers_, grid.labels_, atol=1e-9, rtol=1e-9)


def test_grid_with_bin_seeding_and_weights_matches_dense(assert_same_clustering, device):
    X, _ = _blobs(1500, 2, 4, seed=7)
    w = np.random.RandomState(0).randint(0, 4, size=len(X)).astype(float)
    params = dict(bandwidth=0.9, bin_seeding=True, cluster_all=False)
    dense = MeanShift(neighbors="dense", **params, device=device).fit(X, sample_weight=w)
    grid = MeanShift(neighbors="grid", **params, device=device).fit(X, sample_weight=w)
    assert_same_clustering(dense.cluster_centers_, dense.labels_, grid.cluster_centers_, grid.labels_, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kernel", ["flat", "epanechnikov"])
def test_grid_per_feature_bandwidth_matches_dense(kernel, match_centers, device):
    X, _ = _blobs(1000, 3, 4, seed=3)
    X[:, 2] *= 50.0
    bandwidth = np.array([1.0, 1.0, 50.0])
    dense = _fit(X, neighbors="dense", bandwidth=bandwidth, kernel=kernel, device=device)
    grid = _fit(X, neighbors="grid", bandwidth=bandwidth, kernel=kernel, device=device)
    assert grid.cluster_centers_.shape == dense.cluster_centers_.shape
    match = match_centers(dense.cluster_centers_, grid.cluster_centers_)
    # Summation order differs, so a seed may stop one step earlier or later:
    # centers agree to the stopping tolerance (1e-3 bandwidths).
    error = np.abs(grid.cluster_centers_[match] - dense.cluster_centers_) / bandwidth
    assert error.max() <= 1e-3
    assert adjusted_rand_score(dense.labels_, grid.labels_) > 0.999


def test_grid_gaussian_truncation_error_is_small(device):
    X, _ = _blobs(1500, 2, 4, seed=11)
    dense = _fit(X, bandwidth=1.0, kernel="gaussian", neighbors="dense", device=device)
    grid = _fit(X, bandwidth=1.0, kernel="gaussian", neighbors="grid", device=device)
    assert len(grid.cluster_centers_) == len(dense.cluster_centers_)
    # Max center error, in bandwidths: cells reach >= 3 bandwidths, the weight
    # left out is < exp(-4.5) relative, so the modes barely move.
    error = np.abs(np.sort(grid.cluster_centers_, 0) - np.sort(dense.cluster_centers_, 0)).max()
    assert error < 1e-2, error
    assert adjusted_rand_score(dense.labels_, grid.labels_) > 0.999


def test_blurring_with_grid_matches_dense(device):
    X, _ = _blobs(800, 2, 3, seed=5, std=0.6)
    dense = _fit(X, bandwidth=1.5, algorithm="blurring", neighbors="dense", device=device)
    grid = _fit(X, bandwidth=1.5, algorithm="blurring", neighbors="grid", device=device)
    np.testing.assert_allclose(np.sort(grid.cluster_centers_, 0), np.sort(dense.cluster_centers_, 0), atol=1e-8)
    assert adjusted_rand_score(dense.labels_, grid.labels_) == 1.0


def test_grid_rejects_too_many_features(device):
    X, _ = _blobs(100, 7, 2)
    with pytest.raises(ValueError, match="at most 6 features"):
        _fit(X, bandwidth=1.0, neighbors="grid", device=device)


# --------------------------------------------------------------- approximate methods
# Datasets where the bandwidth gives the real structure (so a clustering
# that matches is meaningful, not a coin toss among hundreds of singletons).
APPROX_CASES = {
    "5d": (_blobs(500, 5, 5, seed=22, std=0.8, box=(-15, 15)), 1.6),
    "12d": (_blobs(400, 12, 4, seed=23, std=0.8, box=(-15, 15)), 4.5),
}


def _recall(method, X, bandwidth, options=None):
    data = torch.as_tensor(X / bandwidth)
    opts = _neighbors.check_neighbor_options(options)
    pruner = _neighbors.build_neighbor_method(method, data, None, kernel="flat", options=opts, dense_step=None)
    seeds = data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))[:300]]
    return _neighbors.neighbor_recall(pruner, seeds, data)


@pytest.mark.parametrize("case", sorted(APPROX_CASES))
@pytest.mark.parametrize("method", ["lsh", "faiss"])
@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
def test_approximate_methods_match_dense(case, method, kernel, device):
    (X, _), bandwidth = APPROX_CASES[case]
    options = {"index": "ivf", "nlist": 32} if method == "faiss" else None
    if method == "faiss":
        pytest.importorskip("faiss")
    assert _recall(method, X, bandwidth, options) >= 0.95
    dense = _fit(X, bandwidth=bandwidth, kernel=kernel, neighbors="dense", device=device)
    approx = _fit(X, bandwidth=bandwidth, kernel=kernel, neighbors=method, neighbor_options=options, device=device)
    assert approx.neighbors_ == method
    assert len(approx.cluster_centers_) == len(dense.cluster_centers_)
    assert adjusted_rand_score(dense.labels_, approx.labels_) >= 0.99


def test_faiss_flat_is_exact_for_flat_kernel(assert_same_clustering, device):
    pytest.importorskip("faiss")
    X, _ = _blobs(1000, 4, 4, seed=9)
    dense = _fit(X, bandwidth=1.3, neighbors="dense", device=device)
    flat = _fit(X, bandwidth=1.3, neighbors="faiss", neighbor_options={"index": "flat"}, device=device)
    assert_same_clustering(dense.cluster_centers_, dense.labels_, flat.cluster_centers_, flat.labels_, atol=1e-9, rtol=1e-9)


def test_lsh_recall_rises_with_tables():
    (X, _), bandwidth = APPROX_CASES["5d"]
    few = _recall("lsh", X, bandwidth, {"n_tables": 1, "n_bits": 6})
    many = _recall("lsh", X, bandwidth, {"n_tables": 16, "n_bits": 6})
    assert few < many


def test_candidate_chunking_does_not_change_results(device):
    (X, _), bandwidth = APPROX_CASES["5d"]
    X = X[:250]
    a = _fit(X, bandwidth=bandwidth, neighbors="lsh", neighbor_options={"max_pairs": 1 << 22}, device=device)
    b = _fit(X, bandwidth=bandwidth, neighbors="lsh", neighbor_options={"max_pairs": 5_000}, device=device)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-9)
    np.testing.assert_array_equal(a.labels_, b.labels_)


# ------------------------------------------------------------------ auto & options
def test_auto_size_table(monkeypatch):
    cpu = torch.device("cpu")
    def choose(*args, adaptive=False, **kwargs):
        return _decisions.decide_neighbors(*args, per_point_bandwidths=adaptive, **kwargs).value

    # The table is per device type: a size the GPU still runs dense is pruned on the CPU.
    n = int((_decisions.AUTO_DENSE_PAIRS["cuda"] / 2) ** 0.5)
    assert n * n > _decisions.AUTO_DENSE_PAIRS["cpu"]
    assert choose("auto", n_seeds=n, n_points=n, n_features=3, device=torch.device("cuda")) == "dense"
    assert choose("auto", n_seeds=n, n_points=n, n_features=3, device=cpu) == "grid"
    assert choose("auto", n_seeds=1000, n_points=1000, n_features=3, device=cpu) == "dense"
    assert choose("auto", n_seeds=10**6, n_points=10**6, n_features=3, device=cpu) == "grid"
    assert choose("auto", n_seeds=10**6, n_points=10**6, n_features=32, device=cpu) == "dense"
    assert choose("auto", n_seeds=10**6, n_points=10**6, n_features=3, device=cpu, adaptive=True) == "dense"
    assert choose("lsh", n_seeds=10, n_points=10, n_features=3, device=cpu) == "lsh"
    # A bandwidth so large that every neighbourhood holds everything: grid is pointless.
    data = torch.randn(2000, 2, dtype=torch.float64) * 0.1
    assert choose("auto", n_seeds=10**6, n_points=10**6, n_features=2, device=cpu, grid=lambda: GridIndex(data, 1.0)) == "dense"
    spread = torch.randn(2000, 2, dtype=torch.float64) * 30
    assert choose("auto", n_seeds=10**6, n_points=10**6, n_features=2, device=cpu, grid=lambda: GridIndex(spread, 1.0)) == "grid"


def test_auto_picks_grid_for_large_low_dimensional_fits(monkeypatch, device):
    # "auto" reads the row of the fit's device (the GPU's allows ~1000x more pairs).
    monkeypatch.setitem(_decisions.AUTO_DENSE_PAIRS, device, 1e5)
    X, _ = _blobs(1000, 2, 4, seed=1)
    est = _fit(X, bandwidth=0.8, device=device)
    assert est.neighbors_ == "grid"
    assert _fit(X[:200], bandwidth=0.8, neighbors="auto", device=device).neighbors_ == "dense"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"n_table": 3}, "unknown neighbor_options"),
        ({"truncate": 0}, "truncate"),
        ({"n_tables": 0}, "n_tables"),
        ({"index": "hnsw"}, "index"),
    ],
)
def test_bad_neighbor_options(options, message, device):
    X, _ = _blobs(50, 2, 2)
    with pytest.raises(ValueError, match=message):
        _fit(X, bandwidth=1.0, neighbors="lsh", neighbor_options=options, device=device)


def test_unknown_neighbor_method(device):
    X, _ = _blobs(50, 2, 2)
    with pytest.raises(ValueError, match="neighbors"):
        _fit(X, bandwidth=1.0, neighbors="kdtree", device=device)


def test_faiss_missing_gives_install_hint(monkeypatch, device):
    monkeypatch.setattr(_neighbors.faiss_range, "faiss_unavailable", lambda: "faiss is not installed: pip install x")
    X, _ = _blobs(50, 2, 2)
    with pytest.raises(RuntimeError, match="pip install"):
        _fit(X, bandwidth=1.0, neighbors="faiss", device=device)


# ------------------------------------------------------------ seed deduplication
def test_dedup_of_identical_seeds_is_exact(monkeypatch, assert_same_clustering, device):
    # Integer data: many seeds share windows and land on identical means.
    rng = np.random.RandomState(0)
    X = np.vstack([rng.randint(0, 8, size=(1800, 2)), rng.randint(20, 26, size=(1200, 2))]).astype(float)
    with_dedup = _fit(X, bandwidth=2.5, neighbors="dense", device=device)
    monkeypatch.setattr(_engine, "_DEDUP_MIN_SEEDS", 10**9)
    without = _fit(X, bandwidth=2.5, neighbors="dense", device=device)
    # Same windows, same means; the batched matmul may round a row differently
    # when the batch around it changes, so centers agree to rounding, not bits.
    np.testing.assert_allclose(with_dedup.cluster_centers_, without.cluster_centers_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(with_dedup.labels_, without.labels_)
    assert with_dedup.n_iter_ == without.n_iter_
    sk = sklearn.cluster.MeanShift(bandwidth=2.5).fit(X)
    assert with_dedup.n_iter_ == sk.n_iter_
    assert len(sk.cluster_centers_) == len(with_dedup.cluster_centers_)
