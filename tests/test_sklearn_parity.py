"""Parity with :class:`sklearn.cluster.MeanShift`, and a port of sklearn's own tests.

The first part fits scikit-learn and meanshift_gpu on the same data and
requires the same clustering: same number of clusters, matched centers equal
to float tolerance, labels equal after renaming through the matched centers,
and the same ``n_iter_``.

The second part is scikit-learn's ``sklearn/cluster/tests/test_mean_shift.py``
(1.9) run against meanshift_gpu, with its ``global_dtype`` /
``global_random_seed`` fixtures replaced by explicit parametrization.  The one
documented difference: our ``get_bin_seeds`` keeps ``X``'s float dtype where
scikit-learn returns float32.

Every test takes the ``device`` argument: parity holds on the CPU and on CUDA,
with center tolerances that follow the compute dtype (``tolerance`` in
``conftest.py``): float64 input is computed in float64 on every device.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sklearn.cluster
import sklearn.neighbors
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, v_measure_score
from sklearn.utils._testing import assert_allclose, assert_array_equal

from meanshift_gpu import MeanShift, estimate_bandwidth, get_bin_seeds, mean_shift

DTYPES = [np.float32, np.float64]


@pytest.fixture
def assert_parity(assert_same_clustering, tolerance, device):
    """``assert_parity(X, *, allow_label_ties=False, **params)`` -> (sklearn's fit, ours on ``device``)."""

    def check(X, *, allow_label_ties=False, **params):
        return _assert_parity(X, assert_same_clustering, tolerance, device, allow_label_ties=allow_label_ties, **params)

    return check


def _assert_parity(X, assert_same_clustering, tolerance, device, *, allow_label_ties=False, **params):
    expected = sklearn.cluster.MeanShift(**params).fit(X)
    got = MeanShift(device=device, **params).fit(X)
    # Both libraries average the same points; only summation order differs.
    assert_same_clustering(
        expected.cluster_centers_,
        expected.labels_,
        got.cluster_centers_,
        got.labels_,
        tie_points=X if allow_label_ties else None,
        **tolerance(X.dtype, np.abs(X).max()),
    )
    assert got.n_iter_ == expected.n_iter_
    assert got.cluster_centers_.dtype == X.dtype
    return expected, got


# Per dimension: (number of blobs, blob spread, random_state).  Spreads are
# chosen so that the estimated bandwidth and the small one both give several
# clusters and the orphans of cluster_all=False actually occur.
BLOB_SETTINGS = {
    1: (3, 1.0, 1),
    2: (4, 1.2, 2),
    3: (5, 1.0, 3),
    5: (3, 1.5, 5),
    8: (4, 1.0, 8),
}

OPTIONS = {
    "default": {},
    "bin_seeding": {"bin_seeding": True},
    "not_cluster_all": {"cluster_all": False},
    "bin_seeding_min_freq3_not_all": {"bin_seeding": True, "min_bin_freq": 3, "cluster_all": False},
    "max_iter_1": {"max_iter": 1},
    "max_iter_3": {"max_iter": 3},
}


# The estimated bandwidth (sklearn's default, which over-smooths) gives few
# clusters, so it is paired with the options it interacts with; the small
# bandwidth gives many clusters, many merges and, with cluster_all=False,
# orphans, and is run with every option.
CASES = [("estimated", option) for option in ("default", "bin_seeding", "not_cluster_all")] + [
    ("small", option) for option in OPTIONS
]


@pytest.mark.parametrize("bandwidth, option", CASES, ids=["-".join(case) for case in CASES])
@pytest.mark.parametrize("n_features", sorted(BLOB_SETTINGS))
def test_parity_on_blobs(n_features, bandwidth, option, make_blob_data, assert_parity):
    n_centers, spread, seed = BLOB_SETTINGS[n_features]
    X, _ = make_blob_data(250, n_features, n_centers, random_state=seed, cluster_std=spread)
    params = dict(OPTIONS[option])
    # "estimated" leaves bandwidth=None so that both libraries estimate it.
    if bandwidth == "small":
        params["bandwidth"] = float(sklearn.cluster.estimate_bandwidth(X, quantile=0.08))
    assert_parity(X, **params)


@pytest.mark.parametrize("n_features", [2, 5])
def test_parity_float32(n_features, make_blob_data, assert_parity):
    n_centers, spread, seed = BLOB_SETTINGS[n_features]
    X, _ = make_blob_data(300, n_features, n_centers, random_state=seed, cluster_std=spread, dtype=np.float32)
    bandwidth = float(sklearn.cluster.estimate_bandwidth(X, quantile=0.1))
    assert_parity(X, bandwidth=bandwidth)
    assert_parity(X, bandwidth=bandwidth, bin_seeding=True, cluster_all=False)


@pytest.mark.parametrize("n_features", [1, 3, 8])
@pytest.mark.parametrize("cluster_all", [True, False])
def test_parity_with_given_seeds(n_features, cluster_all, make_blob_data, assert_parity):
    n_centers, spread, seed = BLOB_SETTINGS[n_features]
    X, _ = make_blob_data(250, n_features, n_centers, random_state=seed, cluster_std=spread)
    rng = np.random.RandomState(seed)
    # Seeds both inside the data and in empty space (those must be dropped).
    seeds = np.vstack([X[rng.choice(len(X), 15, replace=False)], X.max(0) + 50.0])
    bandwidth = float(sklearn.cluster.estimate_bandwidth(X, quantile=0.1))
    assert_parity(X, bandwidth=bandwidth, seeds=seeds, cluster_all=cluster_all)


def _integer_datasets():
    rng = np.random.RandomState(0)
    for trial in range(12):
        n_features = 1 + trial % 3
        yield np.vstack(
            [rng.randint(0, 6, size=(80, n_features)), rng.randint(9, 13, size=(50, n_features))]
        ).astype(np.float64)


def _assert_parity_on_integer_data(bandwidth, assert_parity, option_sets):
    # Integer coordinates put many points exactly on window boundaries
    # (distance == bandwidth), where sklearn's inclusive test must be matched
    # bit for bit: in the windows, the merge radius and the orphan test.
    for X in _integer_datasets():
        for options in option_sets:
            assert_parity(X, bandwidth=bandwidth, allow_label_ties=True, **options)


WITH_AND_WITHOUT_BINS = ({}, {"bin_seeding": True, "cluster_all": False})


@pytest.mark.xfail(
    reason="ties that exist only in real arithmetic: a seed that is a rounded mean (0.2, 1.6) "
    "lies at distance 1 from (1, 1) in exact arithmetic, and which side of the edge the point "
    "falls on depends on each implementation's rounding of the mean and of the distance. "
    "Exact inputs are matched exactly (test_exact_boundaries_match_scikit_learn)",
    strict=False,
)
@pytest.mark.parametrize("bandwidth", [1.0, 2.0])
def test_parity_integer_data_power_of_two_bandwidth(bandwidth, assert_parity):
    _assert_parity_on_integer_data(bandwidth, assert_parity, WITH_AND_WITHOUT_BINS)


@pytest.mark.xfail(
    reason="ties that exist only in real arithmetic: a seed that is a rounded mean (0.2, 1.6) "
    "lies at distance 1 from (1, 1) in exact arithmetic, and which side of the edge the point "
    "falls on depends on each implementation's rounding of the mean and of the distance. "
    "Exact inputs are matched exactly (test_exact_boundaries_match_scikit_learn)",
    strict=False,
)
@pytest.mark.parametrize("bandwidth", [1.5, 3.0])
def test_parity_integer_data_other_bandwidth(bandwidth, assert_parity):
    _assert_parity_on_integer_data(bandwidth, assert_parity, WITH_AND_WITHOUT_BINS)


@pytest.mark.parametrize("bandwidth", [1.3, 2.7])
def test_parity_integer_data_without_boundary_ties(bandwidth, assert_parity):
    # Same integer data, bandwidths that no distance between integer points
    # equals: exact parity (centers matched, so tied intensities whose
    # coordinate tie-break flips by an ulp in scaled coordinates do not count).
    _assert_parity_on_integer_data(bandwidth, assert_parity, ({}, {"cluster_all": False}))


@pytest.mark.xfail(
    reason="known difference: sklearn builds bin seeds as float32(cell index) * bandwidth in "
    "float32 (2.7 -> 2.7000000477), we use the exact float64 grid; on integer data a grid "
    "seed then sits exactly one bandwidth from a point that sklearn's rounded seed misses",
    strict=False,
)
def test_parity_integer_data_bin_seeding_non_dyadic_bandwidth(assert_parity):
    _assert_parity_on_integer_data(2.7, assert_parity, ({"bin_seeding": True},))


@pytest.mark.xfail(
    reason="float32 data ~1000 bandwidths from their median: coordinates carry rounding of "
    "~1e-4 bandwidths, so the window's edge is that fuzzy (198 clusters against 199 here; "
    "186 before the edge allowed for the scaling's rounding)",
    strict=False,
)
def test_parity_float32_data_extent_much_larger_than_bandwidth(make_blob_data, assert_parity):
    X, _ = make_blob_data(400, 8, 6, random_state=0, center_box=(-1000.0, 1000.0), dtype=np.float32)
    assert_parity(X, bandwidth=2.0)


@pytest.mark.parametrize("n_features", [2, 6])
def test_parity_tiny_dataset_estimated_bandwidth_is_zero(n_features, assert_parity, device):
    # With 6 points, k = int(6 * 0.3) = 1: the estimate is exactly 0 and every
    # point is its own cluster; rounding noise must not replace that 0.
    X = np.random.RandomState(n_features).rand(6, n_features) * 10 + 100
    got = MeanShift(device=device).fit(X)
    assert got.bandwidth_ == 0
    assert len(got.cluster_centers_) == 6
    assert_array_equal(got.cluster_centers_[got.labels_], X)
    # sklearn finds each point in its own radius-0 window only where its
    # distance to itself, |x|^2 + |x|^2 - 2 x.x through BLAS, rounds to exactly
    # 0 -- which depends on the BLAS kernel the machine dispatches to; a point
    # that misses its own window is dropped as a seed.  Parity is checked
    # where sklearn's neighbour search is exact here.
    self_found = np.array([i in found for i, found in enumerate(
        sklearn.neighbors.NearestNeighbors(radius=0.0).fit(X).radius_neighbors(X, return_distance=False))])
    if self_found.all():
        assert_parity(X)
    else:
        expected = sklearn.cluster.MeanShift().fit(X)
        assert len(expected.cluster_centers_) == self_found.sum()
        assert_array_equal(np.sort(expected.cluster_centers_, 0), np.sort(X[self_found], 0))


def test_parity_predict(make_blob_data, assert_parity, match_centers):
    X, _ = make_blob_data(300, 3, 5, random_state=3)
    X_new, _ = make_blob_data(100, 3, 5, random_state=33)
    expected, got = assert_parity(X, bandwidth=2.0)
    match = match_centers(expected.cluster_centers_, got.cluster_centers_)
    # predict labels map through the same center matching as fit labels.
    assert_array_equal(match[expected.predict(X_new)], got.predict(X_new))


def test_parity_mean_shift_function(make_blob_data, assert_same_clustering, tolerance, device):
    X, _ = make_blob_data(200, 2, 3, random_state=7)
    expected = sklearn.cluster.mean_shift(X, bandwidth=2.5, bin_seeding=True)
    got = mean_shift(X, bandwidth=2.5, bin_seeding=True, device=device)
    assert_same_clustering(*expected, *got, **tolerance(X.dtype, np.abs(X).max()))


@pytest.mark.parametrize("n_samples", [None, 120])
@pytest.mark.parametrize("quantile", [0.01, 0.3, 1.0])
def test_parity_estimate_bandwidth(n_samples, quantile, make_blob_data, tolerance, device):
    X, _ = make_blob_data(300, 4, 3, random_state=4)
    expected = sklearn.cluster.estimate_bandwidth(X, quantile=quantile, n_samples=n_samples, random_state=5)
    got = estimate_bandwidth(X, quantile=quantile, n_samples=n_samples, random_state=5, device=device)
    assert got == pytest.approx(expected, rel=tolerance(X.dtype)["rtol"])


# --------------------------------------------------------------------------
# Port of sklearn/cluster/tests/test_mean_shift.py (scikit-learn 1.9).
# --------------------------------------------------------------------------
n_clusters = 3
centers = np.array([[1, 1], [-1, -1], [1, -1]]) + 10
X, _ = make_blobs(
    n_samples=300,
    n_features=2,
    centers=centers,
    cluster_std=0.4,
    shuffle=True,
    random_state=11,
)


def test_convergence_of_1d_constant_data(device):
    # Non-regression test for scikit-learn#28926.
    model = MeanShift(device=device)
    n_iter = model.fit(np.ones(10).reshape(-1, 1)).n_iter_
    assert n_iter < model.max_iter


def test_estimate_bandwidth(device):
    bandwidth = estimate_bandwidth(X, n_samples=200, device=device)
    assert 0.9 <= bandwidth <= 1.5


@pytest.mark.parametrize("global_dtype", DTYPES)
def test_estimate_bandwidth_1sample(global_dtype, device):
    # n_samples=1 and quantile<1: n_neighbors is set to 1.
    bandwidth = estimate_bandwidth(X.astype(global_dtype, copy=False), n_samples=1, quantile=0.3, device=device)
    # sklearn compares with the float64 module-level X; we require the input dtype.
    assert bandwidth.dtype == global_dtype
    assert bandwidth == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("global_dtype", DTYPES)
@pytest.mark.parametrize(
    "bandwidth, cluster_all, expected, first_cluster_label",
    [(1.2, True, 3, 0), (1.2, False, 4, -1)],
)
def test_mean_shift(global_dtype, bandwidth, cluster_all, expected, first_cluster_label, device):
    X_with_global_dtype = X.astype(global_dtype, copy=False)
    ms = MeanShift(bandwidth=bandwidth, cluster_all=cluster_all, device=device)
    labels = ms.fit(X_with_global_dtype).labels_
    labels_unique = np.unique(labels)
    n_clusters_ = len(labels_unique)
    assert n_clusters_ == expected
    assert labels_unique[0] == first_cluster_label
    assert ms.cluster_centers_.dtype == global_dtype

    cluster_centers, labels_mean_shift = mean_shift(X_with_global_dtype, cluster_all=cluster_all, device=device)
    labels_mean_shift_unique = np.unique(labels_mean_shift)
    n_clusters_mean_shift = len(labels_mean_shift_unique)
    assert n_clusters_mean_shift == expected
    assert labels_mean_shift_unique[0] == first_cluster_label
    assert cluster_centers.dtype == global_dtype


@pytest.mark.parametrize("global_dtype", DTYPES)
@pytest.mark.parametrize("global_random_seed", [0, 1, 42])
def test_parallel(global_dtype, global_random_seed, device):
    centers = np.array([[1, 1], [-1, -1], [1, -1]]) + 10
    X, _ = make_blobs(
        n_samples=50,
        n_features=2,
        centers=centers,
        cluster_std=0.4,
        shuffle=True,
        random_state=global_random_seed,
    )
    X = X.astype(global_dtype, copy=False)

    ms1 = MeanShift(n_jobs=2, device=device)
    ms1.fit(X)

    ms2 = MeanShift(device=device)
    ms2.fit(X)

    assert_allclose(ms1.cluster_centers_, ms2.cluster_centers_)
    assert ms1.cluster_centers_.dtype == ms2.cluster_centers_.dtype
    assert_array_equal(ms1.labels_, ms2.labels_)


@pytest.mark.parametrize("global_dtype", DTYPES)
def test_meanshift_predict(global_dtype, device):
    ms = MeanShift(bandwidth=1.2, device=device)
    X_with_global_dtype = X.astype(global_dtype, copy=False)
    labels = ms.fit_predict(X_with_global_dtype)
    labels2 = ms.predict(X_with_global_dtype)
    assert_array_equal(labels, labels2)


def test_meanshift_all_orphans(device):
    # Init away from the data: fail with a sensible message.
    ms = MeanShift(bandwidth=0.1, seeds=[[-9, -9], [-10, -10]], device=device)
    msg = "No point was within bandwidth=0.1"
    with pytest.raises(ValueError, match=msg):
        ms.fit(X)


def test_unfitted():
    # Before fit there must be no fitted attributes.
    ms = MeanShift()
    assert not hasattr(ms, "cluster_centers_")
    assert not hasattr(ms, "labels_")


@pytest.mark.parametrize("global_dtype", DTYPES)
def test_cluster_intensity_tie(global_dtype, device):
    X = np.array([[1, 1], [2, 1], [1, 0], [4, 7], [3, 5], [3, 6]], dtype=global_dtype)
    c1 = MeanShift(bandwidth=2, device=device).fit(X)

    X = np.array([[4, 7], [3, 5], [3, 6], [1, 1], [2, 1], [1, 0]], dtype=global_dtype)
    c2 = MeanShift(bandwidth=2, device=device).fit(X)
    # Raw label ids on purpose: sklearn fixes the order of tied clusters by
    # their coordinates, whatever the order of the data.
    assert_array_equal(c1.labels_, [1, 1, 1, 0, 0, 0])
    assert_array_equal(c2.labels_, [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("global_dtype", DTYPES)
def test_bin_seeds(global_dtype):
    X = np.array(
        [[1.0, 1.0], [1.4, 1.4], [1.8, 1.2], [2.0, 1.0], [2.1, 1.1], [0.0, 0.0]],
        dtype=global_dtype,
    )

    # Bin coarseness 1.0 and min_bin_freq 1: 3 bins.
    ground_truth = {(1.0, 1.0), (2.0, 1.0), (0.0, 0.0)}
    test_bins = get_bin_seeds(X, 1, 1)
    test_result = set(tuple(p) for p in test_bins)
    assert len(ground_truth.symmetric_difference(test_result)) == 0

    # Bin coarseness 1.0 and min_bin_freq 2: 2 bins.
    ground_truth = {(1.0, 1.0), (2.0, 1.0)}
    test_bins = get_bin_seeds(X, 1, 2)
    test_result = set(tuple(p) for p in test_bins)
    assert len(ground_truth.symmetric_difference(test_result)) == 0

    # Bin size 0.01 and min_bin_freq 1: 6 bins, so binning bails out and
    # returns the data.
    with warnings.catch_warnings(record=True):
        test_bins = get_bin_seeds(X, 0.01, 1)
    assert_allclose(test_bins, X)

    # Tight clusters around [0, 0] and [1, 1]: only two bins.
    X, _ = make_blobs(
        n_samples=100,
        n_features=2,
        centers=[[0, 0], [1, 1]],
        cluster_std=0.1,
        random_state=0,
    )
    X = X.astype(global_dtype, copy=False)
    test_bins = get_bin_seeds(X, 1)
    assert_array_equal(test_bins, [[0, 0], [1, 1]])
    # Documented difference from sklearn (which returns float32): X's dtype is kept.
    assert test_bins.dtype == global_dtype


def test_bin_seeds_warns_when_binning_fails():
    X = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 1.0]])
    with pytest.warns(UserWarning, match="Binning data failed with provided bin_size=0.010000"):
        seeds = get_bin_seeds(X, 0.01, 1)
    assert seeds is X


@pytest.mark.parametrize("max_iter", [1, 100])
def test_max_iter(max_iter, device):
    clusters1, _ = mean_shift(X, max_iter=max_iter, device=device)
    ms = MeanShift(max_iter=max_iter, device=device).fit(X)
    clusters2 = ms.cluster_centers_

    assert ms.n_iter_ <= ms.max_iter
    assert len(clusters1) == len(clusters2)

    for c1, c2 in zip(clusters1, clusters2):
        assert np.allclose(c1, c2)


@pytest.mark.parametrize("global_dtype", DTYPES)
def test_mean_shift_zero_bandwidth(global_dtype, device):
    # Mean shift must work when the estimated bandwidth is 0.
    X = np.array([1, 1, 1, 2, 2, 2, 3, 3], dtype=global_dtype).reshape(-1, 1)

    # estimate_bandwidth with default args returns 0 on this dataset.
    bandwidth = estimate_bandwidth(X, device=device)
    assert bandwidth == 0

    # get_bin_seeds with a 0 bin_size returns the dataset itself.
    assert get_bin_seeds(X, bin_size=bandwidth) is X

    # Binning with a 0 estimated bandwidth is equivalent to no binning.
    ms_binning = MeanShift(bin_seeding=True, bandwidth=None, device=device).fit(X)
    ms_nobinning = MeanShift(bin_seeding=False, device=device).fit(X)
    expected_labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])

    assert v_measure_score(ms_binning.labels_, expected_labels) == pytest.approx(1)
    assert v_measure_score(ms_nobinning.labels_, expected_labels) == pytest.approx(1)
    assert_allclose(ms_binning.cluster_centers_, ms_nobinning.cluster_centers_)


@pytest.mark.parametrize("global_dtype", DTYPES)
def test_mean_shift_zero_bandwidth_matches_sklearn(global_dtype, assert_same_clustering, device):
    # Beyond the ported test: the zero-bandwidth clustering equals sklearn's.
    X = np.array([1, 1, 1, 2, 2, 2, 3, 3], dtype=global_dtype).reshape(-1, 1)
    expected = sklearn.cluster.MeanShift().fit(X)
    got = MeanShift(device=device).fit(X)
    assert_same_clustering(expected.cluster_centers_, expected.labels_, got.cluster_centers_, got.labels_)


@pytest.mark.parametrize("dtype, far", [(np.float32, 1e9), (np.float64, 1e15)])
def test_one_far_outlier_leaves_the_clusters_intact(dtype, far, device):
    """Two tight clusters near (10, 10) and one row at ``far``: scikit-learn finds 3 clusters.
    Centring on the mean put the clusters ~far/200 from the origin, where the data's
    precision is gone (1 cluster); the median keeps them near it."""
    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal((10, 10), 0.01, (100, 2)), rng.normal((10.1, 10), 0.01, (100, 2)), [[far, far]]])
    X = X.astype(dtype)
    ours = MeanShift(bandwidth=0.03, device=device).fit(X)
    theirs = sklearn.cluster.MeanShift(bandwidth=0.03).fit(X)
    assert len(ours.cluster_centers_) == len(theirs.cluster_centers_) == 3
    assert adjusted_rand_score(ours.labels_, theirs.labels_) == 1.0
