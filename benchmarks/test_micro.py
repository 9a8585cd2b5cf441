"""pytest-benchmark micro-benchmarks: the step kernel, the pruning stage, the mode merge.

Run from the repository root (they are outside ``testpaths``, so the default
``pytest`` run does not collect them)::

    python -m pytest benchmarks/ --benchmark-only
    python -m pytest benchmarks/ --benchmark-only -k grid --benchmark-columns=median,iqr

Each benchmark also checks what it computed (a step must move seeds to a
finite place; a pruned step must agree with the dense one where it is exact),
so a broken kernel cannot post a fast time.  All work is in scaled
coordinates (bandwidth 1), as inside the engine.
"""

from __future__ import annotations

import os

import pytest
import torch

from meanshift_gpu import _reference
from meanshift_gpu._decisions import auto_blocks
from meanshift_gpu._engine.ascent import merge_modes

from .cases import make_blobs_data

pytest.importorskip("pytest_benchmark")

CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda") if HAS_CUDA else CPU


def _scaled_blobs(n: int, d: int, device=DEVICE, bandwidth_factor: float = 1.0) -> torch.Tensor:
    """Blobs divided by ``bandwidth_factor`` times the suite's bandwidth and centred:
    the engine's input."""
    from .cases import blob_bandwidth

    X, _ = make_blobs_data(n, d)
    data = torch.from_numpy(X) / (bandwidth_factor * blob_bandwidth(d))
    return (data - data.mean(0)).to(device).contiguous()


def _sync(result):
    if HAS_CUDA:
        torch.cuda.synchronize()
    return result


# ----------------------------------------------------------------------------- step kernel
@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
@pytest.mark.parametrize("n_features", [2, 32])
def test_torch_step(benchmark, kernel, n_features):
    """One dense step of the torch engine, every point a seed (N = 2,000 on CPU, 20,000 on GPU)."""
    n = 20_000 if HAS_CUDA else 2_000
    data = _scaled_blobs(n, n_features)
    blocks = auto_blocks(DEVICE, "auto", data.dtype)
    benchmark.extra_info.update(n=n, d=n_features, device=str(DEVICE))

    def step():
        return _sync(_reference.mean_shift_step(
            data, data, kernel=kernel, seed_block=blocks.seeds, point_block=blocks.points
        ))

    result = benchmark(step)
    assert torch.isfinite(result.positions).all()
    assert torch.isfinite(result.log_density).all()  # every seed's window holds itself


@pytest.mark.skipif(not HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="the Triton step is benchmarked on a CUDA GPU only (the interpreter says nothing about speed)")
@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
@pytest.mark.parametrize("n_features", [2, 32])
def test_triton_step(benchmark, kernel, n_features):
    """One fused Triton step, every point a seed, checked against the torch step."""
    from meanshift_gpu import kernels

    data = _scaled_blobs(100_000, n_features)
    kernels.mean_shift_step(data, data, kernel=kernel)  # autotune outside the timing
    result = benchmark(lambda: _sync(kernels.mean_shift_step(data, data, kernel=kernel)))
    sample = data[:2_000]
    expected = _reference.mean_shift_step(sample, data, kernel=kernel)
    torch.testing.assert_close(result.positions[:2_000], expected.positions, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------- pruning stage
def _pruning():
    try:
        from meanshift_gpu import _neighbors
    except ImportError as exc:  # builds without neighbour pruning
        pytest.skip(f"meanshift_gpu has no _neighbors module: {exc}")
    return _neighbors


# At the suite's bandwidth one window holds a whole blob (a sixth of the data), and
# LSH's candidate lists (16 tables x bucket) then need tens of GB at 20,000 points.
# A quarter of it keeps windows small, where pruning is meant to pay.
PRUNING_BANDWIDTH_FACTOR = 0.25


def _dense_step(seeds, data, weights, kernel, blocks):
    return _reference.mean_shift_step(
        seeds, data, weights, kernel=kernel, seed_block=blocks.seeds, point_block=blocks.points
    )


@pytest.mark.parametrize("method", ["grid", "lsh", "faiss"])
def test_pruner_build(benchmark, method):
    """Building the neighbour index over 100,000 2-D points (bandwidth a quarter of the suite's)."""
    neighbors = _pruning()
    if method == "faiss" and neighbors.faiss_unavailable() is not None:
        pytest.skip(neighbors.faiss_unavailable())
    data = _scaled_blobs(100_000, 2, CPU, PRUNING_BANDWIDTH_FACTOR)
    options = neighbors.check_neighbor_options(None)
    pruner = benchmark(lambda: neighbors.build_neighbor_method(
        method, data, None, kernel="flat", options=options, dense_step=_dense_step
    ))
    assert pruner.method == method


@pytest.mark.parametrize("method", ["grid", "lsh", "faiss"])
def test_pruned_step(benchmark, method):
    """One pruned flat step for 10,000 seeds over 10,000 2-D points, bandwidth a quarter
    of the suite's (index built outside)."""
    neighbors = _pruning()
    if method == "faiss" and neighbors.faiss_unavailable() is not None:
        pytest.skip(neighbors.faiss_unavailable())
    data = _scaled_blobs(10_000, 2, CPU, PRUNING_BANDWIDTH_FACTOR)
    options = neighbors.check_neighbor_options(None)
    pruner = neighbors.build_neighbor_method(method, data, None, kernel="flat", options=options, dense_step=_dense_step)
    blocks = auto_blocks(CPU, "auto", data.dtype)
    result = benchmark(lambda: pruner.step(data, "flat", blocks))
    # Grid and the exact faiss index read every in-window point: same step as dense.
    # LSH may miss some: its seeds still land inside the data's range.
    sample = data[:500]
    dense = _reference.mean_shift_step(sample, data, kernel="flat")
    if method in ("grid", "faiss"):
        torch.testing.assert_close(result.positions[:500], dense.positions, atol=1e-4, rtol=1e-4)
    else:
        assert torch.isfinite(result.positions).all()
        assert (result.positions.amin(0) >= data.amin(0) - 1e-4).all()


# ----------------------------------------------------------------------------- mode merge
def test_merge_modes(benchmark):
    """Merging 20,000 converged seeds (6 true modes plus jitter) into modes."""
    gen = torch.Generator().manual_seed(0)
    modes = torch.randn(6, 2, generator=gen) * 10
    positions = modes[torch.arange(20_000) % 6] + 1e-3 * torch.randn(20_000, 2, generator=gen)
    density = torch.rand(20_000, generator=gen)
    kept = benchmark(lambda: merge_modes(positions, density))
    assert kept.shape[0] == 6
