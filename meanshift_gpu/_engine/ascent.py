"""The mean-shift engine: seed ascent, blurring, mode merging and labelling.

Everything here works in scaled coordinates (data centred and divided by the
bandwidth), so the kernel has radius / sigma 1 and the window test is
``squared distance <= 1``.  The hot operations come from a backend (see
:mod:`meanshift_gpu._engine.backends`); this module owns the iteration logic, which
follows scikit-learn's ``_mean_shift_single_seed`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import numpy as np
import torch

from .backends import Backend, Blocks
from .._decisions import decide_labels, decide_merge, hash_grid_too_wide, record
from .._reference import flat_edge, squared_distances

def _is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    message = str(exc).lower()
    # CUDA says "out of memory"; torch's CPU allocator "can't allocate memory".
    return isinstance(exc, (oom, MemoryError)) or "out of memory" in message or "can't allocate memory" in message


def call_shrinking_on_oom(fn: Callable, config: "EngineConfig", *args):
    """Run ``fn(*args, blocks)``; on out-of-memory halve the tiles and retry.

    Returns the result and the (possibly smaller) config so that later calls
    start from the size that fitted.
    """
    while True:
        try:
            return fn(*args, config.blocks), config
        except (RuntimeError, MemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
            blocks = config.blocks
            if blocks.seeds == 1 and blocks.points <= 256:
                raise
            if blocks.points > 256 and blocks.points >= blocks.seeds:
                blocks = Blocks(blocks.seeds, max(256, blocks.points // 2))
            else:
                blocks = Blocks(max(1, blocks.seeds // 2), blocks.points)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            config.log(f"out of memory: retrying with tiles of {blocks.seeds} x {blocks.points}")
            record("tiles", f"{blocks.seeds} seeds x {blocks.points} points", "out of memory: tiles halved")
            config = replace(config, blocks=blocks)


@dataclass(frozen=True)
class EngineConfig:
    """Resolved settings for one fit."""

    backend: Backend
    kernel: str
    blocks: Blocks
    tol: float
    max_iter: int
    verbose: bool = False

    def log(self, message: str) -> None:
        if self.verbose:
            log_line(message)


def log_line(message: str) -> None:
    """One line of ``verbose`` output."""
    print(f"[meanshift_gpu] {message}", flush=True)


class Ascent(NamedTuple):
    """Where the seeds ended: positions, log density there, iterations per seed.

    ``left`` marks seeds stopped by ``ascend_seeds(..., leaves=)`` (None when
    no such test was given); ``n_stepped`` counts the seed-steps computed.
    """

    positions: torch.Tensor
    log_density: torch.Tensor
    n_iter: torch.Tensor
    left: torch.Tensor | None = None
    n_stepped: int = 0


def _progress(total: int, verbose: bool, desc: str):
    if not verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="seed")


# Below this many moving seeds, looking for exact duplicates costs more than it saves.
_DEDUP_MIN_SEEDS = 2048
_ROUNDING_ULPS = 2
_MIX_1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_MIX_2 = -4658895280553007687  # 0xBF58476D1CE4E5B9


def distinct_rows(rows: torch.Tensor, tag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit-identical ``(row, tag)`` pairs: the first index of each, and each row's group.

    Rows are hashed to one int64 and sorted (``torch.unique(dim=0)`` sorts
    whole rows and is several times slower); groups are then checked
    element by element, and a hash collision falls back to the exact
    ``torch.unique``.  Values that compare equal with different bits (0.0
    and -0.0) stay apart, which only costs a redundant step.

    Examples
    --------
    >>> rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [1.0, 2.0]])
    >>> first, group = distinct_rows(rows, torch.tensor([0, 0, 0, 1]))
    >>> rows[first].tolist(), group.tolist()
    ([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]], [0, 1, 0, 2])
    """
    integer = {8: torch.int64, 4: torch.int32, 2: torch.int16}[rows.element_size()]
    bits = torch.cat([rows.contiguous().view(integer).long(), tag.long()[:, None]], 1)
    key = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
    for column in bits.unbind(1):
        # splitmix64-style mixing (int64 arithmetic wraps, shifts are
        # arithmetic: fine for a hash): low and high bits both spread out.
        key = (key ^ column) * _MIX_1
        key = (key ^ (key >> 31)) * _MIX_2
        key = key ^ (key >> 29)
    _, group, counts = torch.unique(key, return_inverse=True, return_counts=True)
    first = torch.full((counts.numel(),), rows.shape[0], dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, group, torch.arange(rows.shape[0], device=rows.device), "amin")
    if not bool((bits == bits[first[group]]).all()):
        _, group = torch.unique(bits, dim=0, return_inverse=True)
        first = torch.full((int(group.max()) + 1,), rows.shape[0], dtype=torch.long, device=rows.device)
        first.scatter_reduce_(0, group, torch.arange(rows.shape[0], device=rows.device), "amin")
    # Groups numbered by first appearance.
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=rows.device)
    return first[order], rank[group]


def ascend_seeds(
    seeds: torch.Tensor,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    config: EngineConfig,
    step: Callable | None = None,
    *,
    n_iter: torch.Tensor | None = None,
    leaves: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Ascent:
    """Move every seed uphill until it converges, its window empties, or max_iter.

    Mirrors sklearn: a seed stops when its shift is ``<= tol`` (bandwidth 1 in
    scaled space) or when it has completed ``max_iter`` iterations; a seed
    whose window is empty stops where it is with log density ``-inf`` (it will
    be dropped).  Only the still-moving seeds are sent to the next step.

    Seeds that reach bit-identical positions (common: with the flat kernel
    every seed whose window holds the same points lands on the same mean)
    follow identical paths from then on, so each distinct (position,
    iteration count) is stepped once.  This is exact.

    ``step(seeds, kernel, blocks)`` replaces the dense backend step (neighbour
    pruning, see :mod:`meanshift_gpu._neighbors`).  ``n_iter`` gives the seeds'
    starting iteration counts (seeds that iterated elsewhere, as in the Dask
    engine); ``leaves(positions)`` marks still-moving seeds that must stop
    after a step (they left this worker's region) -- see ``Ascent.left``.
    """
    if step is None:
        backend_step = config.backend.step

        def step(seeds_, kernel, blocks):
            return backend_step(seeds_, data, weights, kernel, blocks)

    positions = seeds.clone()
    n_seeds = seeds.shape[0]
    log_density = torch.full((n_seeds,), -math.inf, dtype=seeds.dtype, device=seeds.device)
    if n_iter is None:
        n_iter = torch.zeros(n_seeds, dtype=torch.long, device=seeds.device)
    else:
        n_iter = n_iter.clone()
    left = None if leaves is None else torch.zeros(n_seeds, dtype=torch.bool, device=seeds.device)
    n_stepped = 0
    active = torch.arange(n_seeds, device=seeds.device)
    bar = _progress(n_seeds, config.verbose, "mean shift")
    round_ = 0
    while active.numel():
        old = positions[active]
        distinct, inverse = old, None
        if active.numel() >= _DEDUP_MIN_SEEDS:
            # The iteration count is part of the state (max_iter stops seeds).
            first, inv = distinct_rows(old, n_iter[active])
            if first.numel() <= 0.9 * old.shape[0]:
                distinct, inverse = old[first], inv
        result, config = call_shrinking_on_oom(step, config, distinct, config.kernel)
        n_stepped += distinct.shape[0]
        new_positions, new_log_density = result.positions, result.log_density
        if inverse is not None:
            new_positions, new_log_density = new_positions[inverse], new_log_density[inverse]
        empty = torch.isneginf(new_log_density)
        shift = torch.linalg.vector_norm(new_positions - old, dim=1)
        # A shift of a unit or two in the last place is a fixed point reached up
        # to rounding (the batched matmul may round one row differently when the
        # batch around it changes): it stops the seed even with tol=0.
        at_rest = shift <= _ROUNDING_ULPS * torch.finfo(old.dtype).eps * (old.abs().amax(1) + 1.0)
        done = (shift <= config.tol) | at_rest | (n_iter[active] >= config.max_iter) | empty
        moved = active[~empty]
        positions[moved] = new_positions[~empty]
        log_density[active] = new_log_density
        n_iter[active[~done]] += 1
        active = active[~done]
        if leaves is not None and active.numel():
            out = leaves(positions[active])
            left[active[out]] = True
            active = active[~out]
        round_ += 1
        if bar is not None:
            bar.update(int(done.sum()))
        elif config.verbose and (round_ % 10 == 1 or not active.numel()):
            config.log(
                f"iteration {round_}: {active.numel()} of {n_seeds} seeds still moving "
                f"({distinct.shape[0]} distinct stepped)"
            )
    if bar is not None:
        bar.close()
    return Ascent(positions, log_density, n_iter, left, n_stepped)


# Fused ascent: launches between two host synchronisations (each drops the
# stopped seeds); a seed that stops early idles through at most this many.
_FUSED_STEPS_PER_SYNC = 8


def ascend_fused(
    seeds: torch.Tensor,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    config: EngineConfig,
    ranges=None,
    *,
    steps_per_sync: int = _FUSED_STEPS_PER_SYNC,
) -> Ascent:
    """:func:`ascend_seeds` with the fused Triton kernel: state on the device, few host syncs.

    Same stopping rules and results as :func:`ascend_seeds` (to float
    rounding).  The seeds' positions, density sums, step counts and stop
    flags stay on the device; the host launches ``steps_per_sync`` fused
    steps in a row (stopped seeds are skipped inside the kernel), then drops
    the stopped seeds.  At each synchronisation, seeds at bit-identical
    positions with equal step counts are grouped and only one of each group
    is stepped until the next one (exact: they follow identical paths); with
    ``ranges`` (a :class:`meanshift_gpu.kernels._ascent.GridRanges` of the
    data), seeds are sorted by cell so a program's seeds share their cells.
    """
    from ..kernels import _ascent_module

    ascent_kernel = _ascent_module()
    dtype = seeds.dtype
    n_seeds, n_features = seeds.shape
    positions = seeds.clone().contiguous()
    density = torch.zeros(n_seeds, dtype=dtype, device=seeds.device)
    logit_max = torch.zeros(n_seeds, dtype=dtype, device=seeds.device)
    n_iter = torch.zeros(n_seeds, dtype=torch.long, device=seeds.device)
    done = torch.zeros(n_seeds, dtype=torch.int8, device=seeds.device)
    if ranges is None:
        data_t = data.T.contiguous()
        kernel_weights = weights
    else:
        data_t, kernel_weights = ranges.data_t, ranges.weights
    if kernel_weights is not None and config.kernel == "gaussian":
        kernel_weights = torch.log2(kernel_weights)  # Gaussian weights enter the base-2 logits
    active = torch.arange(n_seeds, device=seeds.device)
    n_stepped = 0
    round_ = 0
    while active.numel():
        stepped, owner = active, None
        if active.numel() >= _DEDUP_MIN_SEEDS:
            first, group = distinct_rows(positions[active], n_iter[active])
            if first.numel() <= 0.9 * active.numel():
                stepped = active[first]
                owner = stepped[group]
        if ranges is not None:
            stepped = stepped[torch.argsort(ranges.seed_keys(positions[stepped]))]
        ascent_kernel.ascent_steps(
            positions, density, logit_max, n_iter, done, stepped, data_t, kernel_weights,
            kernel=config.kernel, tol=config.tol, max_iter=config.max_iter, n_steps=steps_per_sync,
            ranges=ranges,
        )
        n_stepped += stepped.shape[0] * steps_per_sync
        if owner is not None:
            # Followers take their representative's state (same path, exactly).
            positions[active] = positions[owner]
            density[active] = density[owner]
            logit_max[active] = logit_max[owner]
            n_iter[active] = n_iter[owner]
            done[active] = done[owner]
        active = active[done[active] == 0]
        round_ += 1
        config.log(
            f"fused ascent, {round_ * steps_per_sync} steps: {active.numel()} of {n_seeds} seeds "
            f"still moving ({stepped.shape[0]} distinct stepped)"
        )
    log_density = torch.log(density)  # an empty window's sum is 0: log density -inf
    if config.kernel == "gaussian":
        log_density = log_density + torch.where(density > 0, logit_max, 0.0) * math.log(2.0)
    return Ascent(positions, log_density, n_iter, None, n_stepped)


def blur(
    data: torch.Tensor,
    weights: torch.Tensor | None,
    config: EngineConfig,
    make_step: Callable | None = None,
) -> Ascent:
    """Blurring mean shift: the data themselves move, every iteration.

    Each iteration replaces every point by the kernel mean of the *current*
    points (weights stay with their points).  It stops when no point moved more
    than ``tol`` bandwidths in the last iteration, or after ``max_iter``
    iterations; blurring collapses each cluster to a point quickly (cubically
    for the Gaussian kernel, Carreira-Perpinan 2006), so this rule is reached
    in few iterations.  ``n_iter`` is the same for every point.

    ``make_step(points)`` returns a ``step(seeds, kernel, blocks)`` over
    ``points`` (a pruner rebuilt on the moved data); None uses the dense
    backend step.
    """
    positions = data.clone()
    log_density = torch.zeros(data.shape[0], dtype=data.dtype, device=data.device)
    iteration = 0
    while True:
        if make_step is None:
            backend_step = config.backend.step

            def step(seeds_, kernel, blocks, points=positions):
                return backend_step(seeds_, points, weights, kernel, blocks)
        else:
            step = make_step(positions)
        result, config = call_shrinking_on_oom(step, config, positions, config.kernel)
        shift = torch.linalg.vector_norm(result.positions - positions, dim=1)
        if weights is not None:
            # Zero-weight points pull on nothing: they must not delay the stop.
            shift = shift[weights > 0]
        positions = result.positions
        log_density = result.log_density
        max_shift = float(shift.max()) if shift.numel() else 0.0
        config.log(f"blurring iteration {iteration}: largest shift {max_shift:.3g} bandwidths")
        if max_shift <= config.tol or iteration >= config.max_iter:
            break
        iteration += 1
    n_iter = torch.full((data.shape[0],), iteration, dtype=torch.long, device=data.device)
    return Ascent(positions, log_density, n_iter)


def densest_first(positions: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """Order (indices) by ``(intensity, coordinate 0, coordinate 1, ...)`` descending."""
    if positions.device.type != "cpu":
        return densest_first_on_device(positions, intensity)
    keys = torch.cat([intensity[:, None], positions], 1).cpu().double().numpy()
    # lexsort's last key is primary.
    order = np.lexsort(keys.T[::-1])[::-1].copy()
    return torch.from_numpy(order).to(positions.device)


def densest_first_on_device(positions: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """:func:`densest_first` by stable sorts on the tensors' device (no round trip to the host).

    Stable ascending sorts from the least significant key, then reversed:
    the order of numpy's ``lexsort(...)[::-1]``, ties included.

    Examples
    --------
    >>> pos = torch.tensor([[0.0], [1.0], [2.0]])
    >>> densest_first_on_device(pos, torch.tensor([1.0, 3.0, 1.0])).tolist()
    [1, 2, 0]
    """
    order = torch.arange(positions.shape[0], device=positions.device)
    for key in [*positions.unbind(1)[::-1], intensity]:
        order = order[torch.sort(key[order], stable=True).indices]
    return order.flip(0)


def merge_modes(
    positions: torch.Tensor, intensity: torch.Tensor, *, merge_block: int = 4096, grid: bool | str = "auto"
) -> torch.Tensor:
    """Remove near-duplicate modes exactly as scikit-learn does.

    Candidates with non-finite intensity (empty windows) are dropped, exact
    duplicates collapse, the rest are sorted by ``(intensity, coordinates)``
    descending, and each kept mode removes every later one within distance 1
    (inclusive).  Returns the kept modes in that order.

    ``grid``: look for kept modes on a hash grid (:func:`meanshift_gpu._neighbors.compiled.keep_separated_modes`;
    CPU, 1 to 3 features, the C extension) instead of comparing with all of them;
    "auto" does so from ``meanshift_gpu._decisions.MERGE_GRID_MIN`` candidates.  Same result.
    """
    valid = torch.isfinite(intensity)
    positions, intensity = positions[valid], intensity[valid]
    if positions.shape[0] == 0:
        return positions
    first, inverse = distinct_rows(positions, torch.zeros_like(intensity, dtype=torch.long))
    unique = positions[first]
    best = torch.full((unique.shape[0],), -math.inf, dtype=intensity.dtype, device=intensity.device)
    best.scatter_reduce_(0, inverse, intensity, reduce="amax")
    candidates = unique[densest_first(unique, best)]
    grid_kept = _merge_on_grid(candidates, grid)
    if grid_kept is not None:
        return candidates[grid_kept]

    # scikit-learn merges modes within the bandwidth, edge included (see flat_edge).
    edge = flat_edge()
    kept = candidates[:0]
    for c0 in range(0, candidates.shape[0], merge_block):
        block = candidates[c0 : c0 + merge_block]
        if kept.shape[0]:
            covered = torch.zeros(block.shape[0], dtype=torch.bool, device=block.device)
            for k0 in range(0, kept.shape[0], merge_block):
                covered |= (squared_distances(block, kept[k0 : k0 + merge_block], edge) <= edge).any(1)
            block = block[~covered]
        if not block.shape[0]:
            continue
        near = (squared_distances(block, block, edge) <= edge).cpu().numpy()
        alive = np.ones(block.shape[0], dtype=bool)
        for i in range(block.shape[0]):
            if alive[i]:
                alive[i + 1 :] &= ~near[i, i + 1 :]
        kept = torch.cat([kept, block[torch.from_numpy(alive).to(block.device)]])
    return kept


def _merge_on_grid(candidates: torch.Tensor, grid: bool | str) -> torch.Tensor | None:
    """The merge's keep mask from the compiled hash grid, or None where :func:`decide_merge` says blockwise."""
    n, d = candidates.shape
    if not decide_merge(n, d, candidates.device, grid).choice:
        return None
    from .._neighbors.compiled import MERGE_CELL_SIDE, keep_separated_modes

    if float(candidates.abs().max()) / MERGE_CELL_SIDE >= 2.0**60:  # cells beyond int64
        hash_grid_too_wide("merge")
        return None
    return torch.from_numpy(keep_separated_modes(candidates.contiguous().numpy(), flat_edge()))


_LABEL_GRID_MAX_RING = 4


def _nearest_on_grid(points: torch.Tensor, centers: torch.Tensor, force: bool = False):
    """``(index, dist2)`` of the nearest center from the compiled grid, or None where it does not apply.

    Same distances and tie rule as the dense search; cells are sized for
    about one center each, so most points look at a few cells.  ``force``
    ignores the size threshold (tests).
    """
    n_centers, d = centers.shape
    if not points.shape[0] or not n_centers or points.dtype != centers.dtype:
        return None
    if not decide_labels(n_centers, d, points.device, force).choice:
        return None
    from .._neighbors.compiled import nearest_on_grid

    extent = (centers.amax(0) - centers.amin(0)).double().clamp_min(1.0)
    side = max(1.0, float(extent.prod() / n_centers) ** (1.0 / d))
    if max(float(points.abs().max()), float(centers.abs().max())) / side >= 2.0**60:  # cells beyond int64
        hash_grid_too_wide("labels")
        return None
    index, dist2 = nearest_on_grid(points.contiguous().numpy(), centers.contiguous().numpy(), side,
                                   _LABEL_GRID_MAX_RING)
    return torch.from_numpy(index), torch.from_numpy(dist2)


def assign_labels(
    points: torch.Tensor, centers: torch.Tensor, config: EngineConfig, cluster_all: bool
) -> torch.Tensor:
    """Nearest-center labels; with ``cluster_all=False``, -1 beyond the bandwidth."""
    found = _nearest_on_grid(points, centers)
    if found is not None:
        index, dist2 = found
    else:
        (index, dist2), _ = call_shrinking_on_oom(config.backend.nearest, config, points, centers)
    if not cluster_all:
        index = torch.where(dist2 <= flat_edge(), index, torch.full_like(index, -1))
    return index
