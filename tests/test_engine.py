"""The private engine pieces: merging, labelling, OOM retry and the seed ascent.

These functions work in scaled coordinates (bandwidth 1).  Each is checked
against a direct numpy transcription of scikit-learn's rule, or against the
same engine call without the complication under test (tiling, OOM).

Tests that take the ``device`` argument run the engine on tensors of that
device (CPU, and CUDA where present) with the torch backend; the hash-grid
merge and labels (the C extension) and the CPU tile sizes are CPU-only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from meanshift_gpu._engine import ascent as _engine
from meanshift_gpu._neighbors import compiled as _compiled
from meanshift_gpu._decisions import auto_blocks
from meanshift_gpu._engine.backends import Blocks, resolve_backend

CPU = torch.device("cpu")
OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def _config(*, kernel="flat", tol=1e-3, max_iter=300, blocks=Blocks(256, 4096), backend=None):
    return _engine.EngineConfig(
        backend=backend or resolve_backend("torch", CPU),
        kernel=kernel,
        blocks=blocks,
        tol=tol,
        max_iter=max_iter,
    )


def _t(a, *, device="cpu"):
    return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)


# ------------------------------------------------------------------ merge_modes
def _sklearn_merge(positions: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """scikit-learn's merge: drop empty windows, collapse duplicates (keeping the
    highest intensity), sort by (intensity, coordinates) descending, greedy
    removal within distance <= 1."""
    best: dict[tuple, float] = {}
    for p, i in zip(map(tuple, positions), intensity):
        if np.isfinite(i):
            best[p] = max(best.get(p, -np.inf), i)
    ordered = sorted(best.items(), key=lambda t: (t[1], t[0]), reverse=True)
    kept: list[tuple] = []
    for p, _ in ordered:
        if all(np.linalg.norm(np.subtract(p, k)) > 1.0 for k in kept):
            kept.append(p)
    return np.array(kept).reshape(-1, positions.shape[1])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("merge_block", [1, 3, 7, 4096])
def test_merge_modes_matches_sklearns_rule(seed, merge_block, device):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 4))
    # Candidates scattered around a few modes, some exact duplicates, integer
    # intensities (so ties occur) and a few empty windows.
    modes = rng.uniform(-4, 4, size=(5, d))
    positions = modes[rng.integers(0, 5, 80)] + rng.normal(scale=0.4, size=(80, d))
    positions[60:70] = positions[:10]
    intensity = rng.integers(1, 6, 80).astype(np.float64)
    intensity[rng.integers(0, 80, 6)] = -np.inf
    expected = _sklearn_merge(positions, intensity)
    got = _engine.merge_modes(_t(positions, device=device), _t(intensity, device=device), merge_block=merge_block)
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    assert 1 < len(expected) < 80  # the case exercises merging


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_merge_on_the_hash_grid_equals_the_blockwise_merge(dtype, n_features):
    if _compiled.unavailable():
        pytest.skip(_compiled.unavailable())
    g = torch.Generator().manual_seed(n_features)
    # A lattice of step 1/4 puts many pairs at distance exactly 1 (and at
    # sqrt(1/2), sqrt(5)/4...); near-duplicates 1e-7 apart straddle cells.
    lattice = torch.round(torch.rand(3000, n_features, generator=g, dtype=torch.float64) * 80) / 4
    noisy = lattice[:300] + 1e-7 * torch.randn(300, n_features, generator=g, dtype=torch.float64)
    positions = torch.cat([lattice, noisy, lattice[:200] + 1.0]).to(dtype)
    intensity = torch.randint(0, 4, (positions.shape[0],), generator=g).to(dtype)
    blockwise = _engine.merge_modes(positions, intensity, grid=False)
    on_grid = _engine.merge_modes(positions, intensity, grid=True)
    assert torch.equal(on_grid, blockwise)
    assert 10 < on_grid.shape[0] < 0.6 * positions.shape[0]  # the case exercises merging
    small = positions[:40]
    expected = _sklearn_merge(small.double().cpu().numpy(), intensity[:40].double().cpu().numpy())
    if dtype == torch.float64:
        np.testing.assert_array_equal(_engine.merge_modes(small, intensity[:40], grid=True).cpu().numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_labels_from_the_center_grid_equal_the_dense_search(dtype, n_features):
    if _compiled.unavailable():
        pytest.skip(_compiled.unavailable())
    from meanshift_gpu._reference import nearest_centers

    g = torch.Generator().manual_seed(n_features)
    # Points on a 1/4 lattice, centers on a 1/2 lattice (and 30 of them twice):
    # many points are equally far from several centers; ties go to the lowest index.
    points = torch.round(torch.rand(4000, n_features, generator=g, dtype=torch.float64) * 160) / 4
    points = torch.cat([points, points[:50] * 10 - 200]).to(dtype)  # far outside: every center compared
    centers = torch.round(torch.rand(400, n_features, generator=g, dtype=torch.float64) * 80) / 2
    centers = torch.cat([centers, centers[:30]]).to(dtype)
    index, dist2 = _engine._nearest_on_grid(points, centers, force=True)
    expected_index, expected_dist2 = nearest_centers(points, centers)
    assert torch.equal(index, expected_index)
    assert torch.equal(dist2, expected_dist2)


def test_merge_modes_ties_go_to_the_larger_coordinates(device):
    # Equal intensity: scikit-learn keeps the lexicographically larger center.
    got = _engine.merge_modes(_t([[0.0, 0.0], [0.5, 0.0], [0.5, -0.1]], device=device), _t([3.0, 3.0, 3.0], device=device))
    np.testing.assert_array_equal(got.cpu().numpy(), [[0.5, 0.0]])


def test_merge_modes_denser_wins_and_order_is_by_intensity(device):
    positions = _t([[0.0], [0.9], [5.0], [20.0]], device=device)
    got = _engine.merge_modes(positions, _t([1.0, 2.0, 7.0, 4.0], device=device))
    np.testing.assert_array_equal(got.cpu().numpy(), [[5.0], [20.0], [0.9]])


def test_merge_modes_radius_is_inclusive(device):
    assert _engine.merge_modes(_t([[0.0], [1.0]], device=device), _t([2.0, 1.0], device=device)).shape[0] == 1
    assert _engine.merge_modes(_t([[0.0], [1.0 + 1e-12]], device=device), _t([2.0, 1.0], device=device)).shape[0] == 2
    # Distance exactly 1 in 2-D (a 3-4-5 triangle scaled by 1/5).
    assert _engine.merge_modes(_t([[0.0, 0.0], [0.6, 0.8]], device=device), _t([2.0, 1.0], device=device)).shape[0] == 1


def test_merge_modes_duplicates_keep_their_best_intensity(device):
    # [1] appears twice (intensities 1 and 9): it beats [0.5] (intensity 5).
    got = _engine.merge_modes(_t([[1.0], [0.5], [1.0]], device=device), _t([1.0, 5.0, 9.0], device=device))
    np.testing.assert_array_equal(got.cpu().numpy(), [[1.0]])


def test_merge_modes_drops_empty_windows(device):
    got = _engine.merge_modes(_t([[0.0], [3.0]], device=device), _t([-math.inf, 1.0], device=device))
    np.testing.assert_array_equal(got.cpu().numpy(), [[3.0]])
    none = _engine.merge_modes(_t([[0.0], [3.0]], device=device), _t([-math.inf, -math.inf], device=device))
    assert none.shape == (0, 1)


# ---------------------------------------------------------------- assign_labels
@pytest.mark.parametrize("blocks", [Blocks(256, 4096), Blocks(1, 64), Blocks(3, 100)])
@pytest.mark.parametrize("n_features", [1, 2, 5])
def test_assign_labels_is_the_nearest_center(blocks, n_features, device):
    rng = np.random.default_rng(n_features)
    points = rng.uniform(-3, 3, size=(500, n_features))
    centers = rng.uniform(-3, 3, size=(7, n_features))
    dist = np.linalg.norm(points[:, None] - centers[None], axis=2)
    got = _engine.assign_labels(_t(points, device=device), _t(centers, device=device), _config(blocks=blocks), True)
    np.testing.assert_array_equal(got.cpu().numpy(), dist.argmin(1))
    orphans = _engine.assign_labels(_t(points, device=device), _t(centers, device=device), _config(blocks=blocks), False)
    np.testing.assert_array_equal(orphans.cpu().numpy(), np.where(dist.min(1) <= 1.0, dist.argmin(1), -1))
    assert (orphans.cpu().numpy() == -1).any() and (orphans.cpu().numpy() >= 0).any()


def test_assign_labels_ties_and_boundary(device):
    points = _t([[0.0], [1.0], [2.0], [3.0], [-1.0]], device=device)
    centers = _t([[0.0], [2.0]], device=device)
    # 1.0 is equidistant: the lower index wins.
    labels = _engine.assign_labels(points, centers, _config(), True)
    np.testing.assert_array_equal(labels.cpu().numpy(), [0, 0, 1, 1, 0])
    # Exactly one bandwidth away is inside (sklearn's radius_neighbors is inclusive).
    labels = _engine.assign_labels(_t([[3.0], [3.5], [-1.0]], device=device), centers, _config(), False)
    np.testing.assert_array_equal(labels.cpu().numpy(), [1, -1, 0])


# -------------------------------------------------------- call_shrinking_on_oom
class _OOMAbove:
    """Wraps a blocked function; raises CUDA-style OOM when a tile is too big."""

    def __init__(self, fn, max_elements, error=OOM):
        self.fn, self.max_elements, self.error = fn, max_elements, error
        self.tried: list[Blocks] = []

    def __call__(self, *args):
        blocks = args[-1]
        self.tried.append(blocks)
        if blocks.seeds * blocks.points > self.max_elements:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.fn(*args)


def _step(seeds, data, blocks):
    from meanshift_gpu._reference import mean_shift_step

    return mean_shift_step(seeds, data, None, kernel="gaussian", seed_block=blocks.seeds, point_block=blocks.points)


def _cpu_allocator_error(_message):
    # What torch's CPU allocator raises when a tile does not fit in host memory.
    return RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 8589934592 bytes."
    )


@pytest.mark.parametrize(
    "error",
    [OOM, RuntimeError, _cpu_allocator_error],
    ids=["OutOfMemoryError", "RuntimeError-message", "cpu-allocator"],
)
def test_call_shrinking_on_oom_retries_with_smaller_tiles(error, device):
    rng = np.random.default_rng(0)
    data = _t(rng.normal(size=(1000, 3)), device=device)
    seeds = data[:200]
    start = _config(blocks=Blocks(256, 1024))
    expected, unchanged = _engine.call_shrinking_on_oom(_step, start, seeds, data)
    assert unchanged.blocks == start.blocks

    flaky = _OOMAbove(_step, max_elements=64 * 300, error=error)  # fits at 64 x 256
    got, shrunk = _engine.call_shrinking_on_oom(flaky, start, seeds, data)
    torch.testing.assert_close(got.positions, expected.positions, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.log_density, expected.log_density, rtol=1e-12, atol=1e-12)
    # The tile shrank until it fitted, and the config says so (later calls reuse it).
    assert shrunk.blocks.seeds * shrunk.blocks.points <= flaky.max_elements
    assert shrunk.blocks.seeds <= start.blocks.seeds and shrunk.blocks.points <= start.blocks.points
    assert shrunk.blocks.seeds * shrunk.blocks.points < start.blocks.seeds * start.blocks.points
    assert len(flaky.tried) > 1 and flaky.tried[-1] == shrunk.blocks
    sizes = [b.seeds * b.points for b in flaky.tried]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_call_shrinking_on_oom_gives_up_at_the_smallest_tile():
    always = _OOMAbove(_step, max_elements=0)
    data = _t(np.zeros((10, 2)))
    with pytest.raises(OOM, match="out of memory"):
        _engine.call_shrinking_on_oom(always, _config(blocks=Blocks(8, 1024)), data, data)
    assert always.tried[-1] == Blocks(1, 256)
    assert len(always.tried) < 20


def test_call_shrinking_on_oom_reraises_other_errors_at_once():
    calls = []

    def broken(blocks):
        calls.append(blocks)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        _engine.call_shrinking_on_oom(broken, _config())
    assert len(calls) == 1


def test_ascent_and_labels_survive_oom_in_the_backend(device):
    """A backend that runs out of memory on big tiles gives the no-OOM result."""
    rng = np.random.default_rng(1)
    data = _t(np.concatenate([rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) + 6]), device=device)
    plain = _config(blocks=Blocks(512, 8192))
    torch_backend = resolve_backend("torch", CPU)
    step = _OOMAbove(torch_backend.step, max_elements=128 * 256)
    nearest = _OOMAbove(torch_backend.nearest, max_elements=128 * 256)
    flaky = dataclasses.replace(plain, backend=dataclasses.replace(torch_backend, step=step, nearest=nearest))

    expected = _engine.ascend_seeds(data, data, None, plain)
    got = _engine.ascend_seeds(data, data, None, flaky)
    torch.testing.assert_close(got.positions, expected.positions, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.n_iter, expected.n_iter)
    assert any(b.seeds * b.points > step.max_elements for b in step.tried)  # it did hit OOM

    centers = _engine.merge_modes(expected.positions, expected.log_density)
    labels = _engine.assign_labels(data, centers, flaky, True)
    torch.testing.assert_close(labels, _engine.assign_labels(data, centers, plain, True))
    assert any(b.seeds * b.points > nearest.max_elements for b in nearest.tried)


# ------------------------------------------------------------------ ascend_seeds
def _numpy_ascent(seeds, data, kernel, tol, max_iter):
    """scikit-learn's _mean_shift_single_seed loop, per seed, any kernel."""
    profile = {
        "flat": lambda d2: (d2 <= 1.0) * 1.0,
        "gaussian": lambda d2: np.exp(-d2 / 2),
        "epanechnikov": lambda d2: np.maximum(0.0, 1 - d2),
    }[kernel]
    out, log_density, n_iter = [], [], []
    for q in seeds:
        completed = 0
        while True:
            k = profile(((data - q) ** 2).sum(1))
            if k.sum() == 0:
                out.append(q), log_density.append(-np.inf), n_iter.append(completed)
                break
            new = k @ data / k.sum()
            if np.linalg.norm(new - q) <= tol or completed == max_iter:
                out.append(new), log_density.append(np.log(k.sum())), n_iter.append(completed)
                break
            q, completed = new, completed + 1
    return np.array(out), np.array(log_density), np.array(n_iter)


@pytest.mark.parametrize(
    "kernel, tol, max_iter",
    [
        (kernel, tol, max_iter)
        for kernel in ("flat", "gaussian", "epanechnikov")
        for tol, max_iter in [(1e-3, 300), (0.2, 300), (1e-3, 0), (1e-3, 2)]
    ]
    # tol=0 asks for an exact fixed point: the flat kernel reaches one when
    # its window stops changing; the smooth kernels only reach one through
    # rounding, which differs between any two implementations.
    + [("flat", 0.0, 300)],
)
def test_ascend_seeds_stopping_rule_matches_sklearns_loop(kernel, tol, max_iter, device):
    rng = np.random.default_rng(7)
    data = np.concatenate([rng.normal(size=(60, 2)) * 0.6, rng.normal(size=(60, 2)) * 0.6 + 2.5])
    seeds = data[::4]
    if kernel != "gaussian":  # a seed whose window is empty (the Gaussian's never is)
        seeds = np.concatenate([seeds, [[30.0, 30.0]]])
    expected = _numpy_ascent(seeds, data, kernel, tol, max_iter)
    got = _engine.ascend_seeds(_t(seeds, device=device), _t(data, device=device), None, _config(kernel=kernel, tol=tol, max_iter=max_iter))
    np.testing.assert_array_equal(got.n_iter.cpu().numpy(), expected[2])
    np.testing.assert_allclose(got.positions.cpu().numpy(), expected[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.log_density.cpu().numpy(), expected[1], rtol=1e-12)
    if kernel != "gaussian":
        assert np.isneginf(got.log_density[-1].item()) and got.positions[-1].tolist() == [30.0, 30.0]
    if max_iter < 300:
        assert got.n_iter.max().item() == max_iter
    else:
        assert len(set(got.n_iter.tolist())) > 1  # seeds stop at different times


def test_ascend_seeds_gaussian_far_seed_is_finite_and_climbs(device):
    # Every weight underflows in float64 (distance^2 / 2 ~ 1800): the stable
    # form still gives a finite log density and a step towards the data.
    data = _t([[0.0, 0.0], [1.0, 0.0]], device=device)
    got = _engine.ascend_seeds(_t([[60.0, 0.0]], device=device), data, None, _config(kernel="gaussian", max_iter=0))
    assert torch.isfinite(got.log_density).all() and torch.isfinite(got.positions).all()
    assert got.positions[0, 0].item() == pytest.approx(1.0)  # the nearer point dominates completely


def test_ascend_seeds_counts_iterations_like_sklearn(device):
    # Seed 0 with data {0, 0.5}: the first step moves it to 0.25 (one completed
    # iteration), the second moves it by 0 and stops -> n_iter 1.
    data = _t([[0.0], [0.5], [5.0]], device=device)
    got = _engine.ascend_seeds(data[:1], data, None, _config())
    assert got.positions.item() == 0.25 and got.n_iter.item() == 1
    assert got.log_density.item() == pytest.approx(math.log(2))
    # A shift of 0.25 <= tol stops at once, but the step is still taken.
    got = _engine.ascend_seeds(data[:1], data, None, _config(tol=0.25))
    assert got.positions.item() == 0.25 and got.n_iter.item() == 0


def test_ascend_seeds_steps_only_the_moving_seeds(device):
    """Active-set compaction: converged seeds are not sent to the backend again."""
    sizes = []
    torch_backend = resolve_backend("torch", CPU)

    def spy(seeds, *args):
        sizes.append(seeds.shape[0])
        return torch_backend.step(seeds, *args)

    config = _config(backend=dataclasses.replace(torch_backend, step=spy))
    # Two seeds sit on a lone point (converge at once); one climbs a long ramp.
    ramp = np.arange(0, 8, 0.5)[:, None]
    data = np.concatenate([ramp, [[40.0], [60.0]]])
    seeds = _t([[40.0], [60.0], [0.0]], device=device)
    got = _engine.ascend_seeds(seeds, _t(data, device=device), None, config)
    assert sizes[0] == 3 and sizes[-1] == 1
    assert sizes == sorted(sizes, reverse=True)
    assert len(sizes) == got.n_iter.max().item() + 1
    assert got.n_iter.tolist()[:2] == [0, 0] and got.n_iter[2].item() >= 2


def test_ascend_seeds_with_many_duplicate_seeds_matches_per_seed_loop(device):
    # Thousands of seeds on few distinct positions (the flat kernel makes
    # seeds coincide): the result must equal the plain per-seed loop.
    rng = np.random.default_rng(3)
    data = rng.normal(size=(200, 2))
    seeds = np.repeat(data[:40], 80, axis=0)
    expected = _numpy_ascent(seeds[::80], data, "flat", 1e-3, 300)
    got = _engine.ascend_seeds(_t(seeds, device=device), _t(data, device=device), None, _config())
    np.testing.assert_allclose(got.positions.cpu().numpy()[::80], expected[0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got.n_iter.cpu().numpy(), np.repeat(expected[2], 80))
    np.testing.assert_allclose(got.log_density.cpu().numpy(), np.repeat(expected[1], 80), rtol=1e-12)


def test_auto_blocks_follows_batch_size():
    assert auto_blocks(CPU, 7, torch.float64).seeds == 7
    auto = auto_blocks(CPU, "auto", torch.float32)
    assert auto.seeds >= 1 and auto.points >= 256
    assert auto_blocks(CPU, 10**9, torch.float64).points == 256  # floor on the data tile
