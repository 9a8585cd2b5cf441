"""Triton kernels against the float64 torch reference.

Runs on CPU tensors under Triton's interpreter: ``TRITON_INTERPRET=1`` is set
below before anything imports Triton, unless the environment already sets
it.  On a CUDA machine, ``TRITON_INTERPRET=0 pytest -m kernels`` runs the same
tests compiled on the GPU.  Select these tests alone with ``-m kernels``.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

pytestmark = pytest.mark.kernels

triton = pytest.importorskip("triton", reason="Triton is not installed")

from meanshift_gpu import MeanShift, _reference, kernels  # noqa: E402
from meanshift_gpu.kernels import _common  # noqa: E402

DEVICE, _why_not = _common.kernel_device()
if DEVICE is None:
    pytest.skip(_why_not, allow_module_level=True)

FEATURES = (1, 2, 3, 5, 17, 130)
KERNELS = ("flat", "gaussian", "epanechnikov")
EPS32 = torch.finfo(torch.float32).eps


# ----------------------------------------------------------------------------------- helpers
def _to_device(*tensors):
    return [None if t is None else t.to(DEVICE) for t in tensors]


def _problem(n_points, n_features, n_seeds, *, scale=None, weighted=False, seed=0):
    """float32-exact data (float64 tensors holding float32 values), seeds near the data.

    The default spread puts a good share of the points in each window (typical
    squared distance ~1.4) whatever the number of features.
    """
    gen = torch.Generator().manual_seed(seed)
    if scale is None:
        scale = 0.6 * min(1.0, (2.0 / n_features) ** 0.5)
    data = (torch.randn(n_points, n_features, generator=gen, dtype=torch.float64) * scale)
    # Per-feature offsets make features unequal, like real (scaled) data.
    data += torch.linspace(-0.5, 0.5, n_features, dtype=torch.float64)
    seeds = data[:n_seeds] + 0.2 * scale * torch.randn(n_seeds, n_features, generator=gen, dtype=torch.float64)
    weights = None
    if weighted:
        weights = torch.rand(n_points, generator=gen, dtype=torch.float64) * 2
        weights[::7] = 0.0  # zero-weight points must drop out of every sum
        weights = weights.float().double()
    return seeds.float().double(), data.float().double(), weights


def _near_window_edge(seeds, data, margin=1e-4):
    """Mask of seeds with a point within ``margin`` of the flat window edge (d2 = 1).

    float32 kernels and the float64 reference may put such a point on
    different sides of the edge; that is rounding, not a bug.
    """
    d2 = torch.cdist(seeds, data).square()
    return ((d2 - 1).abs() < margin).any(1)


def _away_from_window_edge(seeds, data):
    return seeds[~_near_window_edge(seeds, data)]


def _tolerance(*tensors):
    """float32 error scale of squared distances: eps * (1 + largest squared norm)."""
    largest = max(float(t.square().sum(1).max()) for t in tensors if t.numel())
    return 64 * EPS32 * (1.0 + largest)


def _assert_step_close(got, ref, weights, n_points, tol):
    """``got`` (kernel, any dtype) against the float64 reference ``ref``."""
    ref = type(ref)(ref.positions.to(got.positions.dtype), ref.log_density.to(got.positions.dtype))
    assert torch.isfinite(got.positions).all()
    empty_ref = torch.isneginf(ref.log_density)
    assert torch.equal(torch.isneginf(got.log_density.cpu()), empty_ref)
    torch.testing.assert_close(got.positions.cpu(), ref.positions, atol=tol, rtol=0)
    # Compare densities: their absolute error is bounded by the weight errors.
    max_weight = 1.0 if weights is None else float(weights.max())
    torch.testing.assert_close(
        got.log_density.cpu().exp(), ref.log_density.exp(),
        atol=tol * n_points * max_weight, rtol=1e-5,
    )


# ----------------------------------------------------------------------------- step kernel
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_features", FEATURES)
def test_step_matches_reference(n_features, kernel, weighted):
    seeds, data, weights = _problem(157, n_features, 41, weighted=weighted, seed=n_features)
    if kernel == "flat":
        seeds = _away_from_window_edge(seeds, data)
    ref = _reference.mean_shift_step(seeds, data, weights, kernel=kernel)
    assert torch.isfinite(ref.log_density).sum() >= seeds.shape[0] // 2  # windows are not trivial
    s, x, w = _to_device(seeds.float(), data.float(), None if weights is None else weights.float())
    got = kernels.mean_shift_step(s, x, w, kernel=kernel)
    assert got.positions.dtype == got.log_density.dtype == torch.float32
    _assert_step_close(got, ref, weights, data.shape[0], _tolerance(seeds, data))


@pytest.mark.parametrize("kernel", KERNELS)
def test_step_float64_input_is_computed_in_float32_and_cast_back(kernel):
    seeds, data, _ = _problem(75, 5, 19, seed=3)
    ref = _reference.mean_shift_step(seeds, data, kernel=kernel)
    got = kernels.mean_shift_step(*_to_device(seeds, data), kernel=kernel)
    assert got.positions.dtype == torch.float64 and got.log_density.dtype == torch.float64
    _assert_step_close(got, ref, None, data.shape[0], _tolerance(seeds, data))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_features", [2, 17])
def test_step_results_do_not_depend_on_tile_sizes(n_features, kernel):
    seeds, data, weights = _problem(131, n_features, 37, weighted=True, seed=11)
    s, x, w = _to_device(seeds.float(), data.float(), weights.float())
    small = kernels.mean_shift_step(s, x, w, kernel=kernel, block_seeds=16, block_points=16)
    large = kernels.mean_shift_step(s, x, w, kernel=kernel, block_seeds=64, block_points=128)
    tol = _tolerance(seeds, data)
    torch.testing.assert_close(small.positions, large.positions, atol=tol, rtol=0)
    torch.testing.assert_close(small.log_density, large.log_density, atol=tol, rtol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_features", [2, 17])
def test_padding_rows_and_columns_never_leak(n_features, kernel):
    """Inputs are views into NaN-filled buffers: any read past the edges shows up as NaN."""
    seeds, data, weights = _problem(99, n_features, 23, weighted=True, seed=5)
    n_points, n_seeds = data.shape[0], seeds.shape[0]
    data_buffer = torch.full((n_points + 37, n_features + 3), float("nan"))
    seed_buffer = torch.full((n_seeds + 29, n_features + 5), float("nan"))
    weight_buffer = torch.full((n_points + 41,), float("nan"))
    data_buffer[:n_points, :n_features] = data.float()
    seed_buffer[:n_seeds, :n_features] = seeds.float()
    weight_buffer[:n_points] = weights.float()
    data_buffer, seed_buffer, weight_buffer = _to_device(data_buffer, seed_buffer, weight_buffer)
    got = kernels.mean_shift_step(
        seed_buffer[:n_seeds, :n_features],
        data_buffer[:n_points, :n_features],
        weight_buffer[:n_points],
        kernel=kernel,
    )
    assert not torch.isnan(got.positions).any() and not torch.isnan(got.log_density).any()
    clean = kernels.mean_shift_step(*_to_device(seeds.float(), data.float(), weights.float()), kernel=kernel)
    torch.testing.assert_close(got.positions, clean.positions, atol=0, rtol=0)
    torch.testing.assert_close(got.log_density, clean.log_density, atol=0, rtol=0)


@pytest.mark.parametrize("kernel", ["flat", "epanechnikov"])
@pytest.mark.parametrize("n_features", [1, 3, 17])
def test_empty_windows_keep_their_seed(n_features, kernel):
    seeds, data, weights = _problem(63, n_features, 9, weighted=True, seed=2)
    far = data[:5] + 50.0  # nothing within the bandwidth
    zero_weight = data[:4].clone()
    weights = weights.clone()
    # The windows around these seeds hold only zero-weight points.
    near = torch.cdist(zero_weight, data) <= 1.5
    weights[near.any(0)] = 0.0
    all_seeds = torch.cat([seeds, far, zero_weight])
    ref = _reference.mean_shift_step(all_seeds, data, weights, kernel=kernel)
    got = kernels.mean_shift_step(*_to_device(all_seeds.float(), data.float(), weights.float()), kernel=kernel)
    empty = torch.isneginf(got.log_density.cpu())
    assert empty[-9:].all()
    assert torch.equal(empty, torch.isneginf(ref.log_density))
    # An empty window keeps the old position bit for bit.
    assert torch.equal(got.positions.cpu()[empty], all_seeds.float()[empty])


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("n_features", [2, 17])
def test_gaussian_far_seeds_do_not_underflow_to_nan(n_features, weighted):
    """exp(-d2/2) underflows to 0 for every point; the running max must rescue the mean."""
    seeds, data, weights = _problem(77, n_features, 5, weighted=weighted, seed=7)
    far = data[:5] + 30.0 / n_features**0.5 * torch.ones(n_features, dtype=torch.float64)
    assert float(torch.cdist(far, data).min()) ** 2 / 2 > 200  # exp(-200) is 0 in float32
    ref = _reference.mean_shift_step(far, data, weights, kernel="gaussian")
    got = kernels.mean_shift_step(
        *_to_device(far.float(), data.float(), None if weights is None else weights.float()),
        kernel="gaussian",
    )
    assert torch.isfinite(got.positions).all() and torch.isfinite(got.log_density).all()
    tol = _tolerance(far, data)
    torch.testing.assert_close(got.positions.cpu(), ref.positions.float(), atol=20 * tol, rtol=0)
    # Log densities around -450: compare relative to their size.
    torch.testing.assert_close(got.log_density.cpu(), ref.log_density.float(), atol=tol, rtol=1e-5)


def test_gaussian_all_zero_weights_is_empty_not_nan():
    seeds, data, _ = _problem(45, 5, 7, seed=9)
    weights = torch.zeros(data.shape[0])
    got = kernels.mean_shift_step(*_to_device(seeds.float(), data.float(), weights), kernel="gaussian")
    assert torch.isneginf(got.log_density).all()
    assert torch.equal(got.positions.cpu(), seeds.float())


def test_step_without_points_or_seeds():
    seeds, data, _ = _problem(10, 3, 4, seed=1)
    s, x = _to_device(seeds.float(), data.float())
    no_points = kernels.mean_shift_step(s, x[:0], kernel="gaussian")
    assert torch.equal(no_points.positions, s) and torch.isneginf(no_points.log_density).all()
    no_seeds = kernels.mean_shift_step(s[:0], x)
    assert no_seeds.positions.shape == (0, 3) and no_seeds.log_density.shape == (0,)


@pytest.mark.parametrize("kernel", KERNELS)
def test_step_wide_features_use_feature_tiles(kernel):
    """300 features: the feature axis is cut into tiles and output columns split over programs."""
    seeds, data, weights = _problem(45, 300, 11, weighted=True, seed=13)
    assert _common.feature_tile(300)[1] > 1
    if kernel == "flat":
        seeds = _away_from_window_edge(seeds, data)
    ref = _reference.mean_shift_step(seeds, data, weights, kernel=kernel)
    assert torch.isfinite(ref.log_density).sum() > seeds.shape[0] // 2
    got = kernels.mean_shift_step(*_to_device(seeds.float(), data.float(), weights.float()), kernel=kernel)
    _assert_step_close(got, ref, weights, data.shape[0], _tolerance(seeds, data))


# -------------------------------------------------------------------------- nearest centers
@pytest.mark.parametrize("n_features", FEATURES + (300,))
def test_nearest_centers_matches_reference(n_features):
    gen = torch.Generator().manual_seed(n_features)
    points = torch.randn(151, n_features, generator=gen, dtype=torch.float64).float().double()
    centers = torch.randn(37, n_features, generator=gen, dtype=torch.float64).float().double()
    ref_index, ref_d2 = _reference.nearest_centers(points, centers)
    index, d2 = kernels.nearest_centers(*_to_device(points.float(), centers.float()))
    assert index.dtype == torch.int64
    # Near-ties may flip between float32 and float64; everything else must agree.
    all_d2 = torch.cdist(points, centers).square()
    second = all_d2.sort(1).values[:, 1]
    clear = (second - ref_d2) > _tolerance(points, centers)
    assert clear.float().mean() > 0.9
    assert torch.equal(index.cpu()[clear], ref_index[clear])
    torch.testing.assert_close(d2.cpu().double(), ref_d2, atol=_tolerance(points, centers), rtol=0)


@pytest.mark.parametrize("n_features", [1, 2, 5])
def test_nearest_centers_ties_go_to_the_lowest_index_across_tiles(n_features):
    gen = torch.Generator().manual_seed(3)
    points = torch.randint(-3, 4, (53, n_features), generator=gen).double()
    centers = torch.randint(-3, 4, (40, n_features), generator=gen).double()
    centers[25] = centers[3]  # duplicate in a later center tile (tiles of 16)
    centers[34] = centers[3]
    ref_index, ref_d2 = _reference.nearest_centers(points, centers)
    for tiles in ((16, 16), (64, 64)):
        index, d2 = kernels.nearest_centers(
            *_to_device(points.float(), centers.float()), block_points=tiles[0], block_centers=tiles[1]
        )
        # Integer coordinates: distances are exact, so ties are real ties.
        assert torch.equal(d2.cpu().double(), ref_d2)
        assert torch.equal(index.cpu(), ref_index)
        assert not torch.isin(index.cpu(), torch.tensor([25, 34])).any()


def test_nearest_centers_boundary_distance_is_exact_for_small_dimensions():
    # cluster_all=False keeps points with d2 <= 1 (inclusive): d2 must be exactly 1 here.
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.6, 0.8], [2.0, 2.0]])
    centers = torch.tensor([[0.0, 1.0], [5.0, 5.0]])
    _, d2 = kernels.nearest_centers(*_to_device(points, centers))
    assert d2.cpu().tolist()[0] == 1.0 and d2.cpu().tolist()[1] == 2.0


# ------------------------------------------------------------------------------ k-th neighbour
@pytest.mark.parametrize("n_features", [1, 3, 5, 130])
def test_kth_neighbor_distance_matches_reference(n_features):
    gen = torch.Generator().manual_seed(n_features)
    data = torch.randn(97, n_features, generator=gen, dtype=torch.float64).float().double()
    x = data.float().to(DEVICE)
    tol = _tolerance(data) ** 0.5  # distances, not squared distances
    for k in (1, 29, 97):
        ref = _reference.kth_neighbor_distance(data, data, k)
        got = kernels.kth_neighbor_distance(x, x, k, query_block=40)
        torch.testing.assert_close(got.cpu().double(), ref, atol=tol, rtol=1e-5)
    if n_features <= _common.EXACT_MAX_FEATURES:  # per-feature differences: self-distance is 0
        assert torch.equal(kernels.kth_neighbor_distance(x, x, 1).cpu(), torch.zeros(97))


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_rejected_with_clear_errors():
    x = torch.zeros(5, 3, device=DEVICE)
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.mean_shift_step(x, x, kernel="cosine")
    with pytest.raises(ValueError, match="features"):
        kernels.mean_shift_step(x, torch.zeros(5, 2, device=DEVICE))
    with pytest.raises(ValueError, match="weights must have shape"):
        kernels.mean_shift_step(x, x, torch.ones(4, device=DEVICE))
    with pytest.raises(ValueError, match="power of two"):
        kernels.mean_shift_step(x, x, block_seeds=24, block_points=32)
    with pytest.raises(ValueError, match="give both block_points and block_centers"):
        kernels.nearest_centers(x, x, block_points=16)
    with pytest.raises(ValueError, match="at least one center"):
        kernels.nearest_centers(x, x[:0])
    with pytest.raises(ValueError, match="k must be in"):
        kernels.kth_neighbor_distance(x, x, 6)
    with pytest.raises(ValueError, match="2-D"):
        kernels.nearest_centers(x[0], x)


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, meanshift_gpu\n"
        "from meanshift_gpu import kernels\n"
        "try:\n"
        "    kernels.mean_shift_step(torch.zeros(2, 2), torch.zeros(2, 2))\n"
        "except ImportError as exc:\n"
        "    assert 'pip install' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('expected ImportError')\n"
        "print(meanshift_gpu.MeanShift(bandwidth=1.0, device='cpu').fit([[0.0], [0.1], [5.0]]).labels_.tolist())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 0, 1]"


# ------------------------------------------------------------------------------- estimator
def _spy_on_kernels(monkeypatch):
    calls = {"step": 0, "nearest": 0, "kth": 0}

    def wrap(name, key):
        original = getattr(kernels, name)

        def counted(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)

    wrap("mean_shift_step", "step")
    wrap("nearest_centers", "nearest")
    wrap("kth_neighbor_distance", "kth")
    # Standard fits step through the fused ascent kernel (one call = several steps).
    from meanshift_gpu.kernels import _ascent

    original_ascent = _ascent.ascent_steps

    def counted_ascent(*args, **kwargs):
        calls["step"] += 1
        return original_ascent(*args, **kwargs)

    monkeypatch.setattr(_ascent, "ascent_steps", counted_ascent)
    return calls


def _assert_same_clustering(a, b, bandwidth):
    assert adjusted_rand_score(a.labels_, b.labels_) == 1.0
    assert a.cluster_centers_.shape == b.cluster_centers_.shape
    # Match centers through the labels (same partition), then compare positions.
    for label_a in range(len(a.cluster_centers_)):
        label_b = np.bincount(b.labels_[a.labels_ == label_a]).argmax()
        np.testing.assert_allclose(a.cluster_centers_[label_a], b.cluster_centers_[label_b],
                                   atol=1e-2 * bandwidth)


@pytest.mark.parametrize(
    "kernel, algorithm, bin_seeding, weighted",
    [
        ("flat", "standard", False, False),
        ("gaussian", "standard", True, True),
        ("epanechnikov", "standard", True, False),
        ("gaussian", "blurring", False, False),
    ],
)
def test_estimator_triton_backend_matches_torch(monkeypatch, kernel, algorithm, bin_seeding, weighted):
    X, _ = make_blobs(n_samples=181, centers=3, n_features=3, cluster_std=0.5, random_state=1)
    X = X.astype(np.float32)
    sample_weight = np.random.default_rng(0).uniform(0.5, 2.0, len(X)) if weighted else None
    params = dict(bandwidth=1.8, kernel=kernel, algorithm=algorithm, bin_seeding=bin_seeding, device=DEVICE.type)
    calls = _spy_on_kernels(monkeypatch)
    fast = MeanShift(backend="triton", **params).fit(X, sample_weight=sample_weight)
    assert calls["step"] > 0
    if algorithm == "standard":
        assert calls["nearest"] > 0
    ref = MeanShift(backend="torch", **params).fit(X, sample_weight=sample_weight)
    assert len(fast.cluster_centers_) == 3
    _assert_same_clustering(fast, ref, 1.8)


def test_estimator_triton_backend_per_feature_bandwidth_matches_torch(monkeypatch):
    """Features in different units: a per-feature bandwidth scales the inputs before the kernels."""
    X, _ = make_blobs(n_samples=163, centers=3, n_features=3, cluster_std=0.5, random_state=2)
    X = (X * np.array([1.0, 40.0, 0.05])).astype(np.float32)
    bandwidth = np.array([1.8, 72.0, 0.09])
    calls = _spy_on_kernels(monkeypatch)
    fast = MeanShift(backend="triton", bandwidth=bandwidth, kernel="gaussian", device=DEVICE.type).fit(X)
    assert calls["step"] > 0 and calls["nearest"] > 0
    ref = MeanShift(backend="torch", bandwidth=bandwidth, kernel="gaussian", device=DEVICE.type).fit(X)
    assert len(fast.cluster_centers_) == 3
    assert adjusted_rand_score(fast.labels_, ref.labels_) == 1.0
    for label in range(3):
        other = np.bincount(ref.labels_[fast.labels_ == label]).argmax()
        np.testing.assert_allclose(fast.cluster_centers_[label] / bandwidth,
                                   ref.cluster_centers_[other] / bandwidth, atol=1e-2)


def test_estimator_triton_backend_estimates_the_same_bandwidth(monkeypatch):
    X, _ = make_blobs(n_samples=151, centers=3, n_features=2, cluster_std=0.6, random_state=4)
    X = X.astype(np.float32)
    calls = _spy_on_kernels(monkeypatch)
    fast = MeanShift(backend="triton", bin_seeding=True, device=DEVICE.type).fit(X)
    # The estimate is computed in float64 on the CPU (sklearn parity), which the
    # float32 k-th-distance kernel leaves to torch; on a GPU float32 data use it.
    assert calls["kth"] == (1 if DEVICE.type == "cuda" else 0)
    ref = MeanShift(backend="torch", bin_seeding=True, device=DEVICE.type).fit(X)
    assert fast.bandwidth_ == pytest.approx(ref.bandwidth_, rel=1e-5)
    _assert_same_clustering(fast, ref, ref.bandwidth_)
