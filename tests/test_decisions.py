"""Every automatic choice is made in meanshift_gpu._decisions and shows in fit_info_ with its reason.

The fits here run on the CPU (``device="cpu"`` or "auto" where "auto" itself
is tested); the choices that only a GPU reaches (Triton, fused ascent) are
checked by calling the decision functions with a CUDA device object, which
needs no GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from meanshift_gpu import MeanShift, _decisions
from meanshift_gpu._decisions import Decision, DecisionLog, recording
from meanshift_gpu._neighbors import DEFAULT_OPTIONS

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it
# The choices every standard fit records (the fused ascent's "step" is None).
RECORDED = ("device", "dtype", "backend", "tiles", "flat_edge", "threads", "neighbors", "kernels", "ascent",
            "step", "merge", "labels")


def _blobs(n=600, d=2, seed=0):
    X, _ = make_blobs(n, n_features=d, centers=4, cluster_std=0.6, random_state=seed)
    return X


def test_every_choice_of_a_fit_is_recorded_with_a_reason():
    model = MeanShift(bandwidth=1.0, device="cpu").fit(_blobs())
    info = model.fit_info_
    assert set(RECORDED) <= set(info)
    assert set(info["reasons"]) == set(info) - {"reasons"}
    assert all(isinstance(r, str) and r for r in info["reasons"].values())
    assert info["device"] == "cpu" and info["reasons"]["device"] == "asked for"
    assert info["neighbors"] == model.neighbors_


def test_auto_device_says_why():
    model = MeanShift(bandwidth=1.0).fit(_blobs(200))
    expected = "auto: a CUDA device is available" if torch.cuda.is_available() else "auto: no CUDA device"
    assert model.fit_info_["reasons"]["device"] == expected


@pytest.mark.parametrize("dtype, computed, why", [
    (np.float32, "float32", "the input's dtype"),
    (np.int32, "float64", "holds it exactly"),
])
def test_dtype_decision(dtype, computed, why):
    X = np.round(_blobs(200) * 4).astype(dtype)
    info = MeanShift(bandwidth=4.0, device="cpu").fit(X).fit_info_
    assert info["dtype"] == computed and why in info["reasons"]["dtype"]


def test_auto_backend_names_what_it_skipped():
    decision = _decisions.decide_backend("auto", CPU)
    assert decision.value == "torch" and decision.automatic
    assert "triton" in decision.reason  # passed over on the CPU, and the reason says so
    assert _decisions.decide_backend("torch", CPU).reason == "asked for"
    with pytest.raises(ValueError, match="unknown backend 'numba'"):
        _decisions.decide_backend("numba", CPU)


def test_triton_fallbacks_are_decisions_not_silence():
    # The dispatch in the Triton backend asks these same predicates.
    assert not _decisions.triton_step_takes(torch.float64)
    assert _decisions.triton_step_takes(torch.float32)
    assert not _decisions.triton_blocked_takes(torch.float32, "gaussian", 3.0)
    assert _decisions.triton_blocked_takes(torch.float32, "flat", None)
    assert _decisions.decide_step_kernels("triton", torch.float64, "flat", "dense").value == "torch"
    gaussian = _decisions.decide_step_kernels("triton", torch.float32, "gaussian", "grid")
    assert "torch" in gaussian.value and "truncation" in gaussian.reason
    assert _decisions.decide_step_kernels("triton", torch.float32, "flat", "grid").value == "triton"


def test_neighbor_size_table_reasons():
    big = dict(n_seeds=10**6, n_points=10**6, device=CPU)
    assert "pairs <=" in _decisions.decide_neighbors("auto", n_seeds=100, n_points=100, n_features=2,
                                                     device=CPU).reason
    assert _decisions.decide_neighbors("auto", n_features=3, **big).value == "grid"
    wide = _decisions.decide_neighbors("auto", n_features=32, **big)
    assert wide.value == "dense" and "ask for them" in wide.reason
    adaptive = _decisions.decide_neighbors("auto", n_features=3, per_point_bandwidths=True, **big)
    assert adaptive.value == "dense" and "per-point" in adaptive.reason
    with pytest.raises(ValueError, match="adaptive.*cannot prune"):
        _decisions.decide_neighbors("lsh", n_features=3, per_point_bandwidths=True, **big)
    named = _decisions.decide_neighbors("lsh", n_features=3, **big)
    assert (named.value, named.automatic) == ("lsh", False)


def test_grid_step_decision_matches_what_runs():
    X = _blobs(3000)
    compiled = MeanShift(bandwidth=0.5, neighbors="grid", device="cpu").fit(X).fit_info_
    torch_rows = MeanShift(bandwidth=0.5, neighbors="grid", device="cpu",
                           neighbor_options={"compiled": False, "row_sums": True}).fit(X).fit_info_
    batched = MeanShift(bandwidth=0.5, neighbors="grid", device="cpu",
                        neighbor_options={"row_sums": False}).fit(X).fit_info_
    if _decisions.compiled_unavailable(CPU) is None:
        assert compiled["step"].startswith("grid: row prefix sums, compiled C loop")
    assert torch_rows["step"].startswith("grid: row prefix sums, torch")
    assert "asked for" in torch_rows["reasons"]["step"]
    assert batched["step"].startswith("grid: cells of one reach")
    assert batched["reasons"]["step"] == "row sums turned off"


def test_fused_ascent_decision_without_a_gpu():
    options = dict(DEFAULT_OPTIONS)
    assert _decisions.decide_ascent("torch", "dense", options, 2).value == "host loop"
    assert _decisions.decide_ascent("triton", "dense", options, 2).value == "fused (dense)"
    ranges = _decisions.decide_ascent("triton", "grid", options, 3)
    assert ranges.value == "fused (grid ranges)" and ranges.choice == _decisions.RANGES_CELLS_PER_REACH[3]
    lsh = _decisions.decide_ascent("triton", "lsh", options, 3)
    assert lsh.value == "host loop" and "candidate lists" in lsh.reason
    asked = _decisions.decide_ascent("triton", "grid", {**options, "row_sums": True}, 2)
    assert asked.value == "host loop" and "row sums" in asked.reason


def test_tiles_follow_batch_size_and_say_so():
    auto = _decisions.decide_tiles(CPU, "auto", torch.float64)
    fixed = _decisions.decide_tiles(CPU, 7, torch.float64)
    assert auto.automatic and not fixed.automatic
    assert fixed.choice.seeds == 7 and "batch_size=7" in fixed.reason
    info = MeanShift(bandwidth=1.0, batch_size=32, device="cpu").fit(_blobs(300)).fit_info_
    assert info["tiles"].startswith("32 seeds x")


def test_merge_and_labels_decisions_change_nothing_but_the_method(monkeypatch, assert_same_clustering):
    if _decisions.compiled_unavailable(CPU) is not None:
        pytest.skip("the C extension is not built")
    X = np.random.default_rng(0).uniform(0, 20, size=(3000, 2))
    monkeypatch.setattr(_decisions, "MERGE_GRID_MIN", 1)
    monkeypatch.setattr(_decisions, "LABEL_GRID_MIN_CENTERS", 1)
    small = MeanShift(bandwidth=0.5, device="cpu").fit(X)
    monkeypatch.setattr(_decisions, "MERGE_GRID_MIN", 10**9)
    monkeypatch.setattr(_decisions, "LABEL_GRID_MIN_CENTERS", 10**9)
    blockwise = MeanShift(bandwidth=0.5, device="cpu").fit(X)
    assert small.fit_info_["merge"] == "hash grid (C)" and small.fit_info_["labels"].startswith("hash grid")
    assert blockwise.fit_info_["merge"] == "blockwise" and "candidates <" in blockwise.fit_info_["reasons"]["merge"]
    assert blockwise.fit_info_["labels"] == "nearest-center search"
    assert_same_clustering(small.cluster_centers_, small.labels_, blockwise.cluster_centers_, blockwise.labels_,
                           atol=1e-12, rtol=1e-12)


def test_bandwidth_rules_do_not_leak_their_inner_fits_into_the_log():
    # "auto" runs inner mean-shift fits on a subsample: their tiles and merges are not this fit's.
    X = _blobs(800).astype(np.float64)
    info = MeanShift(bandwidth="auto", batch_size=64, device="cpu").fit(X).fit_info_
    assert info["tiles"].startswith("64 seeds x")
    assert info["dtype"] == "float64"


def test_verbose_prints_every_decision(capsys):
    MeanShift(bandwidth=1.0, device="cpu", verbose=True).fit(_blobs(300))
    out = capsys.readouterr().out
    for name in RECORDED:
        assert f"[meanshift_gpu] {name}: " in out


def test_decisions_outside_a_fit_are_not_recorded_and_logs_nest():
    outer, inner = DecisionLog(), DecisionLog()
    with recording(outer):
        _decisions.decide_dtype(torch.float32)
        with recording(inner):
            _decisions.decide_dtype(torch.int8)
        with _decisions.paused():
            _decisions.decide_threads(CPU)
    _decisions.decide_tiles(CPU, "auto", torch.float32)
    assert outer.values() == {"dtype": "float32"}
    assert inner.values() == {"dtype": "float64"}
    assert str(Decision("x", 1, "because")) == "x: 1 (because)"


def test_zero_bandwidth_fit_records_its_shortcut():
    X = np.zeros((20, 2))
    X[10:] = 5.0
    model = MeanShift(device="cpu").fit(X)  # sklearn's estimate on duplicated points is 0
    assert model.fit_info_["ascent"] is None and model.fit_info_["neighbors"] is None
    assert "bandwidth 0" in model.fit_info_["reasons"]["ascent"]



@pytest.mark.parametrize("bandwidth, automatic, why", [
    (None, True, "scikit-learn's estimate_bandwidth, quantile 0.3"),
    ("scott", True, "rule 'scott'"),
    (1.5, False, "asked for"),
    ({0: 1.0, 1: 2.0}, False, "per feature group, asked for"),
])
def test_bandwidth_decision(bandwidth, automatic, why):
    info = MeanShift(bandwidth=bandwidth, device="cpu").fit(_blobs(300)).fit_info_
    assert info["reasons"]["bandwidth"] == why
    if bandwidth == 1.5:
        assert info["bandwidth"] == "1.5"


def test_auto_rule_fallback_is_recorded_through_the_pause(monkeypatch):
    import types

    from meanshift_gpu._bandwidth import rules

    # A stability path that finds no usable bandwidth (as on degenerate data).
    monkeypatch.setattr(rules, "bandwidth_path", lambda *a, **k: types.SimpleNamespace(bandwidth=float("nan")))
    info = MeanShift(bandwidth="auto", device="cpu").fit(_blobs(300)).fit_info_
    assert info["bandwidth_rule"] == "knn" and "k-th neighbour" in info["reasons"]["bandwidth_rule"]
    with recording(DecisionLog()) as log, _decisions.paused():
        _decisions.record("bandwidth_rule", "knn", "test", through_pause=True)
        _decisions.record("merge", "blockwise", "an inner fit's")
    assert log.values() == {"bandwidth_rule": "knn"}


def test_the_fused_ascent_records_its_own_kernels_and_tile():
    decision = _decisions.decide_step_kernels("triton", torch.float64, "gaussian", "grid", fused=True)
    assert decision.value.startswith("triton fused ascent") and "search in torch" in decision.value


def test_faiss_index_is_a_decision():
    pytest.importorskip("faiss")
    info = MeanShift(bandwidth=1.0, neighbors="faiss", device="cpu").fit(_blobs(300)).fit_info_
    assert info["faiss_index"] == "flat" and info["reasons"]["faiss_index"].startswith("auto: 300 points <")
    ivf = _decisions.decide_faiss_index({**DEFAULT_OPTIONS, "index": "ivf"}, 10_000)
    kind, nlist, nprobe = ivf.choice
    assert kind == "ivf" and 1 <= nprobe <= nlist and not ivf.automatic


def test_fit_info_is_plain_data():
    import json
    import pickle

    model = MeanShift(bandwidth=1.0, device="cpu").fit(_blobs(300))
    json.dumps(model.fit_info_)
    assert pickle.loads(pickle.dumps(model)).fit_info_ == model.fit_info_
