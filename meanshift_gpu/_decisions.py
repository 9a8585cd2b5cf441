"""Every automatic choice of a fit, made in one place and recorded with its reason.

A fit runs ``data -> validation -> decisions -> engine -> neighbours/backends
-> merge -> labels``.  Whatever the user left to "auto" (and every fallback
the code takes on its own) is decided by a ``decide_*`` function of this
module, which returns a :class:`Decision`: the value, in words a user can
read, and why.  While a fit runs, each decision is also added to that fit's
:class:`DecisionLog` (see :func:`recording`); the estimator exposes the log
as ``fit_info_`` (values, plus ``fit_info_["reasons"]``) and prints it with
``verbose=True``.

The thresholds behind the choices live here too; the measurements that set
them are in ``benchmarks/README.md`` ("Tuning history").

=============  ====================================================================
decision       rule
=============  ====================================================================
device         "auto": a CUDA tensor's device, else CUDA when available, else CPU
dtype          the input's float dtype (torch half floats -> float32; numpy float16 and integers -> float64)
backend        explicit name, or the first of the priority list that can run
               (Triton on CUDA, then torch)
kernels        which implementation runs the host loop's steps: Triton's
               float32 kernels, or torch where Triton cannot (float64 data, the
               truncated Gaussian on a block-sparse step)
neighbors      the size table of :func:`decide_neighbors`
step           grid: row prefix sums (flat kernel, 1-3 D; compiled C on the CPU)
               or the batched block-sparse step; their cells per bandwidth
ascent         fused device-resident Triton loop, or the host loop
tiles          seeds x points per tile, from a memory budget or ``batch_size``
kernel_tile    the fused Triton ascent's tile, from the committed table
merge          hash grid in C (CPU, 1-3 D, many candidates) or blockwise
labels         hash grid in C (CPU, 1-3 D, many centers) or the backend's search
threads        CPU threads that take pieces of each step
=============  ====================================================================
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

__all__ = ["Decision", "DecisionLog", "recording"]


@dataclass(frozen=True)
class Decision:
    """One choice: what was chosen and why.

    ``value`` is what ``fit_info_`` shows (plain data: a string, number or
    None); ``choice`` is what the code uses when that differs (a backend, a
    tile size); ``automatic`` is False when the user named the value.

    Examples
    --------
    >>> from meanshift_gpu._decisions import Decision
    >>> print(Decision("neighbors", "dense", "asked for"))
    neighbors: dense (asked for)
    """

    name: str
    value: Any
    reason: str
    automatic: bool = True
    choice: Any = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.name}: {self.value} ({self.reason})"


class DecisionLog:
    """The decisions of one fit, in the order they were made (a later one of the same name replaces it).

    Examples
    --------
    >>> from meanshift_gpu._decisions import Decision, DecisionLog
    >>> log = DecisionLog()
    >>> log.add(Decision("device", "cpu", "no CUDA device"))
    Decision(name='device', value='cpu', reason='no CUDA device', automatic=True)
    >>> log.values(), log.reasons()
    ({'device': 'cpu'}, {'device': 'no CUDA device'})
    """

    def __init__(self) -> None:
        self._decisions: dict[str, Decision] = {}

    def add(self, decision: Decision) -> Decision:
        self._decisions.pop(decision.name, None)
        self._decisions[decision.name] = decision
        return decision

    def __iter__(self) -> Iterator[Decision]:
        return iter(self._decisions.values())

    def values(self) -> dict[str, Any]:
        return {d.name: d.value for d in self}

    def reasons(self) -> dict[str, str]:
        return {d.name: d.reason for d in self}

    def as_fit_info(self) -> dict[str, Any]:
        """``fit_info_``: every value by name, and their reasons under ``"reasons"``."""
        return {**self.values(), "reasons": self.reasons()}

    def lines(self) -> list[str]:
        return [str(d) for d in self]


_active = threading.local()


@contextlib.contextmanager
def recording(log: DecisionLog) -> Iterator[DecisionLog]:
    """Within: every ``decide_*`` call of this thread also adds its decision to ``log``.

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu._decisions import DecisionLog, decide_dtype, recording
    >>> with recording(DecisionLog()) as log:
    ...     _ = decide_dtype(torch.int64)
    >>> log.values()
    {'dtype': 'float64'}
    """
    outer = getattr(_active, "log", None)
    _active.log = log
    try:
        yield log
    finally:
        _active.log = outer


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Within: decisions are made but not recorded (a bandwidth rule's own inner fits)."""
    outer = getattr(_active, "log", None)
    outer_paused = getattr(_active, "paused_log", None)
    _active.log, _active.paused_log = None, outer or outer_paused
    try:
        yield
    finally:
        _active.log, _active.paused_log = outer, outer_paused


def _made(decision: Decision) -> Decision:
    log = getattr(_active, "log", None)
    if log is not None:
        log.add(decision)
    return decision


def record(name: str, value: Any, reason: str, automatic: bool = True, *, through_pause: bool = False) -> Decision:
    """Record a decision whose value was computed elsewhere (the flat edge, the step a method runs).

    ``through_pause`` records it in the fit's log even inside :func:`paused`
    (a bandwidth rule's own fallback is the fit's decision; its inner fits'
    tiles and merges are not).
    """
    decision = Decision(name, value, reason, automatic)
    if through_pause and getattr(_active, "log", None) is None:
        log = getattr(_active, "paused_log", None)
        if log is not None:
            log.add(decision)
        return decision
    return _made(decision)


# ----------------------------------------------------------------------------- device, dtype
def decide_device(requested, X=None) -> Decision:
    """The device of the fit (``choice``: a :class:`torch.device`); errors as :func:`resolve_device`."""
    from ._validation import resolve_device

    device = resolve_device(requested, X)
    if isinstance(requested, str) and requested == "auto":
        if isinstance(X, torch.Tensor) and X.device.type != "cpu":
            why = f"auto: X is a tensor on {X.device}"
        elif device.type == "cuda":
            why = "auto: a CUDA device is available"
        else:
            why = "auto: no CUDA device"
        return _made(Decision("device", str(device), why, choice=device))
    return _made(Decision("device", str(device), "asked for", automatic=False, choice=device))


def decide_dtype(input_dtype) -> Decision:
    """The compute dtype (``choice``: a torch dtype): float32 and float64 stay, others widen."""
    from ._validation import compute_dtype

    dtype = compute_dtype(input_dtype)
    shown = str(input_dtype).removeprefix("torch.")
    name = str(dtype).removeprefix("torch.")
    if shown == name:
        why = "the input's dtype"
    elif "float" in shown:
        why = f"{shown} input widens exactly to {name}"
    else:
        why = f"{shown} input is computed in {name}, which holds it exactly"
    return _made(Decision("dtype", name, why, choice=dtype))


# ----------------------------------------------------------------------------- backend
def decide_backend(requested: str, device: torch.device) -> Decision:
    """The backend (``choice``: a :class:`~meanshift_gpu._engine.backends.Backend`).

    An explicit name must be able to run on the device (else a one-line
    error); "auto" walks the priority list and takes the first that can, so
    it always ends at torch.  The reason names the ones passed over.
    """
    from ._engine.backends import _REGISTRY, available_backends

    if requested == "auto":
        skipped = []
        for backend in sorted(_REGISTRY.values(), key=lambda b: b.auto_priority):
            why_not = (backend.auto_unavailable or backend.unavailable)(device)
            if why_not is None:
                passed = "; ".join(skipped)
                why = f"auto: first of the priority list that runs on {device.type}" + (
                    f" (skipped {passed})" if passed else ""
                )
                return _made(Decision("backend", backend.name, why, choice=backend))
            skipped.append(f"{backend.name}: {why_not}")
        raise RuntimeError(f"no backend can run on device {device}")  # pragma: no cover
    if requested not in _REGISTRY:
        raise ValueError(f"unknown backend {requested!r}; expected 'auto' or one of {available_backends()}")
    backend = _REGISTRY[requested]
    why_not = backend.unavailable(device)
    if why_not is not None:
        raise RuntimeError(f"backend={requested!r} cannot run on device {device}: {why_not}")
    return _made(Decision("backend", backend.name, "asked for", automatic=False, choice=backend))


def triton_step_takes(dtype: torch.dtype) -> bool:
    """Whether the Triton step, nearest-center and k-th-distance kernels take data of ``dtype``.

    They compute in float32; float64 data take the float64 torch versions, so
    float64 input is computed in float64 on every device (scikit-learn parity).
    """
    return dtype != torch.float64


def triton_blocked_takes(dtype: torch.dtype, kernel: str, truncate: float | None) -> bool:
    """Whether the Triton block-sparse kernel takes this step.

    Besides float64 (see :func:`triton_step_takes`), it has no truncation
    radius: the truncated Gaussian stays on the torch step, so that the
    result does not depend on how seeds were blocked.
    """
    return triton_step_takes(dtype) and not (truncate is not None and kernel == "gaussian")


def decide_step_kernels(backend_name: str, dtype: torch.dtype, kernel: str, method: str, *,
                        fused: bool = False) -> Decision:
    """Which implementation runs the steps (host loop, or the fused ascent) and the nearest-center search."""
    if fused:
        search = "torch" if not triton_step_takes(dtype) else "triton"
        return _made(Decision("kernels", f"triton fused ascent; nearest-center search in {search}",
                              f"the fused ascent computes in {str(dtype).removeprefix('torch.')} itself"
                              + ("; the nearest-center kernel in float32 only" if search == "torch" else "")))
    if backend_name != "triton":
        return _made(Decision("kernels", backend_name, f"the {backend_name} backend's own"))
    if not triton_step_takes(dtype):
        return _made(Decision("kernels", "torch", "float64 data: the Triton kernels compute in float32"))
    if kernel == "gaussian" and method in ("grid", "lsh", "faiss"):
        return _made(Decision(
            "kernels", "triton (block-sparse steps in torch)",
            "the Triton block-sparse kernel has no truncation radius for the Gaussian",
        ))
    return _made(Decision("kernels", "triton", "float32 data"))


# ----------------------------------------------------------------------------- neighbours
# Seed-point pairs up to which "auto" takes the dense step (the fused pass is
# already fast and exact there); see benchmarks/README.md for the measurements.
AUTO_DENSE_PAIRS = {"cpu": 2.5e7, "cuda": 2e10}
# In 1-D and 2-D (and 3-D flat with the compiled row sums) the exact grid wins from here.
AUTO_DENSE_PAIRS_LOW_D = {"cpu": 4e6}
GRID_MAX_FEATURES = 6
# A grid neighbourhood holding more than this share of the data (huge bandwidths) prunes nothing.
GRID_MAX_FRACTION = 1 / 3


def decide_neighbors(
    requested: str,
    *,
    n_seeds: int,
    n_points: int,
    n_features: int,
    device: torch.device,
    kernel: str = "flat",
    compiled: str | bool = "auto",
    grid: Callable[[], Any] | None = None,
    per_point_bandwidths: bool = False,
) -> Decision:
    """The neighbour method, from this size table (pairs = seeds x points):

    =========================  ==================================================
    condition                  method
    =========================  ==================================================
    per-point bandwidths       dense (per-point windows are not pruned)
    pairs <= AUTO_DENSE_PAIRS  dense: the fused pass is already fast and exact
    (lower in 1-2 D, and in
    3-D flat with the C loop)
    n_features <= 6            grid, unless a grid neighbourhood would hold more
                               than a third of the data (huge bandwidths)
    otherwise                  dense (LSH and faiss are approximate: ask for them)
    =========================  ==================================================

    ``grid()`` builds (or returns) the grid index, only when the table needs it.
    """
    from ._neighbors import grid_fraction

    if per_point_bandwidths:
        if requested not in ("auto", "dense"):
            raise ValueError(
                f"bandwidth='adaptive' uses per-point windows, which neighbors={requested!r} "
                "cannot prune; use neighbors='auto' or 'dense'"
            )
        return _made(Decision("neighbors", "dense", "per-point (adaptive) bandwidths are not pruned",
                              automatic=requested == "auto"))
    if requested != "auto":
        return _made(Decision("neighbors", requested, "asked for", automatic=False))
    pairs = n_seeds * n_points
    dense_pairs = AUTO_DENSE_PAIRS.get(device.type, AUTO_DENSE_PAIRS["cpu"])
    low = min(dense_pairs, AUTO_DENSE_PAIRS_LOW_D.get(device.type, dense_pairs))
    if n_features <= 2 and kernel != "gaussian":  # the grid truncates the Gaussian
        dense_pairs = low
    elif (
        n_features == 3 and kernel == "flat" and low < pairs <= dense_pairs
        and compiled is not False and compiled_unavailable(device) is None
    ):
        dense_pairs = low
    if pairs <= dense_pairs:
        return _made(Decision("neighbors", "dense",
                              f"auto: {pairs:.3g} seed-point pairs <= {dense_pairs:.3g} on {device.type}"))
    if n_features > GRID_MAX_FEATURES:
        return _made(Decision("neighbors", "dense",
                              f"auto: {n_features} features > {GRID_MAX_FEATURES} for the grid "
                              "(LSH and faiss are approximate: ask for them)"))
    try:
        share = None if grid is None else grid_fraction(grid())
    except OverflowError:  # data spanning ~1e15 bandwidths: no grid keys
        return _made(Decision("neighbors", "dense", "auto: the data span too many bandwidths for grid keys"))
    if share is not None and share > GRID_MAX_FRACTION:
        return _made(Decision("neighbors", "dense",
                              f"auto: a grid neighbourhood holds {share:.0%} of the data (> {GRID_MAX_FRACTION:.0%})"))
    return _made(Decision("neighbors", "grid", f"auto: {pairs:.3g} seed-point pairs > {dense_pairs:.3g}, "
                                               f"{n_features} features"))


# Row sums: the torch version needs windows of this many points (mean, from the
# grid) to beat the batched grid, and at most two features; the compiled loop
# beat it at every size measured, in 1-3 D.
ROW_SUMS_TORCH_MIN_WINDOW = 400
ROW_SUMS_TORCH_MAX_FEATURES = 2
# Cells per bandwidth across the rows, by dimension, where no rule below applies
# (powers of two: cell bounds are exact).
ROW_CELLS = {1: 1, 2: 8, 3: 4}
# Torch 2-D takes 16 from this window on, else 8.
ROW_CELLS_TORCH_16_FROM = 1500
# Compiled: (windows below this, cells per bandwidth), by dimension.
ROW_CELLS_COMPILED = {
    2: ((2500, 1), (8000, 2), (50000, 4), (math.inf, 8)),
    3: ((5000, 1), (30000, 2), (math.inf, 4)),
}


def compiled_unavailable(device: torch.device) -> str | None:
    """Why the compiled CPU loops (C extension) cannot run on ``device``, or None."""
    from ._neighbors.compiled import unavailable

    reason = unavailable()
    if reason is None and device.type != "cpu":
        reason = f"the data are on {device.type}, and the compiled loops run on the CPU"
    return reason


def row_cells(n_features: int, window: float, compiled: bool = False) -> int:
    """Cells per bandwidth across the rows (a power of two) for a mean window of ``window`` points.

    More cells narrow the band of tested points (~ window / m) but add rows
    (~ m in 2-D, ~ m**2 in 3-D); the compiled band test is vectorised, so a
    wide band costs it little and few rows pay.
    """
    if n_features == 1:
        return 1
    if compiled:
        for limit, cells in ROW_CELLS_COMPILED[n_features]:
            if window < limit:
                return cells
    if n_features != 2:
        return ROW_CELLS[n_features]
    return 8 if window < ROW_CELLS_TORCH_16_FROM else 16


BATCHED_GRID_STEP = "grid: cells of one reach, batched block-sparse step"


def row_sums_step(compiled: bool, cells: int) -> str:
    """The grid step's ``fit_info_["step"]`` value for row sums."""
    how = "compiled C loop" if compiled else "torch"
    return f"grid: row prefix sums, {how}, {cells} cell{'s' if cells != 1 else ''} per bandwidth"


@dataclass(frozen=True)
class GridStep:
    """How the grid method steps: row sums or not, compiled or not, cells per bandwidth."""

    row_sums: bool
    compiled: bool = False
    cells: int = 1


def decide_grid_step(
    options: dict, kernel: str, n_features: int, device: torch.device,
    backend_blocked_step: bool, window: Callable[[], float],
) -> Decision:
    """The grid's step (``choice``: :class:`GridStep`).

    Row sums need the flat kernel and at most three features.  "auto" takes
    the compiled loop whenever it can run (CPU, C extension); the torch row
    sums only with full windows (``ROW_SUMS_TORCH_MIN_WINDOW``) in 1-2 D, and
    never over a backend's own block-sparse kernel (Triton).  Named options
    are obeyed or raise a one-line error.  ``window()`` estimates the mean
    points per window from the grid, only when needed.
    """
    from ._neighbors.rowsum import ROWSUM_MAX_FEATURES

    possible = kernel == "flat" and n_features <= ROWSUM_MAX_FEATURES
    asked_rows, asked_compiled = options["row_sums"], options["compiled"]
    if asked_rows is True and not possible:
        raise ValueError(
            "neighbor_options['row_sums']=True needs kernel='flat' and at most "
            f"{ROWSUM_MAX_FEATURES} features, got kernel={kernel!r} with {n_features}"
        )
    compiled, compiled_why = False, "not asked for"
    if kernel == "flat" and asked_compiled is not False:
        why_not = compiled_unavailable(device)
        if asked_compiled is True and why_not is not None:
            raise RuntimeError(f"neighbor_options['compiled']=True cannot run: {why_not}")
        compiled = why_not is None
        compiled_why = why_not or "the C extension runs on the CPU"
    if asked_rows is False:
        return _made(Decision("step", BATCHED_GRID_STEP, "row sums turned off", automatic=False, choice=GridStep(False)))
    if asked_rows == "auto":
        most = ROWSUM_MAX_FEATURES if compiled else ROW_SUMS_TORCH_MAX_FEATURES
        if not possible or n_features > most:
            what = f"{kernel} kernel, {n_features} features"
            return _made(Decision("step", f"{BATCHED_GRID_STEP} ({what})",
                                  f"auto: row sums need the flat kernel and at most {most} features here",
                                  choice=GridStep(False)))
        if backend_blocked_step:
            return _made(Decision("step", "grid: cells of one reach, the backend's block-sparse kernel",
                                  "auto: the backend has its own block-sparse kernel", choice=GridStep(False)))
        if not compiled and window() < ROW_SUMS_TORCH_MIN_WINDOW:
            return _made(Decision("step", BATCHED_GRID_STEP,
                                  f"auto: about {window():.0f} points per window < {ROW_SUMS_TORCH_MIN_WINDOW} "
                                  f"for the torch row sums (compiled loop: {compiled_why})",
                                  choice=GridStep(False)))
    cells = row_cells(n_features, window(), compiled)
    value = row_sums_step(compiled, cells)
    why = f"{'auto' if asked_rows == 'auto' else 'asked for'}: flat kernel in {n_features}-D, " \
          f"about {window():.0f} points per window; compiled: {compiled_why}"
    return _made(Decision("step", value, why, automatic=asked_rows == "auto",
                          choice=GridStep(True, compiled, cells)))


# faiss: "auto" takes the IVF index from this many points (the flat search grows as N^2).
FAISS_IVF_FROM_POINTS = 200_000


def decide_faiss_index(options: dict, n_points: int) -> Decision:
    """The faiss index (``choice``: ``(kind, nlist, nprobe)``; nlist and nprobe None for "flat")."""
    kind = options["index"]
    why = "asked for"
    if kind == "auto":
        kind = "ivf" if n_points >= FAISS_IVF_FROM_POINTS else "flat"
        why = f"auto: {n_points} points {'>=' if kind == 'ivf' else '<'} {FAISS_IVF_FROM_POINTS}"
    if kind == "flat":
        return _made(Decision("faiss_index", "flat", why, automatic=options["index"] == "auto",
                              choice=("flat", None, None)))
    nlist = int(options["nlist"] or max(16, int(4 * math.sqrt(n_points))))
    nlist = min(nlist, max(1, n_points // 39))  # faiss wants >= 39 training points per cell
    nprobe = min(nlist, int(options["nprobe"] or max(16, nlist // 4)))
    why += f"; nlist {'given' if options['nlist'] else '4 sqrt(n), at most n / 39'}, " \
           f"nprobe {'given' if options['nprobe'] else 'nlist / 4, at least 16'}"
    return _made(Decision("faiss_index", f"ivf, {nlist} cells, {nprobe} probed", why,
                          automatic=options["index"] == "auto", choice=("ivf", nlist, nprobe)))


# ----------------------------------------------------------------------------- ascent
# Cells per reach of the fused ranges kernel: in 1-3 D half-reach cells cut
# the volume a block reads (5**d half cells against 3**d whole ones); in
# more dimensions the table of cells would grow 2**d times.
RANGES_CELLS_PER_REACH = {1: 2, 2: 2, 3: 2}


def fused_ascent_unavailable(backend_name: str, n_features: int) -> str | None:
    """Why the fused device-resident ascent cannot serve data of ``n_features``, or None."""
    if backend_name != "triton":
        return f"backend {backend_name!r} has no fused ascent kernel"
    from .kernels import _ascent_max_features

    if not 1 <= n_features <= _ascent_max_features():
        return f"{n_features} features: the fused ascent unrolls 1 to {_ascent_max_features()}"
    return None


def decide_ascent(
    backend_name: str, method: str, options: dict, n_features: int, *, per_point_bandwidths: bool = False,
    blurring: bool = False,
) -> Decision:
    """Fused device-resident ascent (Triton, dense or grid as ranges) or the host loop.

    ``choice`` is the cells per reach of the grid's ranges (None for dense)
    when fused, else None.  Row sums or the compiled loop asked for by name,
    LSH, faiss and per-point bandwidths keep the host loop.
    """
    if blurring:
        return _made(Decision("ascent", "host loop", "blurring moves the data every iteration"))
    reason = fused_ascent_unavailable(backend_name, n_features)
    if reason is None and per_point_bandwidths:
        reason = "per-point (adaptive) bandwidths"
    if reason is None and method not in ("dense", "grid"):
        reason = f"neighbors={method!r} reads candidate lists"
    if reason is None and method == "grid" and (options["row_sums"] is True or options["compiled"] is True):
        reason = "row sums were asked for" if options["row_sums"] is True else "the compiled CPU loop was asked for"
    if reason is None and method == "grid" and n_features > GRID_MAX_FEATURES:
        reason = f"neighbors='grid' takes at most {GRID_MAX_FEATURES} features"  # the host path raises
    if reason is not None:
        return _made(Decision("ascent", "host loop", reason))
    if method == "dense":
        return _made(Decision("ascent", "fused (dense)", "the Triton backend's device-resident loop"))
    per_reach = options["cells_per_reach"]
    if per_reach == "auto":
        per_reach = RANGES_CELLS_PER_REACH.get(n_features, 1)
        why = f"auto: {per_reach} cell{'s' if per_reach != 1 else ''} per reach in {n_features}-D"
    else:
        why = f"{per_reach} cells per reach, asked for"
    return _made(Decision("ascent", "fused (grid ranges)", why, choice=per_reach))


def decide_kernel_tile(n_features: int, kernel: str, device: torch.device, dtype: torch.dtype) -> Decision:
    """The fused ascent's launch tile (``choice``: a ``Tile``), as the launch picks it.

    From the committed table (``kernels/_tiles.py``; no autotuning in fit),
    the interpreter's small tile under ``TRITON_INTERPRET=1``, and at least
    16 rows for the tensor-core variant (``MEANSHIFT_GPU_ASCENT_VARIANT=mma``).
    """
    from .kernels import _ascent_module
    from .kernels._common import INTERPRETED

    tile, mma = _ascent_module().launch_tile(n_features, kernel, device, dtype)
    if INTERPRETED:
        why = "TRITON_INTERPRET=1: the interpreter's small test tile"
    else:
        why = f"the committed tile table, {n_features} features, {kernel}, {str(dtype).removeprefix('torch.')}"
    if mma:
        why += "; the tensor-core variant (MEANSHIFT_GPU_ASCENT_VARIANT=mma)"
    value = f"{tile.rows} x {tile.cols}, {tile.num_warps} warps, {tile.num_stages} stages"
    return _made(Decision("kernel_tile", value, why, choice=tile))


# ----------------------------------------------------------------------------- tiles
# Pairwise tile on the CPU: ~1M elements keeps a tile in L2/L3 cache.
CPU_TILE_ELEMENTS = 1 << 20
CPU_SEED_BLOCK = 256
CUDA_SEED_BLOCK = 4096
CUDA_MAX_TILE_ELEMENTS = 1 << 27


def decide_tiles(device: torch.device, batch_size: int | str, dtype: torch.dtype) -> Decision:
    """Seeds x points per tile (``choice``: :class:`~meanshift_gpu._engine.backends.Blocks`).

    On CUDA the budget is an eighth of the free memory over four live
    temporaries per element (distances, weights, a mask, a copy), at most
    ``CUDA_MAX_TILE_ELEMENTS``; on the CPU ``CPU_TILE_ELEMENTS``.
    ``batch_size`` fixes the seeds per tile.  Out-of-memory halves tiles
    later (:func:`meanshift_gpu._engine.ascent.call_shrinking_on_oom`).
    """
    from ._engine.backends import Blocks

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        bytes_per = torch.finfo(dtype).bits // 8
        budget = max(1 << 16, min(CUDA_MAX_TILE_ELEMENTS, free // (8 * bytes_per)))
        seeds = CUDA_SEED_BLOCK if batch_size == "auto" else int(batch_size)
        why = f"{free / 2**30:.1f} GiB free on {device}"
    else:
        budget = CPU_TILE_ELEMENTS
        seeds = CPU_SEED_BLOCK if batch_size == "auto" else int(batch_size)
        why = f"a tile of about {budget:.3g} elements stays in cache"
    blocks = Blocks(seeds=seeds, points=max(256, budget // max(1, seeds)))
    if batch_size != "auto":
        why = f"batch_size={seeds} seeds; {why}"
    return _made(Decision("tiles", f"{blocks.seeds} seeds x {blocks.points} points", why,
                          automatic=batch_size == "auto", choice=blocks))


def auto_blocks(device: torch.device, batch_size: int | str, dtype: torch.dtype):
    """The tile of :func:`decide_tiles`, for callers that only need the sizes."""
    return decide_tiles(device, batch_size, dtype).choice


# ----------------------------------------------------------------------------- merge, labels
# Below this many candidates the blockwise comparison takes milliseconds.
MERGE_GRID_MIN = 4096
# From this many centers, labels come from a hash grid of centers.
LABEL_GRID_MIN_CENTERS = 256


def _hash_grid_unavailable(device: torch.device, n_features: int) -> str | None:
    from ._reference import EXACT_DIFFERENCE_MAX_FEATURES

    if device.type != "cpu":
        return f"the data are on {device.type} (the hash grid is a CPU loop)"
    if not 1 <= n_features <= EXACT_DIFFERENCE_MAX_FEATURES:
        return f"{n_features} features (the hash grid takes 1 to {EXACT_DIFFERENCE_MAX_FEATURES})"
    return compiled_unavailable(device)


def hash_grid_too_wide(name: str) -> Decision:
    """Record that ``name`` ("merge" or "labels") left the hash grid: the coordinates need cells beyond int64."""
    value = "blockwise" if name == "merge" else "nearest-center search"
    return _made(Decision(name, value, "the hash grid would need cells beyond int64 keys", choice=False))


def decide_merge(n_candidates: int, n_features: int, device: torch.device, grid: bool | str = "auto") -> Decision:
    """Merge the modes on the compiled hash grid (``choice`` True) or blockwise; same result."""
    if grid is False:
        return _made(Decision("merge", "blockwise", "asked for", automatic=False, choice=False))
    why_not = _hash_grid_unavailable(device, n_features)
    if why_not is None and grid == "auto" and n_candidates < MERGE_GRID_MIN:
        why_not = f"{n_candidates} candidates < {MERGE_GRID_MIN}: the blockwise comparison is quick"
    if why_not is not None:
        return _made(Decision("merge", "blockwise", why_not, choice=False))
    return _made(Decision("merge", "hash grid (C)", f"{n_candidates} candidates in {n_features}-D on the CPU",
                          choice=True))


def decide_labels(n_centers: int, n_features: int, device: torch.device, force: bool = False) -> Decision:
    """Label on the compiled hash grid of centers (``choice`` True) or with the backend's nearest-center search."""
    why_not = _hash_grid_unavailable(device, n_features)
    if why_not is None and not force and n_centers < LABEL_GRID_MIN_CENTERS:
        why_not = f"{n_centers} centers < {LABEL_GRID_MIN_CENTERS}: every distance is quick"
    if why_not is not None:
        return _made(Decision("labels", "nearest-center search", why_not, choice=False))
    return _made(Decision("labels", "hash grid of centers (C)", f"{n_centers} centers in {n_features}-D on the CPU",
                          choice=True))


# ----------------------------------------------------------------------------- threads
def decide_threads(device: torch.device, how: str = "pieces") -> Decision:
    """CPU threads of the ascent (None off the CPU).

    ``how``: "pieces" (the engine's threads take pieces of each step, torch
    on one thread), "compiled" (the C loop spreads its own work over at most
    that many), or "torch" (torch's own threads, e.g. blurring).
    """
    if device.type != "cpu":
        return _made(Decision("threads", None, f"the work runs on {device.type}"))
    from ._engine.threads import usable_threads

    n = usable_threads()
    cap = "torch's thread setting, capped by the cores this process may use"
    why = {
        "pieces": f"{cap}; each takes pieces of every step, torch itself on one thread",
        "compiled": f"{cap}; the compiled loop spreads its work over at most that many",
        "torch": f"{cap}; torch's own threads split each operation",
    }[how]
    return _made(Decision("threads", n, why))
