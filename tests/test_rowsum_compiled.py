"""The compiled row sums (``meanshift_gpu._rowsum_compiled``, numba) against the torch row sums and dense."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from meanshift_gpu import MeanShift, _neighbors, _rowsum
from meanshift_gpu._reference import mean_shift_step
from meanshift_gpu._rowsum import RowSumIndex, compiled_rowsum_step, rowsum_step

pytest.importorskip("numba", reason="the compiled row sums need numba (pip install numba)")


def _data(n_features, dtype, seed=0):
    """Gaussian points plus points on a lattice of step 1/4: many lie exactly on window edges."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.randn(1500, n_features, generator=g, dtype=torch.float64) * 1.5
    lattice = torch.round(torch.randn(400, n_features, generator=g, dtype=torch.float64) * 4) / 4
    data = torch.cat([spread, lattice]).to(dtype)
    seeds = torch.cat([data[:300], lattice[:100].to(dtype), data[-50:] + 0.5])
    return data, seeds


@pytest.mark.parametrize("n_features, cells", [(1, 1), (2, 1), (2, 2), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_equals_the_torch_row_sums_bit_for_bit_and_dense_to_rounding(n_features, cells, dtype, weighted):
    data, seeds = _data(n_features, dtype)
    weights = torch.rand(data.shape[0], dtype=dtype) + 0.1 if weighted else None
    index = RowSumIndex(data, weights, cells)
    compiled = compiled_rowsum_step(seeds, index)
    vectorised = rowsum_step(seeds, index)
    assert torch.equal(compiled.positions, vectorised.positions)
    assert torch.equal(compiled.log_density, vectorised.log_density)
    # Same dtype dense step: a point on the edge is in or out exactly as there.
    dense = mean_shift_step(seeds, data, weights, kernel="flat")
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(compiled.positions, dense.positions, atol=tol, rtol=0)
    torch.testing.assert_close(compiled.log_density, dense.log_density, atol=tol, rtol=tol)


def test_threads_do_not_change_a_bit():
    data, seeds = _data(3, torch.float64, seed=3)
    # Enough seeds for two threads (small batches run in one).
    seeds = torch.cat([seeds + 0.01 * k for k in range(12)])
    assert seeds.shape[0] >= 2 * _rowsum._SEEDS_PER_THREAD
    index = RowSumIndex(data, None, 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = compiled_rowsum_step(seeds, index)
        torch.set_num_threads(2)
        two = compiled_rowsum_step(seeds, index)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.positions, two.positions)
    assert torch.equal(one.log_density, two.log_density)


def test_empty_windows_data_and_seeds():
    data = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]], dtype=torch.float64)
    index = RowSumIndex(data, None, 4)
    far = torch.tensor([[5.0, 5.0, 5.0], [0.1, 0.0, 0.0]], dtype=torch.float64)
    step = compiled_rowsum_step(far, index)
    assert torch.isneginf(step.log_density[0]) and torch.equal(step.positions[0], far[0])
    assert torch.allclose(step.positions[1], torch.tensor([0.15, 0.0, 0.0], dtype=torch.float64))
    assert compiled_rowsum_step(far[:0], index).positions.shape == (0, 3)
    nothing = RowSumIndex(data[:0], None, 4)
    assert torch.isneginf(compiled_rowsum_step(far, nothing).log_density).all()


def test_refuses_gpu_tensors_with_a_hint():
    class OnGPU:
        type = "cuda"

    class FakeSeeds:
        device = OnGPU()

    index = RowSumIndex(torch.zeros(3, 2, dtype=torch.float64), None, 2)
    with pytest.raises(ValueError, match="compiled': False"):
        compiled_rowsum_step(FakeSeeds(), index)


# ------------------------------------------------------------------ in the estimator
def _count_calls(monkeypatch):
    calls = []
    original = _rowsum.compiled_rowsum_step

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_neighbors, "compiled_rowsum_step", counting)
    return calls


@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_auto_runs_the_compiled_row_sums_and_agrees_with_the_batched_grid(
    monkeypatch, n_features, assert_same_clustering
):
    calls = _count_calls(monkeypatch)
    X, _ = make_blobs(700, n_features=n_features, centers=3, cluster_std=0.6, random_state=n_features)
    compiled = MeanShift(bandwidth=1.0, neighbors="grid").fit(X)
    assert calls, "the flat grid fit did not use the compiled row sums"
    n_calls = len(calls)
    batched = MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"row_sums": False}).fit(X)
    in_torch = MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"compiled": False}).fit(X)
    assert len(calls) == n_calls
    for other in (batched, in_torch):
        assert_same_clustering(other.cluster_centers_, other.labels_, compiled.cluster_centers_,
                               compiled.labels_, atol=1e-10, rtol=1e-10)
        assert other.n_iter_ == compiled.n_iter_


def test_sparse_3d_windows_take_the_compiled_row_sums(monkeypatch):
    calls = _count_calls(monkeypatch)
    X = np.random.RandomState(0).uniform(0, 30, size=(3000, 3))  # ~0.5 points per window
    MeanShift(bandwidth=1.0, neighbors="grid").fit(X)
    assert calls


def test_without_numba_auto_falls_back_and_true_explains(monkeypatch, assert_same_clustering):
    monkeypatch.setattr(_neighbors, "compiled_unavailable", lambda: "numba is not importable (test)")
    monkeypatch.setattr(_neighbors, "compiled_rowsum_step", lambda *a, **k: pytest.fail("compiled step used"))
    X, _ = make_blobs(300, n_features=3, centers=3, random_state=0)
    fallback = MeanShift(bandwidth=1.0, neighbors="grid").fit(X)
    dense = MeanShift(bandwidth=1.0, neighbors="dense").fit(X)
    assert_same_clustering(dense.cluster_centers_, dense.labels_, fallback.cluster_centers_, fallback.labels_,
                           atol=1e-10, rtol=1e-10)
    with pytest.raises(RuntimeError, match="numba is not importable"):
        MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"compiled": True}).fit(X)


def test_compiled_option_is_checked():
    X, _ = make_blobs(100, n_features=2, centers=2, random_state=0)
    with pytest.raises(ValueError, match="'compiled'.*'auto', True or False"):
        MeanShift(bandwidth=1.0, neighbor_options={"compiled": "yes"}).fit(X)


def test_size_table_with_the_compiled_row_sums():
    cpu = torch.device("cpu")
    spread = torch.randn(2000, 3, dtype=torch.float64) * 30
    pick = lambda **kw: _neighbors.choose_method(  # noqa: E731
        "auto", n_seeds=5000, n_points=5000, n_features=3, device=cpu,
        grid=lambda: _neighbors.GridIndex(spread, 1.0), **kw
    )
    assert pick() == "grid"  # 2.5e7 pairs: the compiled 3-D grid beats dense
    assert pick(compiled=False) == "dense"
    assert pick(kernel="gaussian") == "dense"
    assert _neighbors.row_cells(3, 50, compiled=True) == 1
    assert _neighbors.row_cells(3, 1000, compiled=True) == 2
    assert _neighbors.row_cells(3, 8000, compiled=True) == 4
    assert _neighbors.row_cells(2, 50, compiled=True) == 2
    assert _neighbors.row_cells(2, 8000, compiled=True) == 16
    assert _neighbors.row_cells(1, 8000, compiled=True) == 1


def test_float32_fit_equals_float64_clusters(assert_same_clustering):
    X, _ = make_blobs(3000, n_features=3, centers=4, cluster_std=0.7, random_state=5)
    wide = MeanShift(bandwidth=1.2, neighbors="grid").fit(X)
    narrow = MeanShift(bandwidth=1.2, neighbors="grid").fit(X.astype(np.float32))
    assert_same_clustering(wide.cluster_centers_, wide.labels_, narrow.cluster_centers_, narrow.labels_,
                           atol=1e-4, rtol=0)
