"""Distributed mean shift on a Dask cluster: spatial partitions, halos, seed migration.

This module holds the pieces behind :class:`meanshift_gpu.dask.MeanShift`.
Everything that runs on a worker is a pure, module-level function of its
arguments (so Dask can recompute it after a worker is lost); the driver only
orchestrates rounds and holds small arrays (seeds that change partition, the
final modes).

Design
------
*Coordinates.*  Workers use the single-machine engine's scaled coordinates
``(x - offset) / scale`` (``offset`` = data median, ``scale`` = bandwidth), in
which the flat and Epanechnikov kernels have reach 1 and the Gaussian is cut at
``neighbor_options["truncate"]`` (the reach).

*Partitions.*  The scaled axis ``a`` along which the data are widest is cut at
interior boundaries ``B_1 < ... < B_{P-1}``: integers in scaled units, i.e.
whole bandwidths from the data median, placed at quantiles of a sample so the
partitions hold similar numbers of points, and at least ``2 * halo`` apart.
Partition ``p`` *owns* the slab ``B_p <= u < B_{p+1}`` (``u = x_a``; the first
and last slabs are open) and stores its own points (the *core*) plus the
*halo*: every point of the neighbouring slabs within ``halo = reach + margin``
of its border.  ``margin`` absorbs the rounding of the distance computation
(the matmul form used above 3 features), so a halo never misses a point that
the engine would count inside a window.

*Seeds iterate in rounds and migrate.*  A seed is stepped only by the
partition that owns its current position.  For such a seed every point within
the kernel's reach lies in the core or the halo, so the step equals the
single-machine step (the same points, the same arithmetic up to summation
order).  Whenever a step carries a still-moving seed out of the slab, the
partition stops it and hands it, with its iteration count, to the owner of its
new position in the next round.  A round runs all partitions that have seeds
in parallel; the fit ends when no seed migrates.  Each seed therefore follows
exactly the single-machine path (same steps, same stopping rule, same
``max_iter`` budget), whatever the number of partitions.  (The alternative, a
halo as wide as the seeds' remaining path, is unbounded a priori and grows the
halo traffic; migration keeps the halo at one kernel reach.)

*What travels.*  The one-time partitioning moves each point to its
partition's worker: for input laid out in space (NumPy input is sorted along
``a`` on the driver, and its chunks are the partitions' cores) that is only
the halos.  Afterwards only migrating seeds (position + iteration count) and
the final modes (deduplicated per partition) travel.

*Results.*  The driver merges the modes of all partitions with
:func:`meanshift_gpu._engine.ascent.merge_modes` (exact duplicates collapse; the
order-dependent merge itself runs once, on all candidates, so it is exactly
the single-machine merge) and labels are the nearest center of each point,
computed chunk by chunk.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._engine import ascent as _engine
from .._reference import using_flat_edge
from .._decisions import DecisionLog, decide_device, recording
from .._neighbors import choose_neighbors, host_loop_method
from .._spec import FitSpec, engine_config


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to know about one fit (small, picklable).

    The fit's settings are the estimator's :class:`~meanshift_gpu._spec.FitSpec`,
    the same object the single-machine fit resolves them into; the rest is
    the geometry of the partitions.  ``bounds`` are the interior partition
    boundaries in scaled coordinates along ``axis``; ``halo`` the width
    (scaled) of the halo on each side.
    """

    spec: FitSpec
    offset: np.ndarray  # (d,), compute dtype
    scale: np.ndarray  # (d,), compute dtype
    dtype: str  # "float32" or "float64"
    axis: int
    bounds: np.ndarray  # (P - 1,), float64, integers
    halo: float
    # The flat window's edge (see meanshift_gpu._spec.flat_edge_of), set in every worker.
    flat_edge: float = 1.0

    @property
    def n_partitions(self) -> int:
        return len(self.bounds) + 1

    def edges(self, p: int) -> tuple[float, float]:
        """The slab ``[lo, hi)`` owned by partition ``p``."""
        lo = -math.inf if p == 0 else float(self.bounds[p - 1])
        hi = math.inf if p == self.n_partitions - 1 else float(self.bounds[p])
        return lo, hi


# ----------------------------------------------------------------------------- helpers
def _torch_dtype(plan: Plan) -> torch.dtype:
    return torch.float32 if plan.dtype == "float32" else torch.float64


def _device(plan: Plan) -> torch.device:
    return decide_device(plan.spec.device).choice


def _scaled(block: np.ndarray, plan: Plan, device: torch.device) -> torch.Tensor:
    """``(x - offset) / scale`` with the same element-wise operations as the estimator."""
    dtype = _torch_dtype(plan)
    x = torch.as_tensor(np.ascontiguousarray(block)).to(device=device, dtype=dtype)
    offset = torch.as_tensor(plan.offset).to(device=device, dtype=dtype)
    scale = torch.as_tensor(plan.scale).to(device=device, dtype=dtype)
    return (x - offset) / scale


def owner_of(u: torch.Tensor, bounds: np.ndarray) -> torch.Tensor:
    """Partition owning each scaled axis coordinate ``u`` (``B_p <= u < B_{p+1}``).

    The single rule used for points, seeds and migrations, so that a seed is
    never handed to a partition that would not step it.
    """
    b = torch.as_tensor(bounds).to(device=u.device, dtype=u.dtype)
    return torch.searchsorted(b, u.contiguous(), right=True)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def _config(plan: Plan, device: torch.device) -> _engine.EngineConfig:
    # Quiet: a worker's log lines would not reach the user; the driver logs the rounds.
    return engine_config(plan.spec, device, _torch_dtype(plan), verbose=False)


# ------------------------------------------------------------------ partitioning (workers)
def split_chunk(block: np.ndarray, wblock: np.ndarray | None, plan: Plan) -> dict:
    """Cut one input chunk into the pieces each partition needs.

    Returns ``{p: (core_points, core_weights, halo_points, halo_weights)}`` in
    scaled coordinates, for the partitions this chunk contributes to.  A
    point goes to the core of its owner and to the halo of a neighbouring
    partition when it lies within ``plan.halo`` of their common border.
    """
    device = torch.device("cpu")
    scaled = _scaled(block, plan, device)
    w = None if wblock is None else torch.as_tensor(np.asarray(wblock)).to(scaled.dtype)
    u = scaled[:, plan.axis]
    owner = owner_of(u, plan.bounds)
    n_parts = plan.n_partitions
    out: dict = {}
    present = torch.unique(owner).tolist()
    wanted = sorted({q for p in present for q in (p - 1, p, p + 1) if 0 <= q < n_parts})
    for p in wanted:
        lo, hi = plan.edges(p)
        core = owner == p
        # Only the adjacent slabs can reach into p: partitions are >= 2 halos wide.
        halo = ((owner == p - 1) & (u >= lo - plan.halo)) | ((owner == p + 1) & (u < hi + plan.halo))
        if not bool(core.any()) and not bool(halo.any()):
            continue
        out[p] = (
            _np(scaled[core]),
            None if w is None else _np(w[core]),
            _np(scaled[halo]),
            None if w is None else _np(w[halo]),
        )
    return out


def piece_counts(pieces: dict) -> dict:
    """``{p: (n_core, n_halo)}`` of a :func:`split_chunk` result (tiny, for the driver)."""
    return {p: (int(v[0].shape[0]), int(v[2].shape[0])) for p, v in pieces.items()}


def take(mapping: dict, key):
    """``mapping[key]``: run where ``mapping`` lives, so only the piece travels."""
    return mapping[key]


def build_partition(p: int, plan: Plan, *pieces) -> dict:
    """Concatenate a partition's pieces: core points first, then the halo."""
    d = plan.offset.shape[0]
    dtype = np.dtype(plan.dtype)
    cores = [pc[0] for pc in pieces] or [np.empty((0, d), dtype)]
    halos = [pc[2] for pc in pieces] or [np.empty((0, d), dtype)]
    weighted = any(pc[1] is not None for pc in pieces)
    points = np.concatenate(cores + halos)
    weights = None
    if weighted:
        weights = np.concatenate(
            [pc[1] for pc in pieces] + [pc[3] for pc in pieces]
        ).astype(dtype, copy=False)
    lo, hi = plan.edges(p)
    return {
        "p": p,
        "points": points,
        "weights": weights,
        "n_core": int(sum(c.shape[0] for c in cores)),
        "lo": lo,
        "hi": hi,
    }


def partition_sizes(part: dict) -> tuple[int, int, int]:
    """(core points, halo points, bytes of the halo) of a partition."""
    n = part["points"].shape[0]
    n_halo = n - part["n_core"]
    row_bytes = part["points"].itemsize * part["points"].shape[1]
    row_bytes += 0 if part["weights"] is None else part["weights"].itemsize
    return part["n_core"], n_halo, n_halo * row_bytes


# -------------------------------------------------------------------- bin seeding (workers)
def bin_chunk(block: np.ndarray, wblock: np.ndarray | None, plan: Plan) -> dict:
    """Occupied grid cells of one chunk, with their (weighted) counts, by owner.

    The grid is the estimator's: ``round(x / scale)`` in the user's coordinates.
    Returns ``{p: (cells, freq)}`` where ``p`` owns the cell's seed position.
    """
    dtype = _torch_dtype(plan)
    x = torch.as_tensor(np.ascontiguousarray(block)).to(dtype)
    scale = torch.as_tensor(plan.scale).to(dtype)
    cells, inverse = torch.unique(torch.round(x / scale / 1.0), dim=0, return_inverse=True)
    if wblock is None:
        freq = torch.bincount(inverse, minlength=cells.shape[0]).to(dtype)
    else:
        freq = torch.zeros(cells.shape[0], dtype=dtype).index_add_(
            0, inverse, torch.as_tensor(np.asarray(wblock)).to(dtype)
        )
    owner = owner_of(_cell_seeds(cells, plan)[:, plan.axis], plan.bounds)
    return {int(p): (_np(cells[owner == p]), _np(freq[owner == p])) for p in torch.unique(owner).tolist()}


def _cell_seeds(cells: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Scaled seed of each cell: ``(cell * 1.0 * scale - offset) / scale`` as the estimator."""
    dtype = cells.dtype
    scale = torch.as_tensor(plan.scale).to(dtype)
    offset = torch.as_tensor(plan.offset).to(dtype)
    return ((cells * 1.0) * scale - offset) / scale


def bin_partition(plan: Plan, min_bin_freq: float, *pieces) -> np.ndarray:
    """Seeds (scaled) of the cells owned by one partition with enough points."""
    d = plan.offset.shape[0]
    dtype = _torch_dtype(plan)
    if not pieces:
        return np.empty((0, d), dtype=plan.dtype)
    cells = torch.cat([torch.as_tensor(c) for c, _ in pieces])
    freq = torch.cat([torch.as_tensor(f) for _, f in pieces]).to(dtype)
    unique, inverse = torch.unique(cells, dim=0, return_inverse=True)
    total = torch.zeros(unique.shape[0], dtype=dtype).index_add_(0, inverse, freq)
    return _np(_cell_seeds(unique[total >= min_bin_freq], plan))


def n_rows(array: np.ndarray) -> int:
    return int(array.shape[0])


# ------------------------------------------------------------------------ ascent (workers)
def ascend_owned(
    positions: torch.Tensor,
    n_iter: torch.Tensor,
    step,
    config: _engine.EngineConfig,
    axis: int,
    bounds: np.ndarray,
    p: int,
):
    """Move seeds uphill while they stay in partition ``p``'s slab.

    Runs :func:`meanshift_gpu._engine.ascent.ascend_seeds` (same stopping rule,
    same exact deduplication) with the seeds' iteration counts so far (they
    may have iterated elsewhere) and a ``leaves`` test: a seed that is still
    moving after a step that carried it out of the slab stops here and is
    returned in ``leaving`` (to be stepped by its new owner).

    Returns
    -------
    positions, log_density, n_iter : Tensor
        Final state of every seed (``log_density`` is meaningless for the
        leaving ones).
    leaving : Tensor of bool
        Seeds to migrate.
    n_steps : int
        Seed-steps computed (for throughput).
    """
    def leaves(points):
        return owner_of(points[:, axis], bounds) != p

    n = positions.shape[0]
    leaving = leaves(positions)
    owned = torch.nonzero(~leaving).flatten()
    ascent = _engine.ascend_seeds(
        positions[owned], None, None, config, step, n_iter=n_iter[owned], leaves=leaves
    )
    positions, n_iter = positions.clone(), n_iter.clone()
    log_density = torch.full((n,), -math.inf, dtype=positions.dtype, device=positions.device)
    positions[owned] = ascent.positions
    n_iter[owned] = ascent.n_iter
    log_density[owned] = ascent.log_density
    leaving[owned] = ascent.left
    return positions, log_density, n_iter, leaving, ascent.n_stepped


def ascend_partition(part: dict, batches: list, plan: Plan) -> dict:
    """One round of one partition: step its seeds until they finish or leave.

    ``batches`` are ``(positions, n_iter)`` arrays of seeds (scaled) that this
    partition owns, or the string ``"core"`` for its own points of positive
    weight (the default seeds).  Returns the finished seeds (deduplicated),
    the leaving seeds grouped by new owner, and counters.
    """
    with using_flat_edge(plan.flat_edge), recording(DecisionLog()) as decisions:
        result = _ascend_partition(part, batches, plan)
    # What this worker chose for its partition (fit_info_ on the driver combines them).
    result["decisions"] = decisions.as_fit_info() if result["method"] else None
    return result


def _ascend_partition(part: dict, batches: list, plan: Plan) -> dict:
    start = time.perf_counter()
    device = _device(plan)
    dtype = _torch_dtype(plan)
    data = torch.as_tensor(part["points"]).to(device=device, dtype=dtype)
    weights = None if part["weights"] is None else torch.as_tensor(part["weights"]).to(device=device, dtype=dtype)
    d = data.shape[1]
    seeds, iters = [], []
    for batch in batches:
        if isinstance(batch, str):  # "core": this partition's own points
            core = data[: part["n_core"]]
            if weights is not None:
                core = core[weights[: part["n_core"]] > 0]
            seeds.append(core)
            iters.append(torch.zeros(core.shape[0], dtype=torch.long, device=device))
        elif batch is not None and batch[0].shape[0]:
            seeds.append(torch.as_tensor(batch[0]).to(device=device, dtype=dtype))
            iters.append(torch.as_tensor(batch[1]).to(device=device, dtype=torch.long))
    positions = torch.cat(seeds) if seeds else data.new_empty((0, d))
    n_iter = torch.cat(iters) if iters else torch.zeros(0, dtype=torch.long, device=device)

    result = {"p": part["p"], "n_seeds": int(positions.shape[0]), "n_steps": 0, "method": None}
    if positions.shape[0] and data.shape[0]:
        spec = plan.spec
        config = _config(plan, device)
        options = spec.neighbor_options
        method, grid = choose_neighbors(
            spec.neighbors, data, weights, n_seeds=positions.shape[0], kernel=spec.kernel, options=options,
        )
        pruner = host_loop_method(method, data, weights, kernel=spec.kernel, options=options,
                                  backend=config.backend, grid=grid)
        positions, log_density, n_iter, leaving, n_steps = ascend_owned(
            positions, n_iter, pruner.step, config, plan.axis, plan.bounds, part["p"]
        )
        result.update(n_steps=n_steps, method=method)
    else:
        log_density = torch.full((positions.shape[0],), -math.inf, dtype=dtype, device=device)
        leaving = owner_of(positions[:, plan.axis], plan.bounds) != part["p"]

    finished = ~leaving
    result["finished"] = _unique_modes(positions[finished], log_density[finished])
    result["max_iter"] = int(n_iter[finished].max()) if bool(finished.any()) else 0
    dest = owner_of(positions[leaving, plan.axis], plan.bounds)
    result["outgoing"] = {
        int(q): (_np(positions[leaving][dest == q]), _np(n_iter[leaving][dest == q]))
        for q in torch.unique(dest).tolist()
    }
    result["seconds"] = time.perf_counter() - start
    return result


def _unique_modes(positions: torch.Tensor, log_density: torch.Tensor):
    """Exact duplicates collapsed (max intensity), non-finite dropped.

    :func:`meanshift_gpu._engine.ascent.merge_modes` starts with exactly this, so
    doing it per partition first leaves the merge unchanged.
    """
    valid = torch.isfinite(log_density)
    positions, log_density = positions[valid], log_density[valid]
    if positions.shape[0]:
        positions, inverse = torch.unique(positions, dim=0, return_inverse=True)
        best = torch.full((positions.shape[0],), -math.inf, dtype=log_density.dtype, device=log_density.device)
        best.scatter_reduce_(0, inverse, log_density, reduce="amax")
        log_density = best
    return _np(positions), _np(log_density)


def round_summary(result: dict) -> dict:
    """The small part of a round's result the driver needs."""
    return {
        "p": result["p"],
        "outgoing": {q: int(v[0].shape[0]) for q, v in result["outgoing"].items()},
        "n_seeds": result["n_seeds"],
        "n_steps": result["n_steps"],
        "n_finished": int(result["finished"][0].shape[0]),
        "max_iter": result["max_iter"],
        "seconds": result["seconds"],
        "method": result["method"],
        "decisions": result["decisions"],
    }


def outgoing_to(result: dict, q: int):
    """The seeds a round's partition hands to partition ``q``."""
    return result["outgoing"][q]


def finished_modes(result: dict):
    """(positions, log_density) of the seeds that finished in a round."""
    return result["finished"]


# ------------------------------------------------------------------------ labels (workers)
def label_block(block: np.ndarray, centers: np.ndarray, plan: Plan) -> np.ndarray:
    """Nearest-center label of each point of a chunk (-1 beyond the bandwidth
    when ``cluster_all=False``), as the single-machine estimator."""
    device = _device(plan)
    scaled = _scaled(block, plan, device)
    c = torch.as_tensor(centers).to(device=device, dtype=scaled.dtype)
    with using_flat_edge(plan.flat_edge):
        labels = _engine.assign_labels(scaled, c, _config(plan, device), plan.spec.cluster_all)
    return labels.cpu().numpy().astype(np.int64, copy=False)


def label_counts(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Points per cluster in one chunk of labels (orphans excluded)."""
    return np.bincount(labels[labels >= 0], minlength=n_clusters)[None, :]


# ------------------------------------------------------------------------- driver helpers
def choose_bounds(u_sample: np.ndarray, n_partitions: int, min_gap: float) -> np.ndarray:
    """Interior boundaries: sample quantiles snapped to whole bandwidths.

    Boundaries closer than ``min_gap`` to the previous one are dropped, so
    a point's halo reaches only the adjacent slabs.

    Examples
    --------
    >>> choose_bounds(np.linspace(-10, 10, 101), 4, 2.0).tolist()
    [-5.0, 0.0, 5.0]
    """
    if n_partitions <= 1 or u_sample.size == 0:
        return np.empty(0, dtype=np.float64)
    qs = np.quantile(u_sample.astype(np.float64), np.arange(1, n_partitions) / n_partitions)
    snapped = np.round(qs)
    lo, hi = float(np.min(u_sample)), float(np.max(u_sample))
    bounds: list[float] = []
    for b in snapped:
        # A slab must hold data on both sides and be at least min_gap wide.
        if b <= lo or b > hi:
            continue
        if bounds and b - bounds[-1] < min_gap:
            continue
        if not bounds and b - lo < min_gap / 2:
            continue
        bounds.append(float(b))
    while bounds and hi - bounds[-1] < min_gap / 2:
        bounds.pop()
    return np.asarray(bounds, dtype=np.float64)


def halo_margin(max_abs_scaled: float, n_features: int, dtype: str) -> float:
    """Extra halo width (scaled) covering the rounding of window tests.

    Up to 3 features distances are summed from differences (error ~ eps);
    above, ``|q|^2 - 2 q.x + |x|^2`` loses ~ eps * |x|^2.  The margin only
    adds points that carry zero weight, so erring wide is free.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    spread = max(1.0, max_abs_scaled) ** 2 if n_features > 3 else max(1.0, max_abs_scaled)
    return max(1e-3, 64 * eps * spread * n_features)


@dataclass
class FitStats:
    """What a distributed fit did (exposed as ``MeanShift.dask_stats_``)."""

    n_partitions: int = 0
    split_axis: int = 0
    bounds: list = field(default_factory=list)  # user units along split_axis
    halo: float = 0.0  # scaled units (bandwidths)
    core_sizes: list = field(default_factory=list)
    halo_sizes: list = field(default_factory=list)
    halo_bytes: int = 0
    data_bytes: int = 0
    rounds: int = 0
    seeds_per_round: list = field(default_factory=list)
    migrated_per_round: list = field(default_factory=list)
    migrated_bytes: int = 0
    n_candidates: int = 0
    seed_steps: int = 0
    ascent_seconds: list = field(default_factory=list)  # per partition, summed over rounds
    methods: list = field(default_factory=list)
    # Driver wall-clock seconds per stage: partition, seeds, rounds, merge, labels.
    stage_seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)
