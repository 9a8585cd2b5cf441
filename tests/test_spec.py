"""meanshift_gpu._spec: one resolution of a fit's settings for both estimators."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from meanshift_gpu import MeanShift, estimate_bandwidth, feature_bandwidths
from meanshift_gpu._bandwidth.rules import rule_of_thumb
from meanshift_gpu._neighbors import check_neighbor_options
from meanshift_gpu._reference import flat_edge_for, typical_extent
from meanshift_gpu._spec import (
    FitSpec, bandwidth_scale, engine_config, flat_edge_of, median_offset, resolve_bandwidth,
)


@pytest.fixture(scope="module")
def X():
    X, _ = make_blobs(300, centers=3, n_features=2, cluster_std=0.8, random_state=0)
    return X


def _spec(**params) -> FitSpec:
    return FitSpec.from_estimator(MeanShift(**params))


# ----------------------------------------------------------------------------- FitSpec
def test_spec_holds_the_estimators_settings_with_checked_neighbor_options():
    spec = _spec(kernel="gaussian", tol=1e-4, max_iter=7, cluster_all=False, bin_seeding=True,
                 min_bin_freq=3, device="cpu", backend="torch", neighbors="grid", batch_size=64,
                 neighbor_options={"truncate": 2.5}, bandwidth="scott", bandwidth_quantile=0.2, verbose=1)
    assert (spec.kernel, spec.algorithm, spec.tol, spec.max_iter) == ("gaussian", "standard", 1e-4, 7)
    assert (spec.cluster_all, spec.bin_seeding, spec.min_bin_freq) == (False, True, 3)
    assert (spec.device, spec.backend, spec.neighbors, spec.batch_size) == ("cpu", "torch", "grid", 64)
    assert (spec.bandwidth, spec.bandwidth_quantile, spec.verbose) == ("scott", 0.2, True)
    assert spec.neighbor_options == check_neighbor_options({"truncate": 2.5})
    assert spec.neighbor_options["truncate"] == 2.5


def test_spec_is_frozen_and_survives_pickling():
    spec = _spec(bandwidth=np.array([1.0, 2.0]), neighbor_options={"seed": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kernel = "gaussian"
    back = pickle.loads(pickle.dumps(spec))
    for f in dataclasses.fields(FitSpec):
        np.testing.assert_equal(getattr(back, f.name), getattr(spec, f.name))


def test_spec_does_not_share_the_users_neighbor_options():
    options = {"truncate": 2.0}
    spec = _spec(neighbor_options=options)
    options["truncate"] = 9.0
    assert spec.neighbor_options["truncate"] == 2.0


@pytest.mark.parametrize("params", [{"seeds": [[0.0, 0.0]]}, {"bin_seeding": True}])
def test_spec_rejects_blurring_with_seeds(params):
    with pytest.raises(ValueError, match="algorithm='blurring' moves the data themselves"):
        _spec(algorithm="blurring", **params)


def test_spec_rejects_unknown_neighbor_options():
    with pytest.raises(ValueError, match="unknown neighbor_options"):
        _spec(neighbor_options={"tables": 4})


def test_dask_estimator_resolves_the_same_spec():
    dask_estimator = pytest.importorskip("meanshift_gpu.dask")
    params = dict(bandwidth=2.0, kernel="epanechnikov", tol=1e-2, max_iter=50, cluster_all=False,
                  neighbors="dense", neighbor_options={"max_pairs": 1000}, batch_size=32)
    single = FitSpec.from_estimator(MeanShift(**params))
    distributed = FitSpec.from_estimator(dask_estimator.MeanShift(**params, n_partitions=3))
    for f in dataclasses.fields(FitSpec):
        assert getattr(single, f.name) == getattr(distributed, f.name), f.name


# --------------------------------------------------------------------------- engine config
def test_engine_config_from_spec():
    spec = _spec(kernel="epanechnikov", tol=0.01, max_iter=9, backend="torch", batch_size=32, verbose=True)
    config = engine_config(spec, torch.device("cpu"), torch.float64)
    assert (config.kernel, config.tol, config.max_iter, config.verbose) == ("epanechnikov", 0.01, 9, True)
    assert config.backend.name == "torch"
    assert config.blocks.seeds == 32
    # Dask workers stay quiet whatever the spec says.
    assert engine_config(spec, torch.device("cpu"), torch.float64, verbose=False).verbose is False


# -------------------------------------------------------------------------- bandwidth
def _resolve(X, spec, weights=None, **kwargs):
    data = torch.as_tensor(X)
    return resolve_bandwidth(spec, X, data, weights, **kwargs)


@pytest.mark.parametrize("requested", [None, "sklearn"])
def test_scikit_learn_estimate(X, requested):
    value = _resolve(X, _spec(bandwidth=requested, bandwidth_quantile=0.25))
    assert value == pytest.approx(float(estimate_bandwidth(X, quantile=0.25)), rel=1e-12)


def test_values_and_feature_groups(X):
    assert _resolve(X, _spec(bandwidth=1.5)) == 1.5
    np.testing.assert_array_equal(_resolve(X, _spec(bandwidth=[1.0, 2.0])), [1.0, 2.0])
    groups = {0: 1.0, 1: 3.0}
    np.testing.assert_array_equal(_resolve(X, _spec(bandwidth=groups)), feature_bandwidths(groups, 2))
    with pytest.raises(ValueError, match="entries but X has 2 features"):
        _resolve(X, _spec(bandwidth=[1.0, 2.0, 3.0]))


def test_unknown_rule_is_named():
    spec = dataclasses.replace(_spec(), bandwidth="median")
    with pytest.raises(ValueError, match="unknown bandwidth rule 'median'"):
        _resolve(np.zeros((3, 2)), spec)


@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_rules_of_thumb_are_rescaled_from_a_sample_to_the_full_data(X, rule):
    spec = _spec(bandwidth=rule)
    on_sample = np.asarray(_resolve(X, spec))
    np.testing.assert_allclose(on_sample, rule_of_thumb(torch.as_tensor(X), None, rule, "flat"))
    # Scott's and Silverman's rules shrink as n ** (-1 / (d + 4)).
    full = 100.0 * X.shape[0]
    expected = on_sample * (X.shape[0] / full) ** (1.0 / (X.shape[1] + 4))
    np.testing.assert_allclose(_resolve(X, spec, full_effective_size=full), expected, rtol=1e-12)
    # A sample at least as large as the data (by effective size) is not rescaled.
    np.testing.assert_array_equal(_resolve(X, spec, full_effective_size=X.shape[0]), on_sample)


def test_the_sample_size_is_its_effective_size(X):
    spec = _spec(bandwidth="scott")
    weights = torch.ones(X.shape[0], dtype=torch.float64)
    weights[: X.shape[0] // 2] = 3.0  # Kish: (sum w)^2 / sum w^2 = 0.8 n
    n_eff = float(weights.sum() ** 2 / (weights**2).sum())
    on_sample = np.asarray(_resolve(X, spec, weights))
    np.testing.assert_allclose(
        _resolve(X, spec, weights, full_effective_size=2 * n_eff), on_sample * 0.5 ** (1 / 6), rtol=1e-12
    )


def test_neighbour_rules_do_not_depend_on_the_full_size(X):
    spec = _spec(bandwidth="knn")
    assert _resolve(X, spec, full_effective_size=1e9) == _resolve(X, spec)


def test_single_machine_fit_uses_the_shared_resolution(X):
    for requested in (None, "scott", {0: 1.0, 1: 2.0}):
        model = MeanShift(bandwidth=requested, device="cpu").fit(X)
        np.testing.assert_allclose(model.bandwidth_, _resolve(X, FitSpec.from_estimator(model)), rtol=0)


# ------------------------------------------------------------------ offset, scale, edge
def test_median_offset_ignores_a_far_outlier():
    data = torch.tensor([[1.0, 10.0], [2.0, 11.0], [3.0, 12.0], [4.0, 13.0], [1e300, -1e300]], dtype=torch.float64)
    assert median_offset(data).tolist() == [3.0, 11.0]


def test_bandwidth_scale_broadcasts_and_rounds_once():
    assert bandwidth_scale(0.1, 3, torch.float32).tolist() == [np.float32(0.1)] * 3
    per_feature = bandwidth_scale(np.array([1.0, 2.5]), 2, torch.float64)
    assert per_feature.dtype == torch.float64 and per_feature.tolist() == [1.0, 2.5]


def test_flat_edge_allows_for_the_largest_of_points_and_seeds():
    points = torch.tensor([[0.0, 1.0], [2.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    far_seeds = torch.tensor([[400.0, 0.0], [-300.0, 0.0]], dtype=torch.float64)
    assert flat_edge_of(points) == flat_edge_for(torch.float64, 2, typical_extent(points))
    assert flat_edge_of(points, far_seeds) == flat_edge_for(torch.float64, 2, typical_extent(far_seeds))
    assert flat_edge_of(points, far_seeds[:0]) == flat_edge_of(points)
    assert 1.0 < flat_edge_of(points) < flat_edge_of(points, far_seeds) < 1.0 + 1e-10
    assert not math.isclose(flat_edge_of(points.float()), flat_edge_of(points), rel_tol=1e-9)


# ------------------------------------------------------------------------- dask plan
def test_dask_plan_carries_the_spec_and_only_the_geometry():
    pytest.importorskip("distributed")
    from meanshift_gpu.dask.engine import Plan

    names = [f.name for f in dataclasses.fields(Plan)]
    assert names == ["spec", "offset", "scale", "dtype", "axis", "bounds", "halo", "flat_edge"]
    plan = Plan(spec=_spec(bandwidth=1.0, cluster_all=False), offset=np.zeros(2), scale=np.ones(2),
                dtype="float64", axis=0, bounds=np.array([0.0]), halo=1.0)
    labelling = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, cluster_all=True))
    assert labelling.spec.cluster_all and not plan.spec.cluster_all
    assert pickle.loads(pickle.dumps(plan)).spec.neighbor_options == plan.spec.neighbor_options


def test_dask_sample_is_the_documented_uniform_sample():
    pytest.importorskip("distributed")
    from meanshift_gpu.dask import _sample_indices

    assert _sample_indices(10, 10, 0) is None
    expected = np.sort(np.random.default_rng(5).choice(1000, 30, replace=False))
    np.testing.assert_array_equal(_sample_indices(1000, 30, 5), expected)
