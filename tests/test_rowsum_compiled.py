"""The compiled row sums (the ``meanshift_gpu._neighbors._native`` C extension) against the torch row sums and dense.

CPU only: the compiled loop runs on CPU tensors ("auto" never takes it for
data on a GPU), so every fit here passes ``device="cpu"``.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from meanshift_gpu import MeanShift, _decisions, _neighbors
from meanshift_gpu._neighbors import rowsum as _rowsum
from meanshift_gpu._reference import mean_shift_step
from meanshift_gpu._neighbors.rowsum import RowSumIndex, compiled_rowsum_step, rowsum_step

from meanshift_gpu._neighbors.compiled import unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}")


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


@pytest.mark.parametrize("n_features, cells", [(2, 1), (3, 1), (3, 2)])
def test_dense_windows_equal_the_torch_row_sums(n_features, cells):
    # Hundreds of points per run: the interior is searched (galloping from the
    # last seed's bounds) rather than the whole run tested.
    g = torch.Generator().manual_seed(11)
    data = (torch.randn(6000, n_features, generator=g, dtype=torch.float64) * 0.6).to(torch.float32)
    seeds = torch.cat([data[:400], data[:50] + 0.3])
    index = RowSumIndex(data, None, cells)
    compiled = compiled_rowsum_step(seeds, index)
    vectorised = rowsum_step(seeds, index)
    assert float(compiled.log_density.exp().median()) > 300  # the windows really are full
    assert torch.equal(compiled.positions, vectorised.positions)
    assert torch.equal(compiled.log_density, vectorised.log_density)


@pytest.mark.parametrize("n_features", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_groups_sharing_their_rows_change_no_bit(n_features, dtype, weighted):
    # Seeds crowded around a few points (as late in a fit) form compact
    # groups that take the shared path; scattered ones step one by one.
    g = torch.Generator().manual_seed(5)
    data = (torch.randn(8000, n_features, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    lattice = torch.round(data[:500] * 4) / 4  # points exactly on window edges
    data = torch.cat([data, lattice])
    crowds = torch.cat([c + 1e-3 * torch.randn(150, n_features, generator=g, dtype=torch.float64)
                        for c in torch.randn(4, n_features, generator=g, dtype=torch.float64) * 0.5]).to(dtype)
    seeds = torch.cat([crowds, data[:300], lattice[:50]])
    weights = torch.rand(data.shape[0], generator=g, dtype=torch.float64).to(dtype) + 0.1 if weighted else None
    index = RowSumIndex(data, weights, 2)
    alone = compiled_rowsum_step(seeds, index, shared_radius=0.0)
    for radius in (0.01, 0.25, 2.0):
        shared = compiled_rowsum_step(seeds, index, shared_radius=radius)
        assert torch.equal(shared.positions, alone.positions)
        assert torch.equal(shared.log_density, alone.log_density)
    assert torch.equal(alone.positions, rowsum_step(seeds, index).positions)


def test_compact_groups_share_a_row_cell_and_are_small():
    from meanshift_gpu._neighbors.compiled import split_groups

    g = torch.Generator().manual_seed(2)
    # Seeds crowded around two modes, as late in a fit, plus scattered ones.
    q = torch.cat([torch.randn(2500, 3, generator=g, dtype=torch.float64) * 0.05 + c for c in (0.1, 2.0)]
                  + [torch.randn(500, 3, generator=g, dtype=torch.float64) * 3])
    index = RowSumIndex(q, None, 2)
    order, keys, codes, top = _rowsum._compact_order(q, index)
    assert sorted(order.tolist()) == list(range(q.shape[0]))
    assert np.array_equal(keys, _rowsum._own_row_keys(q, index).numpy()[order])
    assert (np.diff(keys) >= 0).all() and (np.diff(codes)[np.diff(keys) == 0] >= 0).all()
    starts = split_groups(keys, codes, top, 64)
    assert starts[0] == 0 and starts[-1] == q.shape[0] and (np.diff(starts) > 0).all()
    assert np.diff(starts).max() <= 64
    for a, b in zip(starts[:-1], starts[1:]):
        assert (keys[a:b] == keys[a]).all()

    # The crowds alone: groups against runs of 64 in row order (own row cell, then the first coordinate).
    crowd = q[:5000]
    order, keys, codes, top = _rowsum._compact_order(crowd, index)
    starts = split_groups(keys, codes, top, 64)
    by_row = np.lexsort((crowd[:, 0].numpy(), _rowsum._own_row_keys(crowd, index).numpy()))

    def mean_extent(idx, bounds):
        boxes = [crowd[torch.from_numpy(idx[a:b])] for a, b in zip(bounds[:-1], bounds[1:])]
        return float(np.mean([float((x.amax(0) - x.amin(0)).norm()) for x in boxes]))

    assert mean_extent(order, starts) < 0.5 * mean_extent(by_row, np.arange(0, crowd.shape[0] + 63, 64).clip(0, 5000))


def test_spread_bits_interleaves():
    values = torch.tensor([0b101, 0b11])
    assert _rowsum._spread_bits(values, 2).tolist() == [0b10001, 0b101]
    assert _rowsum._spread_bits(values, 3).tolist() == [0b1000001, 0b1001]
    g = torch.Generator().manual_seed(0)
    for d in (2, 3):
        bits = _rowsum._MORTON_BITS[d]
        v = torch.randint(0, 2**bits, (200,), generator=g)
        slow = [sum(((int(x) >> k) & 1) << (d * k) for k in range(bits)) for x in v]
        assert _rowsum._spread_bits(v, d).tolist() == slow


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

    monkeypatch.setattr(_rowsum, "compiled_rowsum_step", counting)
    return calls


@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_auto_runs_the_compiled_row_sums_and_agrees_with_the_batched_grid(
    monkeypatch, n_features, assert_same_clustering
):
    calls = _count_calls(monkeypatch)
    X, _ = make_blobs(700, n_features=n_features, centers=3, cluster_std=0.6, random_state=n_features)
    compiled = MeanShift(bandwidth=1.0, neighbors="grid", device="cpu").fit(X)
    assert calls, "the flat grid fit did not use the compiled row sums"
    n_calls = len(calls)
    batched = MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"row_sums": False}, device="cpu").fit(X)
    in_torch = MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"compiled": False}, device="cpu").fit(X)
    assert len(calls) == n_calls
    for other in (batched, in_torch):
        assert_same_clustering(other.cluster_centers_, other.labels_, compiled.cluster_centers_,
                               compiled.labels_, atol=1e-10, rtol=1e-10)
        assert other.n_iter_ == compiled.n_iter_


def test_sparse_3d_windows_take_the_compiled_row_sums(monkeypatch):
    calls = _count_calls(monkeypatch)
    X = np.random.RandomState(0).uniform(0, 30, size=(3000, 3))  # ~0.5 points per window
    MeanShift(bandwidth=1.0, neighbors="grid", device="cpu").fit(X)
    assert calls


def test_without_the_extension_auto_falls_back_and_true_explains(monkeypatch, assert_same_clustering):
    monkeypatch.setattr(_neighbors.compiled, "unavailable", lambda: "the C extension is not built (test)")
    monkeypatch.setattr(_rowsum, "compiled_rowsum_step", lambda *a, **k: pytest.fail("compiled step used"))
    X, _ = make_blobs(300, n_features=3, centers=3, random_state=0)
    fallback = MeanShift(bandwidth=1.0, neighbors="grid", device="cpu").fit(X)
    dense = MeanShift(bandwidth=1.0, neighbors="dense", device="cpu").fit(X)
    assert_same_clustering(dense.cluster_centers_, dense.labels_, fallback.cluster_centers_, fallback.labels_,
                           atol=1e-10, rtol=1e-10)
    with pytest.raises(RuntimeError, match="the C extension is not built"):
        MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"compiled": True}, device="cpu").fit(X)


def test_compiled_option_is_checked():
    X, _ = make_blobs(100, n_features=2, centers=2, random_state=0)
    with pytest.raises(ValueError, match="'compiled'.*'auto', True or False"):
        MeanShift(bandwidth=1.0, neighbor_options={"compiled": "yes"}, device="cpu").fit(X)


def test_size_table_with_the_compiled_row_sums():
    cpu = torch.device("cpu")
    spread = torch.randn(2000, 3, dtype=torch.float64) * 30
    pick = lambda **kw: _decisions.decide_neighbors(  # noqa: E731
        "auto", n_seeds=5000, n_points=5000, n_features=3, device=cpu,
        grid=lambda: _neighbors.GridIndex(spread, 1.0), **kw
    ).value
    assert pick() == "grid"  # 2.5e7 pairs: the compiled 3-D grid beats dense
    assert pick(compiled=False) == "dense"
    assert pick(kernel="gaussian") == "dense"
    windows = [1, 10, 100, 1e3, 3e3, 1e4, 3e4, 1e5, 1e7]
    for d in (2, 3):
        cells = [_decisions.row_cells(d, w, compiled=True) for w in windows]
        # Finer rows only for fuller windows, always a power of two (exact cell bounds).
        assert cells == sorted(cells) and cells[0] == 1 and cells[-1] > 1
        assert all(c & (c - 1) == 0 for c in cells)
    assert _decisions.row_cells(1, 8000, compiled=True) == 1


def test_float32_fit_equals_float64_clusters(assert_same_clustering):
    X, _ = make_blobs(3000, n_features=3, centers=4, cluster_std=0.7, random_state=5)
    wide = MeanShift(bandwidth=1.2, neighbors="grid", device="cpu").fit(X)
    narrow = MeanShift(bandwidth=1.2, neighbors="grid", device="cpu").fit(X.astype(np.float32))
    assert_same_clustering(wide.cluster_centers_, wide.labels_, narrow.cluster_centers_, narrow.labels_,
                           atol=1e-4, rtol=0)


def test_fit_info_says_which_step_ran():
    """Device: CPU.  The step of the host loop is reported, with the thread count."""
    X, _ = make_blobs(2000, n_features=2, centers=3, random_state=0)
    compiled = MeanShift(bandwidth=1.0, neighbors="grid", device="cpu").fit(X)
    assert compiled.fit_info_["step"].startswith("grid: row prefix sums, compiled C loop")
    assert compiled.fit_info_["threads"] >= 1
    in_torch = MeanShift(bandwidth=1.0, neighbors="grid", device="cpu",
                         neighbor_options={"compiled": False, "row_sums": True}).fit(X)
    assert in_torch.fit_info_["step"].startswith("grid: row prefix sums, torch")
    batched = MeanShift(bandwidth=1.0, neighbors="grid", device="cpu", neighbor_options={"row_sums": False}).fit(X)
    assert batched.fit_info_["step"].startswith("grid: cells of one reach")
    dense = MeanShift(bandwidth=1.0, neighbors="dense", device="cpu").fit(X)
    assert dense.fit_info_["step"].startswith("dense")
