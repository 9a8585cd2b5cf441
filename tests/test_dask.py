"""meanshift_gpu.dask: the distributed estimator equals the single-machine one.

A ``distributed.LocalCluster`` with two worker processes (one thread each)
runs every fit; results are compared with :class:`meanshift_gpu.MeanShift`
on the same data by matched centers and renamed labels.  Worker-to-worker
traffic is read from the workers' transfer logs.

CPU only: the workers and the single-machine reference run with
``device="cpu"`` (the workers of a GPU cluster would each take their GPU).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import torch  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402

import meanshift_gpu  # noqa: E402
from meanshift_gpu.dask import MeanShift as DaskMeanShift  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # Work stealing would move tasks (and their inputs) between workers at
    # random, which makes the traffic measurements noisy.
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
            silence_logs=40,
        )
        with distributed.Client(cluster) as c:
            yield c
        cluster.close()


def _straddling(n_side=300, n_middle=300, *, middle_seed=1, side_seed=0, dims=2):
    """Blobs along feature 0 at -12, 0, 12; the middle one sits on the median,
    where the two-partition boundary falls, so it straddles the border."""
    side_centers = np.zeros((2, dims))
    side_centers[:, 0] = [-12.0, 12.0]
    sides, _ = make_blobs(2 * n_side, centers=side_centers, cluster_std=1.5, random_state=side_seed)
    if not n_middle:
        return sides
    middle, _ = make_blobs(n_middle, centers=np.zeros((1, dims)), cluster_std=1.5, random_state=middle_seed)
    return np.concatenate([sides, middle])


def _assert_like_single_machine(assert_same_clustering, X, model, **params):
    ref = meanshift_gpu.MeanShift(**params, device="cpu").fit(X, sample_weight=model._test_weights)
    labels = model.labels_.compute() if hasattr(model.labels_, "compute") else model.labels_
    assert_same_clustering(ref.cluster_centers_, ref.labels_, model.cluster_centers_, labels, atol=1e-6, rtol=1e-6)
    assert model.n_iter_ == ref.n_iter_
    np.testing.assert_array_equal(model.cluster_sizes_[_order(ref, model)], ref.cluster_sizes_)
    np.testing.assert_allclose(np.asarray(model.bandwidth_), np.asarray(ref.bandwidth_), rtol=1e-12)
    return ref


def _order(ref, model):
    from scipy.optimize import linear_sum_assignment

    cost = np.linalg.norm(ref.cluster_centers_[:, None] - model.cluster_centers_[None], axis=2)
    _, cols = linear_sum_assignment(cost)
    return cols


def _fit(client, X, sample_weight=None, **params):
    model = DaskMeanShift(client=client, **params, device="cpu")
    model.fit(X, sample_weight=sample_weight)
    model._test_weights = None if sample_weight is None else np.asarray(sample_weight)
    return model


# ----------------------------------------------------------------------------- parity
CASES = {
    "flat-straddling": (lambda: _straddling(), dict(bandwidth=2.0)),
    "bin-seeding": (lambda: _straddling(), dict(bandwidth=2.0, bin_seeding=True, min_bin_freq=3)),
    "estimated-epanechnikov": (lambda: _straddling(200, 200), dict(bandwidth=None, kernel="epanechnikov")),
    "per-feature-3d-3-partitions": (
        lambda: _straddling(200, 200, dims=3) * np.array([1.0, 3.0, 0.5]),
        dict(bandwidth=np.array([2.0, 6.0, 1.0]), n_partitions=3),
    ),
    "orphans": (lambda: np.concatenate([_straddling(150, 150), [[40.0, 40.0], [-40.0, 5.0]]]),
                dict(bandwidth=1.5, cluster_all=False, seeds=None)),
    "five-features-float32": (
        lambda: _straddling(200, 200, dims=5).astype(np.float32), dict(bandwidth=3.0)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_clustering_as_single_machine(client, assert_same_clustering, case):
    make, params = CASES[case]
    X = make()
    model = _fit(client, X, **params)
    single = {k: v for k, v in params.items() if k != "n_partitions"}
    _assert_like_single_machine(assert_same_clustering, X, model, **single)
    stats = model.dask_stats_
    assert stats["n_partitions"] >= 2, stats
    assert sum(stats["core_sizes"]) == X.shape[0]
    assert model.cluster_centers_.dtype == (np.float32 if X.dtype == np.float32 else np.float64)
    # What the workers and the driver chose, with reasons, as on a single machine.
    info = model.fit_info_
    for name in ("device", "backend", "neighbors", "step", "tiles", "partitions", "flat_edge", "merge"):
        assert name in info and info["reasons"][name], name
    assert info["partitions"] == stats["n_partitions"]
    assert set(info["neighbors"].split(" | ")) == set(model.neighbors_.split(","))


def test_straddling_cluster_migrates_seeds_and_matches(client, assert_same_clustering):
    X = _straddling()
    model = _fit(client, X, bandwidth=2.0)
    _assert_like_single_machine(assert_same_clustering, X, model, bandwidth=2.0)
    stats = model.dask_stats_
    border = stats["bounds"][0]
    # The middle cluster really has points on both sides of the border ...
    middle = model.predict([[0.0, 0.0]])[0]
    members = X[model.labels_ == middle]
    assert (members[:, stats["split_axis"]] < border).sum() > 50
    assert (members[:, stats["split_axis"]] >= border).sum() > 50
    # ... so seeds crossed it and were stepped by the other partition.
    assert stats["rounds"] >= 2 and stats["migrated_per_round"][0] > 0
    assert all(h > 0 for h in stats["halo_sizes"])


def test_weighted_and_user_seeds(client, assert_same_clustering):
    X = _straddling(150, 150)
    rng = np.random.default_rng(0)
    w = rng.integers(0, 4, X.shape[0]).astype(float)
    model = _fit(client, X, sample_weight=w, bandwidth=2.0)
    _assert_like_single_machine(assert_same_clustering, X, model, bandwidth=2.0)
    seeds = X[::7]
    model = _fit(client, X, bandwidth=2.0, seeds=seeds)
    _assert_like_single_machine(assert_same_clustering, X, model, bandwidth=2.0, seeds=seeds)


def test_dask_array_input(client, assert_same_clustering):
    X = _straddling(200, 200)
    rng = np.random.default_rng(1)
    X = X[rng.permutation(X.shape[0])]  # chunks not laid out in space
    Xd = da.from_array(X, chunks=(137, 2))
    model = _fit(client, Xd, bandwidth=2.0)
    assert isinstance(model.labels_, da.Array)
    _assert_like_single_machine(assert_same_clustering, X, model, bandwidth=2.0)
    new = rng.normal(scale=10, size=(50, 2))
    np.testing.assert_array_equal(model.predict(da.from_array(new, chunks=20)).compute(), model.predict(new))


def test_gaussian_close_to_single_machine(client, match_centers):
    """The Gaussian is cut at neighbor_options['truncate'] across borders: close, not equal."""
    X = _straddling(200, 200)
    model = _fit(client, X, bandwidth=2.0, kernel="gaussian")
    ref = meanshift_gpu.MeanShift(bandwidth=2.0, kernel="gaussian", device="cpu").fit(X)
    match = match_centers(ref.cluster_centers_, model.cluster_centers_)
    np.testing.assert_allclose(model.cluster_centers_[match], ref.cluster_centers_, atol=0.05 * 2.0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(ref.labels_, model.labels_) > 0.99


def test_bandwidth_estimated_on_a_sample(client):
    X = _straddling(600, 600)
    full = meanshift_gpu.estimate_bandwidth(X, quantile=0.3, device="cpu")
    model = _fit(client, X, bandwidth=None, bandwidth_n_samples=500, bin_seeding=True)
    assert model.bandwidth_ != pytest.approx(float(full), rel=1e-9)  # it really sampled
    assert model.bandwidth_ == pytest.approx(float(full), rel=0.1)
    Xd = da.from_array(X, chunks=400)
    model_d = _fit(client, Xd, bandwidth="scott", bandwidth_n_samples=800, bin_seeding=True)
    ref = meanshift_gpu.MeanShift(bandwidth="scott", bin_seeding=True, device="cpu").fit(X)
    np.testing.assert_allclose(model_d.bandwidth_, ref.bandwidth_, rtol=0.1)


# ---------------------------------------------------------------------------- traffic
def _reset_logs(client):
    client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())


def _incoming(client) -> dict:
    """Bytes received from other workers, by task-name prefix."""

    def collect(dask_worker):
        out = {}
        for entry in dask_worker.transfer_incoming_log:
            for key, nbytes in entry["keys"].items():
                name = str(key).split("-")[1] if str(key).startswith("meanshift-") else "other"
                out[name] = out.get(name, 0) + nbytes
        return out

    total: dict = {}
    for per_worker in client.run(collect).values():
        for k, v in per_worker.items():
            total[k] = total.get(k, 0) + v
    return total


def test_traffic_follows_the_halo_not_n(client):
    """Five times the points, far from the border: the same halo, the same traffic."""
    small = _straddling(150, 300)
    extra = _straddling(1200, 0, side_seed=5)
    large = np.concatenate([small, extra])
    measured = []
    for X in (small, large):
        _reset_logs(client)
        model = _fit(client, X, bandwidth=2.0, bin_seeding=True)
        traffic = _incoming(client)
        measured.append((sum(traffic.values()), model.dask_stats_, traffic))
    (bytes_small, stats_small, t_small), (bytes_large, stats_large, t_large) = measured
    assert stats_large["halo_sizes"] == stats_small["halo_sizes"]
    assert stats_large["data_bytes"] >= 4 * stats_small["data_bytes"]
    # Bounded by what the design says travels: halos and migrating seeds
    # (+ a few kB of pickling and bookkeeping per transfer).
    budget = 2 * (stats_small["halo_bytes"] + stats_small["migrated_bytes"]) + 20_000
    assert 0 < bytes_small <= budget, t_small
    # Not proportional to N: 5x the data, about the same traffic.
    assert bytes_large <= 1.5 * bytes_small + 10_000, (t_small, t_large)
    assert bytes_large < 0.25 * stats_large["data_bytes"], t_large


# ------------------------------------------------------------------------------- API
def test_parameters_superset_of_single_machine():
    single = set(meanshift_gpu.MeanShift().get_params())
    distributed_params = set(DaskMeanShift().get_params())
    assert single <= distributed_params
    assert {"client", "n_partitions", "bandwidth_n_samples", "random_state"} <= distributed_params


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(algorithm="blurring", bandwidth=1.0), "blurring"),
        (dict(bandwidth="adaptive"), "adaptive"),
    ],
)
def test_unsupported_options_raise(client, params, match):
    with pytest.raises(ValueError, match=match):
        DaskMeanShift(client=client, **params, device="cpu").fit(_straddling(20, 20))


def test_needs_a_client(monkeypatch):
    def no_client():
        raise ValueError("No clients found")

    monkeypatch.setattr(distributed, "default_client", no_client)
    with pytest.raises(ValueError, match="client=Client"):
        DaskMeanShift(bandwidth=1.0, device="cpu").fit(_straddling(20, 20))


def test_rejects_nan_in_dask_input(client):
    X = _straddling(20, 20)
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DaskMeanShift(client=client, bandwidth=1.0, device="cpu").fit(da.from_array(X, chunks=10))


# ---------------------------------------------------------------------------- failure
async def _die():
    # A coroutine, because client.run(..., wait=False) only takes those.
    os._exit(1)


def test_worker_lost_mid_fit_gives_the_same_result(client, assert_same_clustering):
    """Kill the worker holding partition 0 after round 0; Dask recomputes what it held."""
    X = _straddling()
    killed = []

    def kill_after_first_round(c, r, partitions):
        if r != 0:
            return
        holder = sorted(c.who_has([partitions[0]])[partitions[0].key])[0]
        c.run(_die, workers=[holder], wait=False)
        deadline = time.monotonic() + 30
        # Wait until the scheduler has dropped it, so the next round really runs without it.
        while holder in c.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        killed.append(holder not in c.scheduler_info()["workers"])

    model = DaskMeanShift(client=client, bandwidth=2.0, device="cpu")
    model._after_round = kill_after_first_round
    model.fit(X)
    model._test_weights = None
    assert killed == [True], "no worker was lost during the fit"
    assert model.dask_stats_["rounds"] >= 2
    _assert_like_single_machine(assert_same_clustering, X, model, bandwidth=2.0)


def test_fitted_estimator_holding_its_client_pickles(client):
    """Device: CPU.  The client (a live connection) is dropped; the fitted model survives whole."""
    import pickle

    X = _straddling(100, 100)
    model = _fit(client, X, bandwidth=2.0)
    assert model.client is client
    copy = pickle.loads(pickle.dumps(model))
    assert copy.client is None and model.client is client  # the original keeps its client
    np.testing.assert_array_equal(copy.cluster_centers_, model.cluster_centers_)
    np.testing.assert_array_equal(copy.predict(X[:50]), model.predict(X[:50]))


@pytest.mark.parametrize("dtype, far", [(np.float32, 1e9), (np.float64, 1e15)])
def test_one_far_outlier_does_not_merge_the_clusters(client, dtype, far):
    """Device: CPU.  Centred on the median, two tight clusters 0.1 apart keep their precision."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal((10.0, 10.0), 0.01, (100, 2)), rng.normal((10.1, 10.0), 0.01, (100, 2)),
                        [[far, far]]]).astype(dtype)
    for data in (X, da.from_array(X, chunks=(67, 2))):
        model = _fit(client, data, bandwidth=0.03)
        labels = model.labels_.compute() if hasattr(model.labels_, "compute") else model.labels_
        assert len(model.cluster_centers_) == 3
        assert len(set(labels[:100])) == 1 and len(set(labels[100:200])) == 1
        assert len({labels[0], labels[150], labels[200]}) == 3


def test_exact_boundaries_like_scikit_learn(client, assert_same_clustering):
    """Device: CPU.  Integer data with many pairs exactly one bandwidth apart (the window includes its edge)."""
    from sklearn.cluster import MeanShift as SkMeanShift

    X = np.random.default_rng(2).integers(0, 40, size=(300, 2)).astype(np.float64)
    model = _fit(client, X, bandwidth=5.0, n_partitions=2)
    theirs = SkMeanShift(bandwidth=5.0).fit(X)
    assert_same_clustering(theirs.cluster_centers_, theirs.labels_, model.cluster_centers_, model.labels_,
                           atol=1e-9, rtol=1e-9)


def test_torch_half_input_computes_as_on_one_machine(client):
    # A float16 tensor computes in float32 on one machine; the Dask fit must not widen it to float64.
    X = torch.as_tensor(make_blobs(400, n_features=2, centers=3, random_state=0)[0]).to(torch.float16)
    model = _fit(client, X, bandwidth=2.0, n_partitions=2)
    assert model.fit_info_["dtype"] == "float32"
    assert model.cluster_centers_.dtype == np.float32
