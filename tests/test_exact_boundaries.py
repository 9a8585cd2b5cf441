"""Points exactly one bandwidth apart: the window includes its edge, as scikit-learn's does.

scikit-learn keeps a point when ``sum((x - q)**2) <= bandwidth**2``; on
integer or quantised data that is an exact test, and many points lie
exactly on the edge.  The engine works on data centred on their median and
divided by the bandwidth, which rounds those distances; the window's edge
allows for that rounding (``fit_info_["flat_edge"]``), so exact inputs give
scikit-learn's answer in every dimension, with every neighbour method.

Device: CPU (the fits pass ``device="cpu"``; the Triton kernels take the
same edge, see tests/test_ascent.py and tests/test_kernels.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift as SkMeanShift
from sklearn.metrics import adjusted_rand_score

from meanshift_gpu import MeanShift
from meanshift_gpu._reference import flat_edge, flat_edge_for, mean_shift_step, using_flat_edge

METHODS = {
    "auto": {},
    "dense": {"neighbors": "dense"},
    "grid": {"neighbors": "grid"},
    "grid batched": {"neighbors": "grid", "neighbor_options": {"row_sums": False}},
    "grid torch row sums": {"neighbors": "grid", "neighbor_options": {"row_sums": True, "compiled": False}},
}


def _assert_same_as_sklearn(ours, theirs, atol=1e-9):
    """Same clusters, same labels (up to renaming), matched centers within ``atol`` (the compute dtype's)."""
    assert len(ours.cluster_centers_) == len(theirs.cluster_centers_)
    assert adjusted_rand_score(theirs.labels_, ours.labels_) == 1.0
    for center in theirs.cluster_centers_:
        assert np.abs(ours.cluster_centers_ - center).max(1).min() < atol


def test_the_three_point_example():
    X = [[7.0, 7], [10, 11], [17, 17]]  # |(7, 7) - (10, 11)| = 5 exactly
    ours = MeanShift(bandwidth=5.0, device="cpu").fit(X)
    _assert_same_as_sklearn(ours, SkMeanShift(bandwidth=5.0).fit(X))
    assert len(ours.cluster_centers_) == 2
    assert ours.fit_info_["flat_edge"] > 1.0


@pytest.mark.parametrize("n_features", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("method", list(METHODS))
def test_exact_boundaries_match_scikit_learn(n_features, method):
    if method != "auto" and method != "dense" and n_features > 3 and "row sums" in method:
        pytest.skip("row sums take 1 to 3 features")
    rng = np.random.default_rng(n_features)
    X = rng.integers(0, 40, size=(300, n_features)).astype(np.float64)
    theirs = SkMeanShift(bandwidth=5.0).fit(X)
    ours = MeanShift(bandwidth=5.0, device="cpu", **METHODS[method]).fit(X)
    _assert_same_as_sklearn(ours, theirs)
    assert ours.n_iter_ == theirs.n_iter_


@pytest.mark.parametrize("bandwidth", [1.5, 3.0, 5.0, 6.5])
@pytest.mark.parametrize("n_features", [1, 2, 3, 4, 6])
def test_first_windows_count_the_points_on_the_edge(bandwidth, n_features):
    """Seeds at the data: every window's count equals scikit-learn's neighbour count, edge included."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(7 * n_features)
    high = 30 if n_features <= 2 else int(2 * bandwidth) + 3  # dense enough that pairs lie on the edge
    X = rng.integers(0, high, size=(500, n_features)).astype(np.float64) * 0.5  # exact halves
    expected = [len(r) for r in NearestNeighbors(radius=bandwidth).fit(X).radius_neighbors(X, return_distance=False)]
    data = torch.as_tensor(X)
    scaled = (data - data.median(0).values) / bandwidth
    on_edge = ((data[:, None] - data[None]) ** 2).sum(-1).eq(bandwidth**2).sum()
    assert on_edge > 0  # the case exercises the edge
    with using_flat_edge(flat_edge_for(torch.float64, n_features, float(scaled.abs().max()))):
        counts = mean_shift_step(scaled, scaled, None, kernel="flat").log_density.exp().round().long()
    assert counts.tolist() == expected
    assert flat_edge() == 1.0  # the setting ends with its block


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.int16, np.int8, np.uint8])
def test_exact_boundaries_in_other_input_dtypes(dtype):
    rng = np.random.default_rng(3)
    X = rng.integers(0, 40, size=(300, 2))
    theirs = SkMeanShift(bandwidth=5.0).fit(X.astype(np.float64))
    # Integers are computed in float64; float32 in float32 (centers to its rounding).
    atol = 1e-4 if dtype == np.float32 else 1e-9
    _assert_same_as_sklearn(MeanShift(bandwidth=5.0, device="cpu").fit(X.astype(dtype)), theirs, atol)
    _assert_same_as_sklearn(MeanShift(bandwidth=5.0, device="cpu").fit(torch.as_tensor(X.astype(dtype))), theirs, atol)


def test_the_edge_allows_only_for_rounding():
    # A point 1e-9 bandwidths beyond the edge is outside in float64.
    X = np.array([[0.0, 0.0], [3.0, 4.0 + 5e-9], [100.0, 100.0]])
    ours = MeanShift(bandwidth=5.0, device="cpu").fit(X)
    assert len(ours.cluster_centers_) == len(SkMeanShift(bandwidth=5.0).fit(X).cluster_centers_) == 3
    assert ours.fit_info_["flat_edge"] - 1.0 < 1e-12
