"""The fused ascent kernel (``meanshift_gpu.kernels._ascent``) against the float64 torch reference.

Device: the CPU under Triton's interpreter (``TRITON_INTERPRET=1`` is set below
before anything imports Triton, unless the environment sets it), or CUDA
compiled with ``TRITON_INTERPRET=0 pytest -m kernels``.  Shapes are small so
the interpreter stays fast.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

pytestmark = pytest.mark.kernels

triton = pytest.importorskip("triton", reason="Triton is not installed")

from meanshift_gpu import MeanShift, _reference  # noqa: E402
from meanshift_gpu._engine import ascent as _engine  # noqa: E402
from meanshift_gpu._engine.backends import Blocks, resolve_backend  # noqa: E402
from meanshift_gpu.kernels import _ascent, _common  # noqa: E402
from meanshift_gpu.kernels._tiles import Tile  # noqa: E402

DEVICE, _why_not = _common.kernel_device()
if DEVICE is None:
    pytest.skip(_why_not, allow_module_level=True)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# One step's positions: float rounding of a weighted mean of O(1) coordinates.
STEP_ATOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _blobs(n, d, dtype, seed=0, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, d, generator=gen, dtype=torch.float64) * 3 * spread
    x = centers[torch.randint(0, 3, (n,), generator=gen)] + torch.randn(n, d, generator=gen, dtype=torch.float64) * spread
    return x.to(dtype).to(DEVICE)


def _state(seeds):
    m = seeds.shape[0]
    return dict(
        positions=seeds.clone().contiguous(),
        density=torch.zeros(m, dtype=seeds.dtype, device=DEVICE),
        logit_max=torch.zeros(m, dtype=seeds.dtype, device=DEVICE),
        n_iter=torch.zeros(m, dtype=torch.long, device=DEVICE),
        done=torch.zeros(m, dtype=torch.int8, device=DEVICE),
    )


def _one_step(seeds, data, weights, kernel, ranges=None, tile=None, variant=None):
    st = _state(seeds)
    if ranges is None:
        data_t, w = data.T.contiguous(), weights
        order = torch.arange(seeds.shape[0], device=DEVICE)
    else:
        data_t, w = ranges.data_t, ranges.weights
        order = torch.argsort(ranges.seed_keys(seeds))
    if w is not None and kernel == "gaussian":
        w = torch.log2(w)
    _ascent.ascent_steps(st["positions"], st["density"], st["logit_max"], st["n_iter"], st["done"], order,
                         data_t, w, kernel=kernel, tol=1e-3, max_iter=300, ranges=ranges, tile=tile,
                         variant=variant)
    log_density = torch.log(st["density"])
    if kernel == "gaussian":
        log_density = log_density + st["logit_max"] * math.log(2.0)
    return st, log_density


def _truncated_reference(seeds, data, weights, kernel, reach):
    """float64 step with weights beyond ``reach`` set to zero (what the ranges kernel computes)."""
    s, x = seeds.double().cpu(), data.double().cpu()
    w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else weights.double().cpu()
    d2 = _reference.squared_distances(s, x)
    if kernel == "flat":
        k = (d2 <= 1.0).double()
    elif kernel == "epanechnikov":
        k = (1.0 - d2).clamp_min(0.0)
    else:
        k = torch.exp(-0.5 * d2)
    k = k * w * (d2 <= reach * reach)
    total = k.sum(1)
    return (k @ x) / total[:, None], torch.log(total)


# "mma" runs the weighted sums on the tensor cores (float32 only: float64 keeps "reduce").
VARIANT_CASES = [("float32", "reduce"), ("float64", "reduce"), ("float32", "mma")]


@pytest.mark.parametrize("dtype,variant", VARIANT_CASES, ids=lambda v: v)
@pytest.mark.parametrize("kernel", ["flat", "gaussian", "epanechnikov"])
@pytest.mark.parametrize("n_features", [1, 3, 8])
def test_dense_step_matches_reference(dtype, variant, kernel, n_features):
    dtype = DTYPES[dtype]
    data = _blobs(150, n_features, dtype, seed=n_features, spread=0.6)
    weights = torch.rand(150, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype).to(DEVICE) + 0.5
    seeds = data[:70]
    st, log_density = _one_step(seeds, data, weights, kernel, variant=variant)
    ref = _reference.mean_shift_step(seeds.double().cpu(), data.double().cpu(), weights.double().cpu(), kernel=kernel)
    np.testing.assert_allclose(st["positions"].double().cpu(), ref.positions, atol=STEP_ATOL[dtype], rtol=0)
    np.testing.assert_allclose(log_density.double().cpu(), ref.log_density, atol=STEP_ATOL[dtype], rtol=0)
    assert int(st["n_iter"].sum()) + int(st["done"].sum()) == 70  # each seed either stopped or stepped once


@pytest.mark.parametrize("dtype,variant", VARIANT_CASES, ids=lambda v: v)
@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
@pytest.mark.parametrize("n_features,per_reach", [(1, 2), (2, 1), (3, 2), (4, 1)])
def test_ranges_step_matches_truncated_reference(dtype, variant, kernel, n_features, per_reach):
    dtype = DTYPES[dtype]
    reach = 3.0 if kernel == "gaussian" else 1.0
    data = _blobs(160, n_features, dtype, seed=10 + n_features, spread=0.8)
    weights = torch.rand(160, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype).to(DEVICE) + 0.5
    seeds = data[torch.randperm(160, generator=torch.Generator().manual_seed(3))[:64].to(DEVICE)]
    ranges = _ascent.GridRanges.build(data, weights, reach, cells_per_reach=per_reach)
    assert ranges is not None
    st, log_density = _one_step(seeds, data, weights, kernel, ranges, variant=variant)
    ref_pos, ref_log = _truncated_reference(seeds, data, weights, kernel, reach)
    np.testing.assert_allclose(st["positions"].double().cpu(), ref_pos, atol=STEP_ATOL[dtype], rtol=0)
    np.testing.assert_allclose(log_density.double().cpu(), ref_log, atol=STEP_ATOL[dtype], rtol=0)


def test_ranges_read_points_exactly_one_reach_away():
    """Integer data: points exactly at distance 1 are inside the flat window (sklearn's ``<=``)."""
    grid = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij"), -1).reshape(-1, 2)
    data = grid.to(DEVICE)
    for per_reach in (1, 2):
        ranges = _ascent.GridRanges.build(data, None, 1.0, cells_per_reach=per_reach)
        st, log_density = _one_step(data, data, None, "flat", ranges)
        ref = _reference.mean_shift_step(data.double().cpu(), data.double().cpu(), kernel="flat")
        np.testing.assert_allclose(st["positions"].double().cpu(), ref.positions, atol=1e-6, rtol=0)
        np.testing.assert_allclose(log_density.double().cpu(), ref.log_density, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("use_ranges", [False, True])
def test_points_exactly_one_bandwidth_away_count_after_scaling(dtype, use_ranges):
    """Integer data divided by a bandwidth of 5: distances of exactly 5 become 1 up to rounding,
    and the kernel counts them as the flat edge says (scikit-learn's neighbour counts)."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(4)
    X = rng.integers(0, 16, size=(150, 2)).astype(np.float64)
    expected = [len(r) for r in NearestNeighbors(radius=5.0).fit(X).radius_neighbors(X, return_distance=False)]
    scaled = ((torch.as_tensor(X) - torch.as_tensor(X).median(0).values) / 5.0).to(DTYPES[dtype]).to(DEVICE)
    edge = _reference.flat_edge_for(DTYPES[dtype], 2, _reference.typical_extent(scaled.double().cpu()))
    with _reference.using_flat_edge(edge):
        ranges = _ascent.GridRanges.build(scaled, None, math.sqrt(edge), cells_per_reach=2) if use_ranges else None
        _, log_density = _one_step(scaled, scaled, None, "flat", ranges)
    counts = log_density.double().exp().round().long().cpu()
    assert counts.tolist() == expected


def test_results_do_not_depend_on_the_tile():
    data = _blobs(200, 2, torch.float32, seed=5)
    a, _ = _one_step(data[:90], data, None, "gaussian", tile=Tile(16, 32))
    b, _ = _one_step(data[:90], data, None, "gaussian", tile=Tile(64, 64))
    np.testing.assert_allclose(a["positions"].cpu(), b["positions"].cpu(), atol=2e-6, rtol=0)


def test_stopped_seeds_and_empty_windows_keep_their_state():
    data = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]], device=DEVICE)
    seeds = torch.tensor([[0.1, 0.1], [50.0, 50.0], [0.2, 0.2]], device=DEVICE)
    st = _state(seeds)
    st["done"][2] = 1
    st["n_iter"][2] = 7
    _ascent.ascent_steps(st["positions"], st["density"], st["logit_max"], st["n_iter"], st["done"],
                         torch.arange(3, device=DEVICE), data.T.contiguous(), None,
                         kernel="flat", tol=0.0, max_iter=300)
    pos = st["positions"].cpu()
    np.testing.assert_allclose(pos[0], [1 / 6, 1 / 6], atol=1e-6)
    assert pos[1].tolist() == [50.0, 50.0] and float(st["density"][1]) == 0.0 and int(st["done"][1]) == 1
    assert pos[2].tolist() == pytest.approx([0.2, 0.2]) and int(st["n_iter"][2]) == 7  # not stepped
    assert int(st["n_iter"][0]) == 1 and int(st["done"][0]) == 0


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
@pytest.mark.parametrize("use_ranges", [False, True], ids=["dense", "ranges"])
def test_fused_ascent_matches_the_host_loop(kernel, use_ranges):
    """Whole ascents: same stopping rules, iteration counts and end points as ``ascend_seeds``."""
    data = _blobs(180, 2, torch.float64, seed=7)
    config = _engine.EngineConfig(backend=resolve_backend("triton", DEVICE), kernel=kernel,
                                  blocks=Blocks(64, 256), tol=1e-3, max_iter=300)
    reach = 3.0 if kernel == "gaussian" else 1.0
    ranges = _ascent.GridRanges.build(data, None, reach, cells_per_reach=2) if use_ranges else None
    # steps_per_sync=3 makes seeds idle inside launches after they stop.
    fused = _engine.ascend_fused(data, data, None, config, ranges, steps_per_sync=3)
    torch_config = _engine.EngineConfig(backend=resolve_backend("torch", DEVICE), kernel=kernel,
                                        blocks=Blocks(64, 256), tol=1e-3, max_iter=300)
    if use_ranges and kernel == "gaussian":
        d2 = _reference.squared_distances(data.cpu(), data.cpu())

        def step(seeds, k, blocks):
            s = seeds.cpu()
            d2s = _reference.squared_distances(s, data.cpu())
            w = torch.exp(-0.5 * d2s) * (d2s <= reach * reach)
            total = w.sum(1)
            return _reference.StepResult(((w @ data.cpu()) / total[:, None]).to(DEVICE), torch.log(total).to(DEVICE))

        host = _engine.ascend_seeds(data, data, None, torch_config, step)
        del d2
    else:
        host = _engine.ascend_seeds(data, data, None, torch_config)
    np.testing.assert_allclose(fused.positions.cpu(), host.positions.cpu(), atol=1e-9, rtol=0)
    np.testing.assert_allclose(fused.log_density.cpu(), host.log_density.cpu(), atol=1e-9, rtol=0)
    assert torch.equal(fused.n_iter.cpu(), host.n_iter.cpu())


@pytest.mark.parametrize("neighbors", ["dense", "grid"])
def test_estimator_uses_the_fused_ascent_and_matches_torch(neighbors):
    X, _ = make_blobs(200, n_features=3, centers=4, random_state=0)
    fused = MeanShift(bandwidth=2.0, backend="triton", device=DEVICE, neighbors=neighbors).fit(X)
    assert fused.fit_info_["ascent"].startswith("fused")
    assert fused.fit_info_["step"] is None and "kernel_tile" in fused.fit_info_  # the kernel is the step
    host = MeanShift(bandwidth=2.0, backend="torch", device="cpu", neighbors=neighbors).fit(X)
    assert fused.cluster_centers_.shape == host.cluster_centers_.shape
    np.testing.assert_allclose(np.sort(fused.cluster_centers_, 0), np.sort(host.cluster_centers_, 0), atol=1e-9)
    assert adjusted_rand_score(fused.labels_, host.labels_) == 1.0
    assert fused.n_iter_ == host.n_iter_


def test_grid_table_too_large_returns_none():
    data = torch.tensor([[0.0, 0.0], [1e6, 1e6]], device=DEVICE)
    assert _ascent.GridRanges.build(data, None, 1.0, max_cells=1 << 20) is None


def test_the_engine_knows_the_kernels_feature_limit():
    from meanshift_gpu import kernels

    assert kernels._ascent_max_features() == _ascent.MAX_FEATURES
