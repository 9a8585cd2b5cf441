"""Row prefix sums (``meanshift_gpu._neighbors.rowsum``): the exact flat step without testing most points.

The torch row sums run on every device (they are the GPU's exact 1-D/2-D flat
step): the step's checks and the fits take the ``device`` argument (CPU, and
CUDA where present).  Fits that test which step "auto" picks pass
``backend="torch"``: with Triton on CUDA the grid runs the fused block-sparse
kernel instead.  The precision limits and the size table run on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from meanshift_gpu import MeanShift, _decisions, _neighbors
from meanshift_gpu._neighbors import rowsum as _rowsum
from meanshift_gpu._reference import mean_shift_step
from meanshift_gpu._neighbors.rowsum import RowSumIndex, rowsum_step


def _dense(seeds, data, weights=None):
    return mean_shift_step(seeds, data, weights, kernel="flat")


@pytest.mark.parametrize("n_features", [1, 2, 3])
@pytest.mark.parametrize("cells", [1, 4, 8, 16])
@pytest.mark.parametrize("weighting", ["none", "integer", "real"])
def test_step_equals_dense_step(n_features, cells, weighting, device):
    gen = torch.Generator().manual_seed(10 * n_features + cells)
    data = (torch.randn(900, n_features, generator=gen, dtype=torch.float64) * 1.5).to(device)
    weights = {
        "none": None,
        "integer": torch.randint(0, 4, (900,), generator=gen).to(torch.float64),
        "real": torch.rand(900, generator=gen, dtype=torch.float64),
    }[weighting]
    weights = None if weights is None else weights.to(device)
    seeds = torch.cat([
        data[:200] + 0.1,
        data.amax(0, keepdim=True) + 3.0,  # empty window
        torch.full((1, n_features), 1e6, dtype=torch.float64, device=device),  # far outside the grid
    ])
    index = RowSumIndex(data, weights, cells)
    got = rowsum_step(seeds, index, max_pairs=997)  # odd size: many chunks
    want = _dense(seeds, data, weights)
    torch.testing.assert_close(got.positions, want.positions, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.log_density, want.log_density, rtol=0, atol=1e-12)
    assert torch.isneginf(got.log_density[-2:]).all()
    assert torch.equal(got.positions[-2:], seeds[-2:])


@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_points_exactly_on_the_edge_count_as_in_the_dense_step(n_features, device):
    # A lattice of spacing 1/2 with seeds on lattice points: many points lie at
    # distance exactly 1 (and sqrt(0.5^2 + ...) combinations hitting 1).
    axes = [torch.arange(-3.0, 3.01, 0.5, dtype=torch.float64, device=device)] * n_features
    data = torch.cartesian_prod(*axes).reshape(-1, n_features)
    seeds = data[:: max(1, data.shape[0] // 150)]
    got = rowsum_step(seeds, RowSumIndex(data, None))
    want = _dense(seeds, data)
    assert torch.equal(got.log_density.exp().round(), want.log_density.exp().round())
    torch.testing.assert_close(got.positions, want.positions, rtol=0, atol=1e-12)


def test_float32_data_matches_the_float64_reference(device):
    X, _ = make_blobs(3000, n_features=2, centers=4, random_state=3)
    data = torch.as_tensor(X, dtype=torch.float32, device=device)
    seeds = data[::7]
    got = rowsum_step(seeds, RowSumIndex(data, None))
    want = _dense(seeds.double(), data.double())
    assert got.positions.dtype == torch.float32
    torch.testing.assert_close(got.positions.double(), want.positions, rtol=0, atol=2e-5)
    # Counts can differ only for points within float32 rounding of the edge: none here.
    assert torch.equal(got.log_density.double().exp().round(), want.log_density.exp().round())


def test_same_window_gives_bit_identical_means_whatever_the_chunks(device):
    gen = torch.Generator().manual_seed(5)
    data = torch.cat([torch.randn(400, 2, generator=gen, dtype=torch.float64) * 0.1 + 5.0,
                      torch.randn(400, 2, generator=gen, dtype=torch.float64) * 0.1 - 5.0]).to(device)
    # Every seed near a tight blob holds exactly that blob in its window.
    seeds = data[:400] + 0.05
    index = RowSumIndex(data, None)
    one = rowsum_step(seeds, index)
    assert torch.unique(one.positions, dim=0).shape[0] == 1
    for max_pairs in (50, 1000):
        assert torch.equal(rowsum_step(seeds, index, max_pairs=max_pairs).positions, one.positions)


def test_far_apart_data_and_large_coordinates_stay_exact(device):
    gen = torch.Generator().manual_seed(1)
    blobs = [torch.randn(200, 2, generator=gen, dtype=torch.float64) * 0.7 + c for c in (-5000.0, 0.0, 8000.0)]
    data = torch.cat(blobs).to(device)
    seeds = data[::5] + 0.2
    got = rowsum_step(seeds, RowSumIndex(data, None))
    want = _dense(seeds, data)
    torch.testing.assert_close(got.positions, want.positions, rtol=0, atol=1e-9)
    assert torch.equal(got.log_density, want.log_density)


def test_index_rejects_unsupported_dimensions():
    with pytest.raises(ValueError, match="1 to 3 features"):
        RowSumIndex(torch.zeros(5, 4), None)
    index = RowSumIndex(torch.zeros(5, 2), None)
    with pytest.raises(ValueError, match="seeds have 3 features"):
        rowsum_step(torch.zeros(2, 3), index)


# ------------------------------------------------------------------ in the estimator
def test_grid_runs_row_sums_by_default_in_2d_and_agrees_with_the_batched_grid(monkeypatch, assert_same_clustering, device):
    calls = []
    original = _rowsum.rowsum_step

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_rowsum, "rowsum_step", counting)
    # ~1500 points per window: full enough for "auto" to pick the torch row sums.
    X, _ = make_blobs(6000, n_features=2, centers=3, cluster_std=0.5, random_state=0)
    rows = MeanShift(bandwidth=1.2, neighbors="grid", neighbor_options={"compiled": False}, backend="torch",
                     device=device).fit(X)
    assert calls, "the 2-D flat grid fit did not use row sums"
    n_calls = len(calls)
    batched = MeanShift(bandwidth=1.2, neighbors="grid", neighbor_options={"row_sums": False}, device=device).fit(X)
    assert len(calls) == n_calls
    assert_same_clustering(batched.cluster_centers_, batched.labels_, rows.cluster_centers_, rows.labels_,
                           atol=1e-10, rtol=1e-10)
    assert rows.n_iter_ == batched.n_iter_


def test_auto_keeps_the_batched_grid_for_sparse_windows(monkeypatch, device):
    monkeypatch.setattr(_rowsum, "rowsum_step", lambda *a, **k: pytest.fail("row sums used"))
    X = np.random.RandomState(0).uniform(0, 60, size=(3000, 2))  # ~3 points per window
    model = MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"compiled": False}, backend="torch",
                      device=device).fit(X)
    assert model.neighbors_ == "grid"


def test_row_sums_on_request_in_3d(assert_same_clustering, device):
    X, _ = make_blobs(800, n_features=3, centers=4, random_state=2)
    rows = MeanShift(bandwidth=1.3, neighbors="grid", neighbor_options={"row_sums": True}, device=device).fit(X)
    dense = MeanShift(bandwidth=1.3, neighbors="dense", device=device).fit(X)
    assert_same_clustering(dense.cluster_centers_, dense.labels_, rows.cluster_centers_, rows.labels_,
                           atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(kernel="gaussian", neighbor_options={"row_sums": True}), "needs kernel='flat'"),
        (dict(neighbor_options={"row_sums": "yes"}), "'auto', True or False"),
        # 1 == True, but only a real bool asks for row sums.
        (dict(kernel="epanechnikov", neighbor_options={"row_sums": 1}), "'auto', True or False"),
        (dict(kernel="epanechnikov", neighbor_options={"row_sums": np.True_}), "needs kernel='flat'"),
    ],
)
def test_row_sums_option_errors(params, message, device):
    X, _ = make_blobs(100, n_features=2, centers=2, random_state=0)
    with pytest.raises(ValueError, match=message):
        MeanShift(bandwidth=1.0, neighbors="grid", **params, device=device).fit(X)


def test_row_sums_refuse_more_than_three_features(device):
    X, _ = make_blobs(100, n_features=4, centers=2, random_state=0)
    with pytest.raises(ValueError, match="at most 3 features"):
        MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"row_sums": True}, device=device).fit(X)


def test_sample_weights_equal_repeated_rows_with_row_sums(assert_same_clustering, device):
    rng = np.random.RandomState(4)
    X, _ = make_blobs(600, n_features=2, centers=3, random_state=4)
    w = rng.randint(0, 3, size=len(X))
    weighted = MeanShift(bandwidth=1.0, neighbors="grid", bin_seeding=True, device=device).fit(X, sample_weight=w.astype(float))
    repeated = MeanShift(bandwidth=1.0, neighbors="grid", bin_seeding=True, device=device).fit(np.repeat(X, w, axis=0))
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, rtol=0, atol=1e-10)


def test_out_of_memory_shrinks_the_row_sum_batches(monkeypatch, assert_same_clustering, device):
    original = _rowsum.rowsum_step
    budgets = []

    def tight_memory(seeds, index, *, max_pairs):
        budgets.append(max_pairs)
        if max_pairs > 100_000:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(seeds, index, max_pairs=max_pairs)

    monkeypatch.setattr(_rowsum, "rowsum_step", tight_memory)
    X, _ = make_blobs(3000, n_features=2, centers=3, cluster_std=0.5, random_state=1)
    torch_rows = {"row_sums": True, "compiled": False}
    shrunk = MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options=torch_rows, device=device).fit(X)
    assert budgets[0] > 100_000 and min(budgets) <= 100_000
    monkeypatch.setattr(_rowsum, "rowsum_step", original)
    plain = MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options=torch_rows, device=device).fit(X)
    assert_same_clustering(plain.cluster_centers_, plain.labels_, shrunk.cluster_centers_, shrunk.labels_,
                           atol=1e-12, rtol=0)


def test_data_spanning_too_many_bandwidths_fall_back_to_the_batched_grid(monkeypatch, device):
    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal(0, 0.3, (300, 2)), rng.normal(0, 0.3, (300, 2)) + [4e14, 0]])
    with pytest.raises(OverflowError, match="row_sums': False"):
        MeanShift(bandwidth=1.0, neighbors="grid", neighbor_options={"row_sums": True}, device=device).fit(X)
    monkeypatch.setattr(_decisions, "ROW_SUMS_TORCH_MIN_WINDOW", 0)  # "auto" would want row sums
    model = MeanShift(bandwidth=1.0, neighbors="grid", backend="torch", device=device).fit(X)
    assert len(model.cluster_centers_) == 2


def test_window_estimate_and_cells_per_bandwidth():
    from meanshift_gpu._neighbors.grid import GridIndex

    gen = torch.Generator().manual_seed(0)
    data = torch.rand(20000, 2, generator=gen, dtype=torch.float64) * 60.0  # ~17 points per unit disc
    estimate = _neighbors.mean_window(GridIndex(data, 1.0, None))
    measured = float(rowsum_step(data[:2000], RowSumIndex(data, None)).log_density.exp().mean())
    assert 0.8 * measured <= estimate <= 1.2 * measured
    cells = [_decisions.row_cells(2, w) for w in (10, 400, 3000, 1e6)]
    assert cells == sorted(cells) and cells[0] == 8 and cells[-1] == 16
    assert _decisions.row_cells(3, 5000) == _rowsum.ROW_CELLS[3]


# ------------------------------------------------------------ precision limits (review)
@pytest.mark.parametrize("scale", [1.0, 1e-9, 1e-20, 1e12])
def test_real_weights_results_do_not_depend_on_their_unit(scale):
    gen = torch.Generator().manual_seed(3)
    data = torch.rand(1000, 2, generator=gen, dtype=torch.float64) * 10 - 5
    w = (torch.rand(1000, generator=gen, dtype=torch.float64) + 0.5) * scale
    seeds = data[:200]
    got = rowsum_step(seeds, RowSumIndex(data, w))
    want = _dense(seeds, data, w)
    torch.testing.assert_close(got.positions, want.positions, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.log_density, want.log_density, rtol=0, atol=1e-9)


def test_huge_integer_weights_keep_precision():
    gen = torch.Generator().manual_seed(4)
    data = torch.rand(1000, 2, generator=gen, dtype=torch.float64) * 10 - 5
    w = torch.full((1000,), 2.0**40, dtype=torch.float64)
    got = rowsum_step(data[:200], RowSumIndex(data, w))
    torch.testing.assert_close(got.positions, _dense(data[:200], data, w).positions, rtol=0, atol=1e-12)


def test_each_feature_keeps_its_own_precision():
    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(400, generator=gen, dtype=torch.float64) * 0.6
    y = torch.where(torch.arange(400) % 2 == 0, 1e7, -1e7).to(torch.float64)
    data = torch.stack([x0, y], 1)
    got = rowsum_step(data, RowSumIndex(data, None))
    torch.testing.assert_close(got.positions, _dense(data, data).positions, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "data, weights",
    [
        # Weights 2**40 apart: beyond the fixed point's range.
        (torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.2, 0.1]]), torch.tensor([1e-13, 1.0, 1.0])),
        # Rows 2e18 bandwidths apart: no 64-bit keys.
        (torch.tensor([[0.0, 2e18, 0.0], [0.5, 2e18, 0.0], [0.0, -2e18, 0.0]], dtype=torch.float64), None),
    ],
)
def test_out_of_range_data_are_refused_not_corrupted(data, weights):
    with pytest.raises(OverflowError, match="row_sums': False"):
        RowSumIndex(data, weights)


def test_cells_per_bandwidth_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        RowSumIndex(torch.zeros(3, 2), None, 6)


def test_empty_data_gives_empty_windows():
    got = rowsum_step(torch.ones(2, 2), RowSumIndex(torch.zeros(0, 2), None))
    assert torch.isneginf(got.log_density).all() and torch.equal(got.positions, torch.ones(2, 2))


def test_auto_falls_back_where_row_sums_would_lose_precision(monkeypatch, assert_same_clustering, device):
    monkeypatch.setattr(_decisions, "ROW_SUMS_TORCH_MIN_WINDOW", 0)
    monkeypatch.setattr(_rowsum, "rowsum_step", lambda *a, **k: pytest.fail("row sums used"))
    X, _ = make_blobs(600, n_features=2, centers=3, random_state=0)
    w = np.random.RandomState(0).uniform(0.5, 1.5, len(X))
    w[::50] = 1e-12  # a weight range of 2**40
    grid = MeanShift(bandwidth=1.0, neighbors="grid", backend="torch", device=device).fit(X, sample_weight=w)
    dense = MeanShift(bandwidth=1.0, neighbors="dense", device=device).fit(X, sample_weight=w)
    assert_same_clustering(dense.cluster_centers_, dense.labels_, grid.cluster_centers_, grid.labels_,
                           atol=1e-10, rtol=1e-10)


def test_float32_seeds_far_from_the_centre_still_honour_tol(device):
    # At ~1e4 bandwidths a float32 unit in the last place is ~1e-3: moves of a
    # few of them are real and must not count as rounding noise.
    base = np.arange(0, 60, 0.002)
    weights = 1 + 0.05 * base
    X = np.concatenate([base + 10000, -(base + 10000)])[:, None].astype(np.float32)
    w = np.concatenate([weights, weights])
    seeds = np.array([[10030.0]], np.float32)
    far = MeanShift(bandwidth=1.0, seeds=seeds, max_iter=5, neighbors="grid", device=device).fit(X, sample_weight=w)
    near = MeanShift(bandwidth=1.0, seeds=seeds - 10000, max_iter=5, neighbors="grid", device=device).fit(
        (X[: len(base)] - 10000).astype(np.float32), sample_weight=weights)
    assert far.n_iter_ == near.n_iter_ == 5


def test_auto_size_table_prefers_the_exact_grid_earlier_in_2d():
    cpu = torch.device("cpu")
    spread = torch.randn(2000, 2, dtype=torch.float64) * 30
    pick = lambda **kw: _decisions.decide_neighbors(  # noqa: E731
        "auto", n_seeds=5000, n_points=5000, device=cpu, grid=lambda: _neighbors.GridIndex(spread, 1.0), **kw
    ).value
    assert pick(n_features=2) == "grid"
    assert pick(n_features=2, kernel="gaussian") == "dense"  # truncation: keep the exact pass
    assert pick(n_features=3, compiled=False) == "dense"  # the 3-D rule needs the compiled row sums
    assert pick(n_features=3, kernel="epanechnikov") == "dense"
