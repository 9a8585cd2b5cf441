"""Block-sparse mean-shift step: torch (``_sparse``) and Triton (``kernels``).

The oracle is the dense float64 reference step applied to each seed block
with only its candidate points.  The torch step is checked against it
directly; the Triton kernel (run on CPU tensors under Triton's interpreter,
``TRITON_INTERPRET=1`` set below before anything imports Triton) is checked
against the float64 torch step.  Triton tests carry the
``kernels`` marker; the torch tests run without Triton installed.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from meanshift_gpu import _reference  # noqa: E402
from meanshift_gpu._neighbors import blocked as _sparse  # noqa: E402

KERNELS = ("flat", "gaussian", "epanechnikov")
EPS32 = torch.finfo(torch.float32).eps


# ----------------------------------------------------------------------------------- helpers
def _problem(n_points, n_features, n_seeds, *, weighted=False, seed=0):
    """float32-exact data (float64 tensors), a good share of points in each window."""
    gen = torch.Generator().manual_seed(seed)
    scale = 0.6 * min(1.0, (2.0 / n_features) ** 0.5)
    data = torch.randn(n_points, n_features, generator=gen, dtype=torch.float64) * scale
    data += torch.linspace(-0.5, 0.5, n_features, dtype=torch.float64)
    picks = torch.randint(0, n_points, (n_seeds,), generator=gen)
    seeds = data[picks] + 0.2 * scale * torch.randn(n_seeds, n_features, generator=gen, dtype=torch.float64)
    weights = None
    if weighted:
        weights = torch.rand(n_points, generator=gen, dtype=torch.float64) * 2
        weights[::7] = 0.0  # zero-weight points must drop out of every sum
        weights = weights.float().double()
    return seeds.float().double(), data.float().double(), weights


def _blocks(counts, n_points, *, seed=0, offset=0):
    """CSR layout with the given candidate counts per block (random rows, repeats allowed).

    ``offset`` puts unused entries before the first block, so pointers need
    not start at 0.
    """
    gen = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(counts, dtype=torch.int64)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)]) + offset
    indices = torch.randint(0, n_points, (int(starts[-1]),), generator=gen)
    return starts, indices


def _skewed_counts(n_blocks, *, big=300, seed=0):
    """Mostly small lists, some empty, one very long one."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 25, (n_blocks,), generator=gen)
    counts[1 % n_blocks] = 0
    counts[n_blocks // 2] = big
    return counts


def _blocked_oracle(seeds, data, weights, starts, indices, seed_block, kernel):
    """Dense float64 reference step per block, on the block's candidates only."""
    seeds, data = seeds.double(), data.double()
    weights = None if weights is None else weights.double()
    positions, log_density = [], []
    for b in range(starts.shape[0] - 1):
        rows = indices[starts[b] : starts[b + 1]]
        step = _reference.mean_shift_step(
            seeds[b * seed_block : (b + 1) * seed_block], data[rows],
            None if weights is None else weights[rows], kernel=kernel,
        )
        positions.append(step.positions)
        log_density.append(step.log_density)
    return _reference.StepResult(torch.cat(positions), torch.cat(log_density))


def _tolerance(*tensors):
    """float32 error scale of squared distances: eps * (1 + largest squared norm)."""
    largest = max(float(t.square().sum(1).max()) for t in tensors if t.numel())
    return 64 * EPS32 * (1.0 + largest)


def _edge_rows_blocked(seeds, data, starts, indices, seed_block, margin=1e-4):
    """Seeds with a candidate within ``margin`` of the flat window edge (d2 = 1).

    float32 and float64 may put such a point on different sides of the edge:
    rounding, not a bug, so these rows are left out of float32 comparisons.
    """
    near = torch.zeros(seeds.shape[0], dtype=torch.bool)
    for b in range(starts.shape[0] - 1):
        rows = indices[starts[b] : starts[b + 1]]
        q = seeds[b * seed_block : (b + 1) * seed_block]
        if rows.numel() and q.numel():
            d2 = torch.cdist(q, data[rows]).square()
            near[b * seed_block : (b + 1) * seed_block] = ((d2 - 1).abs() < margin).any(1)
    return near


def _assert_step_close(got, ref, *, atol, density_atol, rows=None):
    """``got`` against ``ref`` (float64) on ``rows``; empty windows must match exactly."""
    if rows is None:
        rows = torch.ones(ref.log_density.shape[0], dtype=torch.bool)
    got_pos, got_logd = got.positions.cpu().double()[rows], got.log_density.cpu().double()[rows]
    ref_pos, ref_logd = ref.positions.double()[rows], ref.log_density.double()[rows]
    assert torch.isfinite(got_pos).all()
    assert torch.equal(torch.isneginf(got_logd), torch.isneginf(ref_logd))
    assert not torch.isnan(got_logd).any() and not torch.isposinf(got_logd).any()
    torch.testing.assert_close(got_pos, ref_pos, atol=atol, rtol=0)
    finite = torch.isfinite(ref_logd)
    torch.testing.assert_close(got_logd[finite].exp(), ref_logd[finite].exp(), atol=density_atol, rtol=1e-5)


# ====================================================================== torch: blocked_step
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_features", [1, 2, 3, 5, 17])
def test_blocked_matches_dense_reference_per_block(n_features, kernel, weighted):
    seed_block = 6
    seeds, data, weights = _problem(150, n_features, 39, weighted=weighted, seed=n_features)
    n_blocks = math.ceil(39 / seed_block)  # the last block is short
    starts, indices = _blocks(_skewed_counts(n_blocks, big=130), data.shape[0], seed=1, offset=3)
    ref = _blocked_oracle(seeds, data, weights, starts, indices, seed_block, kernel)
    assert torch.isfinite(ref.log_density).sum() >= seeds.shape[0] // 2  # windows are not trivial
    assert torch.isneginf(ref.log_density).any()  # an empty block is in there
    # Small tiles and pair budgets force many items per block and many batches.
    got = _sparse.blocked_step(
        seeds, data, weights, starts, indices, kernel=kernel, seed_block=seed_block,
        max_pairs=200, max_tile=16,
    )
    assert got.positions.dtype == got.log_density.dtype == torch.float64
    _assert_step_close(got, ref, atol=1e-12, density_atol=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_blocked_float32_against_float64_reference(kernel):
    seed_block = 8
    seeds, data, weights = _problem(200, 3, 50, weighted=True, seed=4)
    starts, indices = _blocks(_skewed_counts(7, big=180, seed=2), 200, seed=3)
    ref = _blocked_oracle(seeds, data, weights, starts, indices, seed_block, kernel)
    got = _sparse.blocked_step(
        seeds.float(), data.float(), weights.float(), starts, indices, kernel=kernel,
        seed_block=seed_block, max_pairs=512, max_tile=32,
    )
    assert got.positions.dtype == torch.float32
    rows = None
    if kernel == "flat":
        rows = ~_edge_rows_blocked(seeds, data, starts, indices, seed_block)
    tol = _tolerance(seeds, data)
    _assert_step_close(got, ref, atol=tol, density_atol=tol * 400, rows=rows)


def test_blocked_flat_window_is_bit_exact_for_few_features():
    """Integer-like coordinates on the window edge: inclusive, exactly as the dense step."""
    grid = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij"), -1)
    data = grid.reshape(-1, 2).double() * 0.5  # neighbours at distance exactly 0.5 and 1.0
    seeds = data[::3].clone()
    seed_block = 4
    n_blocks = math.ceil(seeds.shape[0] / seed_block)
    starts = torch.arange(n_blocks + 1) * data.shape[0]
    indices = torch.arange(data.shape[0]).repeat(n_blocks)
    got = _sparse.blocked_step(seeds, data, None, starts, indices, kernel="flat", seed_block=seed_block)
    dense = _reference.mean_shift_step(seeds, data, kernel="flat")
    assert torch.equal(got.log_density, dense.log_density)  # same in-window counts
    torch.testing.assert_close(got.positions, dense.positions, atol=1e-14, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_blocked_result_does_not_depend_on_chunk_sizes(kernel):
    seeds, data, weights = _problem(180, 5, 44, weighted=True, seed=6)
    starts, indices = _blocks(_skewed_counts(4, big=400, seed=5), 180, seed=7)
    results = [
        _sparse.blocked_step(seeds, data, weights, starts, indices, kernel=kernel, seed_block=11,
                             max_pairs=max_pairs, max_tile=max_tile)
        for max_pairs, max_tile in [(1, 8), (300, 16), (5000, 64), (_sparse.DEFAULT_MAX_PAIRS, 1024)]
    ]
    for other in results[1:]:
        torch.testing.assert_close(other.positions, results[0].positions, atol=1e-12, rtol=0)
        torch.testing.assert_close(other.log_density, results[0].log_density, atol=1e-12, rtol=0)


def test_blocked_points_outside_the_lists_are_never_read():
    """Unlisted data rows (row 0 included, which padding slots gather) hold NaN."""
    seeds, data, weights = _problem(120, 3, 30, weighted=True, seed=8)
    starts, indices = _blocks(_skewed_counts(5, big=60, seed=3), 120, seed=9)
    indices = indices.clamp_min(60)  # only rows 60.. are listed
    poisoned, poisoned_w = data.clone(), weights.clone()
    poisoned[:60] = float("nan")
    poisoned_w[:60] = float("nan")
    for kernel in KERNELS:
        clean = _sparse.blocked_step(seeds, data, weights, starts, indices, kernel=kernel, seed_block=6,
                                     max_tile=8)
        got = _sparse.blocked_step(seeds, poisoned, poisoned_w, starts, indices, kernel=kernel, seed_block=6,
                                   max_tile=8)
        assert torch.equal(got.positions, clean.positions)
        assert torch.equal(got.log_density, clean.log_density)


def test_blocked_empty_layouts():
    seeds, data, _ = _problem(20, 2, 9, seed=1)
    empty_starts = torch.zeros(4, dtype=torch.int64)
    for kernel in KERNELS:
        got = _sparse.blocked_step(seeds, data, None, empty_starts, torch.zeros(0, dtype=torch.int64),
                                   kernel=kernel, seed_block=3)
        assert torch.equal(got.positions, seeds) and torch.isneginf(got.log_density).all()
    none = _sparse.blocked_step(seeds[:0], data, None, torch.zeros(1, dtype=torch.int64),
                                torch.zeros(0, dtype=torch.int64), seed_block=3)
    assert none.positions.shape == (0, 2) and none.log_density.shape == (0,)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_blocked_gaussian_far_seeds_do_not_underflow(weighted):
    """All weights underflow in float32; items of one block are combined by their maxima."""
    seeds, data, weights = _problem(90, 2, 12, weighted=weighted, seed=10)
    far = seeds + 30.0
    starts, indices = _blocks([90, 3, 0], 90, seed=11)
    ref = _blocked_oracle(far, data, weights, starts, indices, 5, "gaussian")
    got = _sparse.blocked_step(
        far.float(), data.float(), None if weights is None else weights.float(), starts, indices,
        kernel="gaussian", seed_block=5, max_pairs=40, max_tile=8,
    )
    assert float(torch.cdist(far, data).min()) ** 2 / 2 > 200  # exp(-200) is 0 in float32
    tol = _tolerance(far, data)
    assert torch.equal(torch.isneginf(got.log_density), torch.isneginf(ref.log_density))
    finite = torch.isfinite(ref.log_density)
    torch.testing.assert_close(got.positions.double(), ref.positions, atol=20 * tol, rtol=0)
    torch.testing.assert_close(got.log_density.double()[finite], ref.log_density[finite], atol=tol, rtol=1e-5)


def test_blocked_rejects_bad_layouts():
    seeds, data, _ = _problem(10, 2, 7, seed=2)
    good_starts, good_idx = _blocks([2, 3, 1, 4], 10)
    ok = _sparse.blocked_step(seeds, data, None, good_starts, good_idx, seed_block=2)
    assert ok.positions.shape == seeds.shape
    with pytest.raises(ValueError, match="block_starts must have shape"):
        _sparse.blocked_step(seeds, data, None, good_starts[:-1], good_idx, seed_block=2)
    with pytest.raises(ValueError, match="non-decreasing"):
        _sparse.blocked_step(seeds, data, None, torch.tensor([0, 3, 2, 5, 6]), good_idx, seed_block=2)
    with pytest.raises(ValueError, match="non-decreasing"):
        _sparse.blocked_step(seeds, data, None, torch.tensor([0, 3, 4, 5, 99]), good_idx, seed_block=2)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        _sparse.blocked_step(seeds, data, None, good_starts, good_idx + 5, seed_block=2)
    with pytest.raises(TypeError, match="int64"):
        _sparse.blocked_step(seeds, data, None, good_starts.int(), good_idx, seed_block=2)
    with pytest.raises(ValueError, match="unknown kernel"):
        _sparse.blocked_step(seeds, data, None, good_starts, good_idx, seed_block=2, kernel="cosine")
    with pytest.raises(TypeError, match="dtype"):
        _sparse.blocked_step(seeds.float(), data, None, good_starts, good_idx, seed_block=2)


# ============================================================================ Triton kernels
@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton", reason="Triton is not installed")
    from meanshift_gpu import kernels as module
    from meanshift_gpu.kernels import _common

    problem = _common.triton_mode_error()
    if problem is not None:
        pytest.skip(f"Triton kernels cannot run in this session: {problem}")
    if not _common.INTERPRETED and not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 and no CUDA device: the kernels cannot run")
    return module


def _device():
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return torch.device("cpu" if interpreted else "cuda")


def _to(*tensors, dtype=torch.float32):
    device = _device()
    return [
        None if t is None else t.to(device, dtype if t.is_floating_point() else t.dtype)
        for t in tensors
    ]


@pytest.mark.kernels
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_features", [1, 2, 5, 17])
def test_triton_blocked_matches_torch(kernels, n_features, kernel, weighted):
    # seed_block 20 is not a power of two and needs two 16-seed programs per block.
    seed_block, n_seeds = 20, 47
    seeds, data, weights = _problem(130, n_features, n_seeds, weighted=weighted, seed=40 + n_features)
    starts, indices = _blocks([40, 0, 150], 130, seed=41, offset=2)
    ref = _sparse.blocked_step(seeds, data, weights, starts, indices, kernel=kernel, seed_block=seed_block)
    assert torch.isfinite(ref.log_density).sum() >= n_seeds // 2
    rows = None
    if kernel == "flat":
        rows = ~_edge_rows_blocked(seeds, data, starts, indices, seed_block)
    tol = _tolerance(seeds, data)
    # Unsplit (one program per block tile) and split (the 150-list cut in 3).
    for split in (None, 64):
        got = kernels.blocked_step(*_to(seeds, data, weights), *_to(starts, indices), kernel=kernel,
                                   seed_block=seed_block, split=split)
        assert got.positions.dtype == torch.float32
        _assert_step_close(got, ref, atol=tol, density_atol=tol * 200, rows=rows)


@pytest.mark.kernels
@pytest.mark.parametrize("kernel", KERNELS)
def test_triton_wide_features_use_feature_tiles(kernels, kernel):
    """300 features: feature tiles, output columns split over programs."""
    seeds, data, weights = _problem(40, 300, 18, weighted=True, seed=60)
    starts, indices = _blocks([30, 45], 40, seed=61)
    tol = _tolerance(seeds, data)
    ref = _sparse.blocked_step(seeds, data, weights, starts, indices, kernel=kernel, seed_block=16)
    got = kernels.blocked_step(*_to(seeds, data, weights), *_to(starts, indices), kernel=kernel, seed_block=16)
    _assert_step_close(got, ref, atol=tol, density_atol=tol * 50)


@pytest.mark.kernels
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_features", [3, 17])
def test_triton_per_seed_lists_match_torch(kernels, n_features, kernel):
    """Blocks of one seed: the layout in which LSH and faiss pass their per-seed candidate lists."""
    n_seeds = 37
    seeds, data, weights = _problem(110, n_features, n_seeds, weighted=True, seed=50 + n_features)
    counts = torch.randint(0, 45, (n_seeds,), generator=torch.Generator().manual_seed(n_features))
    starts, indices = _blocks(counts, 110, seed=51)
    ref = _sparse.blocked_step(seeds, data, weights, starts, indices, kernel=kernel, seed_block=1)
    rows = ~_edge_rows_blocked(seeds, data, starts, indices, 1) if kernel == "flat" else None
    tol = _tolerance(seeds, data)
    got = kernels.blocked_step(*_to(seeds, data, weights), *_to(starts, indices), kernel=kernel, seed_block=1)
    _assert_step_close(got, ref, atol=tol, density_atol=tol * 100, rows=rows)


@pytest.mark.kernels
@pytest.mark.parametrize("n_features", [2, 17])
def test_triton_results_do_not_depend_on_tiles(kernels, n_features):
    seeds, data, weights = _problem(100, n_features, 40, weighted=True, seed=70)
    starts, indices = _blocks([10, 90, 0, 33], 100, seed=71)
    s, x, w = _to(seeds, data, weights)
    st, ix = _to(starts, indices)
    tol = _tolerance(seeds, data)
    for kernel in ("gaussian", "epanechnikov"):
        small = kernels.blocked_step(s, x, w, st, ix, kernel=kernel, seed_block=12,
                                     block_seeds=16, block_points=16, split=16)
        large = kernels.blocked_step(s, x, w, st, ix, kernel=kernel, seed_block=12,
                                     block_seeds=32, block_points=64)
        torch.testing.assert_close(small.positions, large.positions, atol=tol, rtol=0)
        torch.testing.assert_close(small.log_density, large.log_density, atol=tol, rtol=1e-5)


@pytest.mark.kernels
@pytest.mark.parametrize("n_features", [3, 17])
def test_triton_padding_and_unlisted_rows_never_leak(kernels, n_features):
    """Strided views into NaN-filled buffers, NaN in every unlisted data row."""
    n_points, n_seeds = 70, 25
    seeds, data, weights = _problem(n_points, n_features, n_seeds, weighted=True, seed=80)
    poisoned, poisoned_w = data.clone(), weights.clone()
    poisoned[:30] = float("nan")
    poisoned_w[:30] = float("nan")
    starts, indices = _blocks([20, 0, 50, 7], n_points, seed=81)
    indices = indices.clamp_min(30)
    data_buffer = torch.full((n_points + 9, n_features + 3), float("nan"))
    seed_buffer = torch.full((n_seeds + 5, n_features + 2), float("nan"))
    data_buffer[:n_points, :n_features] = poisoned.float()
    seed_buffer[:n_seeds, :n_features] = seeds.float()
    data_buffer, seed_buffer = _to(data_buffer, seed_buffer)
    s_view, x_view = seed_buffer[:n_seeds, :n_features], data_buffer[:n_points, :n_features]
    (w_view,) = _to(poisoned_w)
    st, ix = _to(starts, indices)
    clean = _to(seeds, data, weights)
    for kernel in KERNELS:
        got = kernels.blocked_step(s_view, x_view, w_view, st, ix, kernel=kernel, seed_block=7)
        ref = kernels.blocked_step(*clean, st, ix, kernel=kernel, seed_block=7)
        assert torch.equal(got.positions, ref.positions) and torch.equal(got.log_density, ref.log_density)
        assert not torch.isnan(got.positions).any()


@pytest.mark.kernels
def test_triton_gaussian_underflow_empty_windows_and_dtypes(kernels):
    seeds, data, weights = _problem(60, 2, 14, weighted=True, seed=90)
    far = seeds + 30.0  # every exp(-d2 / 2) underflows in float32
    starts, indices = _blocks([60, 5, 0], 60, seed=91)
    tol = _tolerance(far, data)
    ref = _blocked_oracle(far, data, weights, starts, indices, 6, "gaussian")
    for split in (None, 16):
        got = kernels.blocked_step(*_to(far, data, weights), *_to(starts, indices), kernel="gaussian",
                                   seed_block=6, split=split)
        _assert_step_close(got, ref, atol=20 * tol, density_atol=tol)
        torch.testing.assert_close(got.log_density.cpu().double(), ref.log_density, atol=tol, rtol=1e-5)
    # Zero weights everywhere: empty, not NaN.  Float64 in, float64 out.
    zero = torch.zeros_like(weights)
    for kernel in KERNELS:
        got = kernels.blocked_step(*_to(seeds, data, zero, dtype=torch.float64), *_to(starts, indices),
                                   kernel=kernel, seed_block=6)
        assert got.positions.dtype == got.log_density.dtype == torch.float64
        assert torch.isneginf(got.log_density).all() and torch.equal(got.positions.cpu(), seeds)
    # No candidates at all.
    got = kernels.blocked_step(*_to(seeds, data, None), *_to(torch.zeros(5, dtype=torch.int64),
                               torch.zeros(0, dtype=torch.int64)), seed_block=4)
    assert torch.isneginf(got.log_density).all()


@pytest.mark.kernels
def test_triton_rejects_bad_input(kernels):
    seeds, data, _ = _problem(10, 2, 5, seed=4)
    s, x = _to(seeds, data)
    starts, indices = _to(*_blocks([2, 3, 1], 10))
    with pytest.raises(ValueError, match="block_starts must have shape"):
        kernels.blocked_step(s, x, None, starts[:-1], indices, seed_block=2)
    with pytest.raises(ValueError, match="power of two"):
        kernels.blocked_step(s, x, None, starts, indices, seed_block=2, block_seeds=24, block_points=16)
    with pytest.raises(ValueError, match="give both"):
        kernels.blocked_step(s, x, None, starts, indices, seed_block=2, block_seeds=16)
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.blocked_step(s, x, None, starts, indices, seed_block=2, kernel="x")
    with pytest.raises(ValueError, match="block_indices must be data rows"):
        kernels.blocked_step(s, x, None, starts, indices + 10, seed_block=2)


@pytest.mark.kernels
@pytest.mark.parametrize("kernel", ["flat", "epanechnikov", "gaussian"])
def test_estimator_grid_pruning_with_triton_backend_matches_torch(kernels, kernel):
    # backend="triton" + neighbors="grid" runs the grid's blocks through the
    # fused block-sparse kernel (the Gaussian keeps the torch step, which
    # truncates exactly); the clustering must equal the torch backend's.
    import numpy as np
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from meanshift_gpu import MeanShift

    X, _ = make_blobs(250, n_features=2, centers=3, cluster_std=0.6, random_state=4)
    X = torch.as_tensor(X, dtype=torch.float32, device=_device())
    params = dict(bandwidth=0.8, kernel=kernel, neighbors="grid", device=str(_device()))
    fused = MeanShift(backend="triton", **params).fit(X)
    plain = MeanShift(backend="torch", **params).fit(X)
    assert fused.neighbors_ == "grid"
    assert fused.cluster_centers_.shape == plain.cluster_centers_.shape
    np.testing.assert_allclose(
        np.sort(fused.cluster_centers_, 0), np.sort(plain.cluster_centers_, 0), atol=2e-3
    )
    assert adjusted_rand_score(plain.labels_, fused.labels_) > 0.99
