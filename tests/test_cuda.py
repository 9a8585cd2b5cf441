"""GPU-only checks: what only a CUDA device can show.

- fitted attributes after a fit on CUDA (numpy or CUDA-tensor input, float32
  and float64): host numpy arrays of the documented dtypes, nothing left on
  the GPU, ``predict`` on CUDA tensors, and the same clustering as the CPU;
- torch in, torch out: ``mean_shift`` on a CUDA tensor returns tensors on
  that tensor's device;
- out-of-memory on the real caching allocator (a per-process memory cap, in
  a fresh process): the tiles shrink, the fit completes with the uncapped
  result and says so;
- parity on CUDA at the compute dtype's tolerance: float64 against
  scikit-learn at 1e-9, float32 against the CPU's float32 fit, for the
  "torch" and "triton" backends.

Every test carries the ``cuda`` marker: where ``torch.cuda.is_available()``
is False it is skipped with that reason (``conftest.py``).  The "triton"
cases need Triton compiled for the GPU; the kernel test modules set
``TRITON_INTERPRET=1`` when they are collected, so in the full default run
these cases skip and say why: run ``TRITON_INTERPRET=0 pytest -m cuda`` (or
this file alone) to include them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn.cluster
import torch
from sklearn.datasets import make_blobs

from meanshift_gpu import MeanShift, estimate_bandwidth, mean_shift
from meanshift_gpu._engine.backends import resolve_backend

pytestmark = pytest.mark.cuda

BACKENDS = ["torch", "triton"]
DTYPES = [np.float32, np.float64]
# Same data as test_sklearn_parity's float32 cases: (n_features, blobs, spread, seed).
# 2 features take the exact-difference distances, 5 the matmul expansion.
PARITY_DATA = {2: (4, 1.2, 2), 5: (3, 1.5, 5)}


def _dtype_id(dtype) -> str:
    return np.dtype(dtype).name


def _cuda_backend(name: str) -> str:
    """``name`` when it can run on CUDA in this session, else skip with the reason."""
    if name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip(
            "TRITON_INTERPRET=1 in this session (the kernel test modules set it when collected): "
            "Triton runs interpreted on CPU tensors only; run TRITON_INTERPRET=0 pytest -m cuda"
        )
    try:
        resolve_backend(name, torch.device("cuda"))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if name == "triton":
        from meanshift_gpu.kernels import _common

        problem = _common.triton_mode_error()
        if problem is not None:
            pytest.skip(problem)
    return name


def _parity_data(n_features: int, dtype) -> tuple[np.ndarray, float]:
    n_centers, spread, seed = PARITY_DATA[n_features]
    X, _ = make_blobs(300, n_features=n_features, centers=n_centers, cluster_std=spread,
                      center_box=(-10.0, 10.0), random_state=seed)
    X = X.astype(dtype)
    return X, float(sklearn.cluster.estimate_bandwidth(X, quantile=0.1))


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(400, n_features=3, centers=4, cluster_std=1.0, center_box=(-10.0, 10.0), random_state=1)
    return X


# ------------------------------------------------------------------ fitted attributes
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_fitted_attributes_are_host_arrays_matching_the_cpu_fit(blobs, dtype, kind, assert_same_clustering,
                                                                 match_centers, tolerance):
    X = blobs.astype(dtype)
    data = torch.from_numpy(X).to("cuda") if kind == "tensor" else X
    model = MeanShift(bandwidth=2.0, device="cuda").fit(data)

    assert isinstance(model.cluster_centers_, np.ndarray) and model.cluster_centers_.dtype == dtype
    assert model.cluster_centers_.ndim == 2 and model.cluster_centers_.shape[1] == X.shape[1]
    assert isinstance(model.labels_, np.ndarray) and model.labels_.dtype == np.int64
    assert model.labels_.shape == (len(X),)
    assert isinstance(model.cluster_sizes_, np.ndarray) and model.cluster_sizes_.dtype.kind == "i"
    np.testing.assert_array_equal(model.cluster_sizes_, np.bincount(model.labels_, minlength=len(model.cluster_centers_)))
    assert type(model.n_iter_) is int and 0 < model.n_iter_ <= model.max_iter
    assert isinstance(model.bandwidth_, float) and model.bandwidth_ == 2.0
    assert isinstance(model.neighbors_, str) and model.neighbors_ != "auto"
    assert model.n_features_in_ == X.shape[1]
    # Nothing stays on the GPU: a CUDA tensor attribute would pin device
    # memory and make the pickled model unloadable without a GPU.
    on_device = [name for name, value in vars(model).items() if isinstance(value, torch.Tensor)]
    assert not on_device, f"tensor attributes after fit: {on_device}"

    for new in (torch.from_numpy(X[:50]).to("cuda"), X[:50]):
        predicted = model.predict(new)
        assert isinstance(predicted, np.ndarray) and predicted.dtype == np.int64
        np.testing.assert_array_equal(predicted, model.labels_[:50])

    cpu = MeanShift(bandwidth=2.0, device="cpu").fit(X)
    assert_same_clustering(cpu.cluster_centers_, cpu.labels_, model.cluster_centers_, model.labels_,
                           **tolerance(dtype, np.abs(X).max()))
    assert model.n_iter_ == cpu.n_iter_
    match = match_centers(cpu.cluster_centers_, model.cluster_centers_)
    np.testing.assert_array_equal(model.cluster_sizes_[match], cpu.cluster_sizes_)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_auto_follows_a_cuda_tensor_and_an_explicit_device_wins(blobs, dtype):
    tensor = torch.from_numpy(blobs.astype(dtype)).to("cuda:0")
    auto = MeanShift(bandwidth=2.0).fit(tensor)
    on_gpu = MeanShift(bandwidth=2.0, device=torch.device("cuda", 0)).fit(tensor)
    np.testing.assert_array_equal(auto.cluster_centers_, on_gpu.cluster_centers_)
    np.testing.assert_array_equal(auto.labels_, on_gpu.labels_)
    # device="cpu" moves a CUDA tensor to the CPU: the CPU's result exactly.
    on_cpu = MeanShift(bandwidth=2.0, device="cpu").fit(tensor)
    cpu = MeanShift(bandwidth=2.0, device="cpu").fit(blobs.astype(dtype))
    np.testing.assert_array_equal(on_cpu.cluster_centers_, cpu.cluster_centers_)
    np.testing.assert_array_equal(on_cpu.labels_, cpu.labels_)


# ------------------------------------------------------------------ torch in, torch out
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_mean_shift_returns_tensors_on_the_inputs_cuda_device(blobs, dtype):
    X = torch.from_numpy(blobs).to(device="cuda:0", dtype=dtype)
    model = MeanShift(bandwidth=2.0, device="cuda").fit(X)
    for device in ("auto", "cuda", "cpu"):  # whichever device computes, X's device gets the result
        centers, labels = mean_shift(X, bandwidth=2.0, device=device)
        assert isinstance(centers, torch.Tensor) and isinstance(labels, torch.Tensor)
        assert centers.device == X.device and labels.device == X.device, device
        assert centers.dtype == dtype and labels.dtype == torch.int64
        if device != "cpu":
            np.testing.assert_array_equal(centers.cpu().numpy(), model.cluster_centers_)
            np.testing.assert_array_equal(labels.cpu().numpy(), model.labels_)


# ------------------------------------------------------------------ out of memory
_CAP_BYTES = 256 << 20

# Runs in a fresh process: the cap is set before the first CUDA allocation, so
# it is exact.  In the test process, blocks cached by earlier tests (a split
# segment that empty_cache() cannot return, e.g. around cuBLAS's workspace)
# would count against the cap or widen it, depending on history.
_CAPPED_SCRIPT = """
import contextlib, dataclasses, io, json, sys
import numpy as np, torch
from sklearn.datasets import make_blobs

cap, out = int(sys.argv[1]), sys.argv[2]
torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
from meanshift_gpu import MeanShift
from meanshift_gpu._engine import ascent as _engine
from meanshift_gpu._decisions import auto_blocks
from meanshift_gpu._engine.backends import Blocks, resolve_backend

cuda = torch.device("cuda")
X, _ = make_blobs(12000, n_features=2, centers=3, cluster_std=1.0, center_box=(-10.0, 10.0), random_state=3)
params = dict(bandwidth=1.0, device="cuda", backend="torch", neighbors="dense")
data = torch.from_numpy(X).to(cuda)
engine = _engine.EngineConfig(resolve_backend("torch", cuda), "flat", Blocks(4096, 32768), 1e-3, 300, verbose=True)
fit_log, engine_log = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(fit_log):
    capped = MeanShift(verbose=True, **params).fit(X)
with contextlib.redirect_stdout(engine_log):
    capped_ascent = _engine.ascend_seeds(data, data, None, engine)
capped_peak = torch.cuda.max_memory_reserved()
torch.cuda.set_per_process_memory_fraction(1.0)
plain = MeanShift(**params).fit(X)
plain_ascent = _engine.ascend_seeds(data, data, None, dataclasses.replace(engine, verbose=False))
auto = auto_blocks(cuda, "auto", torch.float64)
np.savez(out + "/arrays.npz", X=X,
         capped_centers=capped.cluster_centers_, capped_labels=capped.labels_,
         plain_centers=plain.cluster_centers_, plain_labels=plain.labels_,
         capped_positions=capped_ascent.positions.cpu().numpy(), capped_steps=capped_ascent.n_iter.cpu().numpy(),
         plain_positions=plain_ascent.positions.cpu().numpy(), plain_steps=plain_ascent.n_iter.cpu().numpy())
json.dump({"fit_log": fit_log.getvalue(), "engine_log": engine_log.getvalue(), "auto_tile": [auto.seeds, auto.points],
           "capped_n_iter": capped.n_iter_, "plain_n_iter": plain.n_iter_, "capped_peak": capped_peak},
          open(out + "/run.json", "w"))
"""


@pytest.fixture(scope="module")
def capped_run(tmp_path_factory):
    """The capped and uncapped fits (and engine ascents) of ``_CAPPED_SCRIPT``."""
    out = tmp_path_factory.mktemp("capped")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _CAPPED_SCRIPT, str(_CAP_BYTES), str(out)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "run.json").read_text()), dict(np.load(out / "arrays.npz"))


def test_fit_under_a_memory_cap_shrinks_its_tiles_and_matches_the_uncapped_fit(capped_run, assert_same_clustering,
                                                                               tolerance):
    run, arrays = capped_run
    # The auto tile is sized from the free memory the driver reports (the cap
    # does not change it): its float64 squared distances alone exceed the cap.
    seeds, points = run["auto_tile"]
    assert seeds * min(points, len(arrays["X"])) * 8 > _CAP_BYTES, run["auto_tile"]
    assert "out of memory: retrying with tiles of" in run["fit_log"], run["fit_log"][-2000:]
    assert run["capped_peak"] <= _CAP_BYTES
    assert_same_clustering(arrays["plain_centers"], arrays["plain_labels"], arrays["capped_centers"],
                           arrays["capped_labels"], **tolerance(np.float64, np.abs(arrays["X"]).max()))
    assert run["capped_n_iter"] == run["plain_n_iter"]


def test_engine_ascent_under_a_memory_cap_matches_the_uncapped_one(capped_run, tolerance):
    run, arrays = capped_run
    assert 4096 * len(arrays["X"]) * 8 > _CAP_BYTES  # the first explicit tile does not fit
    assert "out of memory: retrying with tiles of" in run["engine_log"], run["engine_log"][-2000:]
    np.testing.assert_allclose(arrays["capped_positions"], arrays["plain_positions"],
                               **tolerance(np.float64, np.abs(arrays["X"]).max()))
    np.testing.assert_array_equal(arrays["capped_steps"], arrays["plain_steps"])


# ------------------------------------------------------------------ parity at the compute dtype
@pytest.mark.parametrize("options", [{}, {"bin_seeding": True, "cluster_all": False}], ids=["default", "bins-orphans"])
@pytest.mark.parametrize("n_features", sorted(PARITY_DATA))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_on_cuda_matches_sklearn_to_float64_rounding(backend, n_features, options, assert_same_clustering,
                                                            tolerance):
    X, bandwidth = _parity_data(n_features, np.float64)
    expected = sklearn.cluster.MeanShift(bandwidth=bandwidth, **options).fit(X)
    got = MeanShift(bandwidth=bandwidth, device="cuda", backend=_cuda_backend(backend), **options).fit(X)
    assert got.cluster_centers_.dtype == np.float64
    # 1e-9 relative: a float32 step anywhere in the path (~1e-7) fails it.
    assert_same_clustering(expected.cluster_centers_, expected.labels_, got.cluster_centers_, got.labels_,
                           **tolerance(np.float64, np.abs(X).max()))
    assert got.n_iter_ == expected.n_iter_


@pytest.mark.parametrize("n_features", sorted(PARITY_DATA))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_bandwidth_estimate_on_cuda_matches_sklearn(backend, n_features, tolerance):
    X, _ = _parity_data(n_features, np.float64)
    expected = sklearn.cluster.estimate_bandwidth(X, quantile=0.3)
    got = estimate_bandwidth(X, quantile=0.3, device="cuda", backend=_cuda_backend(backend))
    assert got.dtype == np.float64
    assert float(got) == pytest.approx(expected, rel=tolerance(np.float64)["rtol"])


@pytest.mark.parametrize("options", [{}, {"bin_seeding": True, "cluster_all": False}], ids=["default", "bins-orphans"])
@pytest.mark.parametrize("n_features", sorted(PARITY_DATA))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_on_cuda_matches_the_cpu_float32_fit(backend, n_features, options, assert_same_clustering, tolerance):
    X, bandwidth = _parity_data(n_features, np.float32)
    cpu = MeanShift(bandwidth=bandwidth, device="cpu", **options).fit(X)
    got = MeanShift(bandwidth=bandwidth, device="cuda", backend=_cuda_backend(backend), **options).fit(X)
    assert got.cluster_centers_.dtype == np.float32
    assert_same_clustering(cpu.cluster_centers_, cpu.labels_, got.cluster_centers_, got.labels_,
                           **tolerance(np.float32, np.abs(X).max()))
    assert got.n_iter_ == cpu.n_iter_


# ------------------------------------------------------------------ CPU-only paths refuse CUDA data
def test_compiled_row_sums_asked_for_on_cuda_data_say_why_not():
    X, _ = make_blobs(500, n_features=2, centers=3, random_state=0)
    with pytest.raises(RuntimeError, match=r"neighbor_options\['compiled'\]=True cannot run"):
        MeanShift(bandwidth=1.0, device="cuda", backend="torch", neighbors="grid",
                  neighbor_options={"compiled": True}).fit(X)
