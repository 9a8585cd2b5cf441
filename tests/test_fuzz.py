"""Property tests (hypothesis) over shapes, dtypes, scales, offsets and duplicates.

Device: CPU (every fit passes ``device="cpu"``).  Small inputs, so that
scikit-learn runs alongside; ``derandomize=True`` keeps CI reproducible.

Checked for every input: the fitted attributes are consistent (shapes,
dtypes, labels, sizes, finite centers); fitting ``X * 2**k`` with
``bandwidth * 2**k`` gives the same labels and the scaled centers (scaling by
a power of two is exact, so this holds bit for bit).  For float64 data drawn
from a continuous distribution, where no distance ties the bandwidth, the
clusters equal scikit-learn's; for integer data with an integer bandwidth,
the first windows (every point a seed, ``max_iter=1``) equal scikit-learn's
too, points exactly on the edge included.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.cluster import MeanShift as SkMeanShift  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from meanshift_gpu import MeanShift  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def datasets(draw, dtypes=("float64", "float32", "int64", "int32")):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from(dtypes))
    scale_exponent = draw(st.integers(-20, 20))
    offset = draw(st.sampled_from([0.0, 1.0, -1e3, 1e6]))
    duplicates = draw(st.integers(0, 5))
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 6, size=(3, d))
    X = centers[rng.integers(0, 3, n)] + rng.normal(0, 1, size=(n, d))
    if duplicates:
        X = np.concatenate([X, X[rng.integers(0, n, duplicates)]])
    if dtype.startswith("int"):
        X = np.round(X * 3)  # integer data: many exact distances
    else:
        X = (X + offset) * 2.0**scale_exponent
    bandwidth_factor = draw(st.sampled_from([0.5, 1.0, 2.0, 3.0]))
    bandwidth = bandwidth_factor * (3.0 if dtype.startswith("int") else 2.0**scale_exponent)
    return X.astype(dtype), float(bandwidth)


def _check_attributes(model, X):
    n = X.shape[0]
    k = model.cluster_centers_.shape[0]
    assert k >= 1 and model.cluster_centers_.shape == (k, X.shape[1])
    assert np.isfinite(model.cluster_centers_).all()
    expected_dtype = np.float32 if X.dtype == np.float32 else np.float64
    assert model.cluster_centers_.dtype == expected_dtype
    assert model.labels_.shape == (n,) and model.labels_.min() >= 0 and model.labels_.max() < k
    assert model.cluster_sizes_.sum() == n and (model.cluster_sizes_ > 0).all()
    assert 0 <= model.n_iter_ <= model.max_iter  # 0: every seed already at its mean (as scikit-learn counts)


@FUZZ
@given(datasets())
def test_attributes_are_consistent_and_power_of_two_scaling_changes_nothing(case):
    X, bandwidth = case
    model = MeanShift(bandwidth=bandwidth, device="cpu").fit(X)
    _check_attributes(model, X)
    for factor in (2.0**-9, 2.0**7):
        Xs = X.astype(np.float64 if X.dtype.kind == "i" else X.dtype) * factor
        scaled = MeanShift(bandwidth=bandwidth * factor, device="cpu").fit(Xs)
        np.testing.assert_array_equal(scaled.labels_, model.labels_)
        np.testing.assert_array_equal(scaled.cluster_centers_, model.cluster_centers_.astype(Xs.dtype) * factor)
        assert scaled.n_iter_ == model.n_iter_


@FUZZ
@given(datasets(dtypes=("float64",)))
def test_continuous_float64_data_cluster_like_scikit_learn(case):
    X, bandwidth = case
    ours = MeanShift(bandwidth=bandwidth, device="cpu").fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SkMeanShift(bandwidth=bandwidth).fit(X)
    assert len(ours.cluster_centers_) == len(theirs.cluster_centers_)
    assert adjusted_rand_score(theirs.labels_, ours.labels_) == 1.0
    span = max(1.0, float(np.abs(X).max()))
    for center in theirs.cluster_centers_:
        assert np.abs(ours.cluster_centers_ - center).max(1).min() <= 1e-9 * span


@FUZZ
@given(datasets(dtypes=("int64", "int32")))
def test_first_windows_on_integer_data_equal_scikit_learn(case):
    X, bandwidth = case
    bandwidth = float(round(bandwidth))  # integer data, integer bandwidth: every test is exact
    from sklearn.neighbors import NearestNeighbors

    Xf = X.astype(np.float64)
    counts = np.array([len(r) for r in NearestNeighbors(radius=bandwidth).fit(Xf).radius_neighbors(
        Xf, return_distance=False)])
    means = np.stack([Xf[r].mean(0) for r in NearestNeighbors(radius=bandwidth).fit(Xf).radius_neighbors(
        Xf, return_distance=False)])
    from meanshift_gpu._reference import flat_edge_for, mean_shift_step, typical_extent, using_flat_edge

    data = torch.as_tensor(Xf)
    offset = data.median(0).values
    scaled = (data - offset) / bandwidth
    with using_flat_edge(flat_edge_for(torch.float64, X.shape[1], typical_extent(scaled))):
        step = mean_shift_step(scaled, scaled, None, kernel="flat")
    np.testing.assert_array_equal(step.log_density.exp().round().long().numpy(), counts)
    np.testing.assert_allclose((step.positions * bandwidth + offset).numpy(), means, rtol=1e-12, atol=1e-9)
