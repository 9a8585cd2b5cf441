"""Neighbour pruning: which data points each seed's mean-shift step reads.

Far points weigh nothing (flat, Epanechnikov) or next to nothing (Gaussian
beyond a few bandwidths), so a step only needs the points near each seed.  A
*pruner* is built once from the (scaled) data and then answers one step for
any set of seeds.  Methods:

``"dense"``
    Every seed reads every point: the exact fused pass of the backend.
``"grid"``
    Cells of side = the kernel's reach, points sorted by cell; a seed reads its
    own and the ``3**d - 1`` adjacent cells (:mod:`meanshift_gpu._neighbors.grid`).
    Exact for the flat and Epanechnikov kernels.  Low dimensions only.  With
    the flat kernel in 1-D to 3-D (option ``row_sums="auto"``) the step runs
    as running sums over rows of fine cells instead
    (:mod:`meanshift_gpu._neighbors.rowsum`): only the points near each window's edge
    are tested one by one.  On the CPU that is a compiled loop (the C
    extension, option ``compiled="auto"``); otherwise torch, in 1-D and
    2-D only, for windows of ~400 points or more.
``"lsh"``
    Locality-sensitive hashing in torch: ``n_tables`` tables of ``n_bits``
    quantised random projections each (bucket width ``bucket_width`` times the
    reach), buckets found by sorting; a seed reads the union of its buckets.
    Approximate: recall of the in-window points is reported by
    :func:`neighbor_recall`.
``"faiss"``
    faiss range search (radius = reach) over an exact flat index, or an IVF
    index (``nlist`` cells, ``nprobe`` probed) for large data.  Needs the
    optional faiss package.

The Gaussian kernel is truncated at ``truncate`` bandwidths (default 3: the
weight there is ``exp(-4.5) ~ 1.1%`` of the peak) by every method but
``"dense"``.

``"auto"`` picks from this size table (``pairs`` = seeds x points):

=======================  =====================================================
condition                method
=======================  =====================================================
adaptive bandwidths      dense (per-point windows are not pruned)
pairs <= 2.5e7 (CPU;     dense: the fused pass is already fast and exact
4e6 for d <= 2 and an
exact grid, and for the
flat kernel in 3-D with
the C extension),
2e10 (CUDA)
n_features <= 6          grid, unless a grid neighbourhood would hold more than
                         a third of the data (huge bandwidths), then dense
otherwise                dense (LSH and faiss are approximate: ask for them)
=======================  =====================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .._engine.backends import Blocks
from .grid import GridIndex, grid_mean_shift_step
from .._reference import StepResult, flat_edge
from .rowsum import (
    ROW_CELLS, ROWSUM_MAX_FEATURES, RowSumIndex, compiled_rowsum_step, compiled_unavailable, rowsum_step,
)
from .blocked import blocked_step

NEIGHBOR_METHODS = ("auto", "dense", "grid", "lsh", "faiss")

# Defaults of the per-method options (``MeanShift(neighbor_options=...)``).
DEFAULT_OPTIONS = {
    "truncate": 3.0,  # Gaussian reach, in bandwidths
    "n_tables": 16,  # LSH
    "n_bits": 3,  # LSH projections per table
    "bucket_width": 2.0,  # LSH quantisation step, in reaches
    "seed": 0,  # LSH projections
    "index": "auto",  # faiss: "flat", "ivf" or "auto"
    "nlist": None,  # faiss IVF cells (None: 4 * sqrt(n))
    "nprobe": None,  # faiss IVF cells probed (None: nlist // 4, at least 16)
    "max_pairs": 1 << 22,  # seed-point pairs held at once by the candidate step
    "row_sums": "auto",  # grid, flat kernel, d <= 3: prefix sums over rows of fine cells
    "compiled": "auto",  # row sums on the CPU as a compiled loop (C extension) instead of torch
    "cells_per_reach": "auto",  # grid on the fused Triton ascent: cells per reach (2 in 1-3 D, else 1)
}

# Measured on 2 CPU cores: grid beat dense 6x at 50k points in 3-D and 4x at
# 20k in 5-D; below ~5k x 5k pairs both take well under a second.
_AUTO_DENSE_PAIRS = {"cpu": 2.5e7, "cuda": 2e10}
# In 1-D and 2-D the grid (row sums) already wins at 5k points on 2 CPU cores:
# 0.08 s against 0.21 s for dense (blobs, 1,000 per window); even at 1k.
_AUTO_DENSE_PAIRS_2D = {"cpu": 4e6}
_GRID_MAX_FEATURES = 6
_GRID_MAX_FRACTION = 1 / 3
_ROW_SUMS_AUTO_MAX_FEATURES = 2
_GRID_MAX_INDICES = 1 << 24
# Smallest starting tile (CPU: 256 seeds x 4096 points); see pair_budget.
_TILE_ELEMENTS_AT_START = 1 << 20
_ROW_SUMS_MIN_WINDOW = 400  # mean points per window, estimated from the grid
_ROW_CELLS_16_FROM = 1500
# Compiled: (windows below this, cells per bandwidth), by dimension; see row_cells.
_COMPILED_ROW_CELLS = {
    2: ((2500, 1), (8000, 2), (50000, 4), (math.inf, 8)),
    3: ((5000, 1), (30000, 2), (math.inf, 4)),
}
# The compiled row sums (C extension, CPU) also take 3-D, and beat the batched
# grid at every window size measured (benchmarks/README.md, "Tuning history"),
# so they need no minimum window.
_ROW_SUMS_AUTO_MAX_FEATURES_COMPILED = 3


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_neighbor_options(options: dict | None) -> dict:
    """Merge user options over the defaults; unknown keys are an error."""
    merged = dict(DEFAULT_OPTIONS)
    if options is None:
        return merged
    if not isinstance(options, dict):
        raise TypeError(f"neighbor_options must be a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown neighbor_options {unknown}; valid keys are {sorted(DEFAULT_OPTIONS)}"
        )
    merged.update(options)
    for key in ("truncate", "bucket_width"):
        if not (_is_real(merged[key]) and math.isfinite(merged[key]) and merged[key] > 0):
            raise ValueError(f"neighbor_options[{key!r}] must be a finite number > 0, got {merged[key]!r}")
    for key in ("n_tables", "n_bits", "max_pairs"):
        if not (_is_integer(merged[key]) and merged[key] >= 1):
            raise ValueError(f"neighbor_options[{key!r}] must be an integer >= 1, got {merged[key]!r}")
    if not _is_integer(merged["seed"]):
        raise ValueError(f"neighbor_options['seed'] must be an integer, got {merged['seed']!r}")
    for key in ("nlist", "nprobe"):
        if merged[key] is not None and not (_is_integer(merged[key]) and merged[key] >= 1):
            raise ValueError(
                f"neighbor_options[{key!r}] must be None (automatic) or an integer >= 1, got {merged[key]!r}"
            )
    for key in ("row_sums", "compiled"):
        if isinstance(merged[key], np.bool_):
            merged[key] = bool(merged[key])
        if not (merged[key] == "auto" or isinstance(merged[key], bool)):
            raise ValueError(
                f"neighbor_options[{key!r}] must be 'auto', True or False, got {merged[key]!r}"
            )
    cells = merged["cells_per_reach"]
    if not (cells == "auto" or (_is_integer(cells) and 1 <= cells <= 8)):
        raise ValueError(
            f"neighbor_options['cells_per_reach'] must be 'auto' or an integer from 1 to 8, got {cells!r}"
        )
    if merged["index"] not in ("auto", "flat", "ivf"):
        raise ValueError(
            f"neighbor_options['index'] must be 'auto', 'flat' or 'ivf', got {merged['index']!r}"
        )
    return merged


def kernel_reach(kernel: str, options: dict) -> float:
    """Distance (in bandwidths) beyond which a point is ignored.

    The flat window reaches its edge, which lies a rounding beyond 1
    (:func:`meanshift_gpu._reference.flat_edge`).
    """
    if kernel == "gaussian":
        return float(options["truncate"])
    return math.sqrt(flat_edge()) if kernel == "flat" else 1.0


def faiss_unavailable() -> str | None:
    """None when faiss imports, else how to install it."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "faiss is not installed: pip install 'meanshift-gpu[faiss]' (or faiss-gpu)"
    return None


def grid_fraction(index: GridIndex) -> float:
    """Mean share of the data that a seed placed on a data point would read."""
    counts = index.cell_counts.double()
    total = torch.zeros_like(counts)
    first = torch.cat([index.cell_starts, index.cell_starts.new_tensor([index.points.shape[0]])])
    for offset in index.run_offsets.tolist():
        lo = torch.searchsorted(index.cell_keys, index.cell_keys + offset - 1)
        hi = torch.searchsorted(index.cell_keys, index.cell_keys + offset + 1, right=True)
        total += (first[hi] - first[lo]).double()
    n = index.points.shape[0]
    return float((counts * total).sum() / (n * n))


def choose_method(
    method: str,
    *,
    n_seeds: int,
    n_points: int,
    n_features: int,
    device: torch.device,
    adaptive: bool = False,
    grid: Callable[[], GridIndex] | None = None,
    kernel: str = "flat",
    compiled: str | bool = "auto",
) -> str:
    """Resolve ``"auto"`` from the size table in the module docstring.

    ``compiled`` is ``neighbor_options["compiled"]``: with the compiled row
    sums, the exact 3-D flat grid also wins from the 2-D threshold on.
    """
    if method != "auto":
        return method
    if adaptive:
        return "dense"
    pairs = n_seeds * n_points
    dense_pairs = _AUTO_DENSE_PAIRS.get(device.type, _AUTO_DENSE_PAIRS["cpu"])
    low_dense_pairs = min(dense_pairs, _AUTO_DENSE_PAIRS_2D.get(device.type, dense_pairs))
    if n_features <= 2 and kernel != "gaussian":  # the grid truncates the Gaussian
        dense_pairs = low_dense_pairs
    elif (
        n_features == 3 and kernel == "flat" and low_dense_pairs < pairs <= dense_pairs
        and compiled is not False and _use_compiled("auto", device)
    ):
        dense_pairs = low_dense_pairs
    if pairs <= dense_pairs:
        return "dense"
    if n_features <= _GRID_MAX_FEATURES:
        try:
            if grid is None or grid_fraction(grid()) <= _GRID_MAX_FRACTION:
                return "grid"
        except OverflowError:  # data spanning ~1e15 bandwidths: no grid keys
            return "dense"
    return "dense"


# ------------------------------------------------------------------ candidate step
def _chunked_pairs_step(seeds, data, weights, index, *, kernel, reach, max_pairs, step=None):
    """Run ``index.candidates`` + the block-sparse step over seed chunks.

    Chunks are cut so that each holds about ``max_pairs`` candidate pairs:
    from the index's cheap per-seed upper bound (``index.count``) when it has
    one, else from the candidates per seed seen so far.
    """
    n_seeds = seeds.shape[0]
    bounds = None
    if hasattr(index, "count"):
        cumulative = torch.cumsum(index.count(seeds), 0)
        # Chunk c ends at the last seed whose cumulative count fits c * max_pairs.
        bounds = torch.searchsorted(
            cumulative, torch.arange(1, int(cumulative[-1]) // max_pairs + 2, device=seeds.device) * max_pairs,
            right=True,
        ).tolist() if n_seeds else []
    per_seed = 64.0
    positions, log_density = [], []
    s0 = 0
    while s0 < n_seeds:
        if bounds is not None:
            s1 = next((b for b in bounds if b > s0), n_seeds)
            s1 = max(s0 + 1, min(s1, n_seeds))
        else:
            s1 = min(n_seeds, s0 + max(1, int(max_pairs // per_seed)))
        part = seeds[s0:s1]
        seed_ptr, point_index = index.candidates(part)
        # Per-seed candidate lists are blocks of one seed.
        result = (step or blocked_step)(
            part, data, weights, seed_ptr - seed_ptr[0], point_index, kernel=kernel, seed_block=1,
            truncate=reach if kernel == "gaussian" else None,
        )
        positions.append(result.positions)
        log_density.append(result.log_density)
        per_seed = max(1.0, point_index.numel() / part.shape[0])
        s0 = s1
    return StepResult(torch.cat(positions), torch.cat(log_density))


# ------------------------------------------------------------------------- pruners
@dataclass
class Pruner:
    """One neighbour method bound to one data set (scaled coordinates)."""

    method: str
    step: Callable[[torch.Tensor, str, Blocks], StepResult]
    candidates: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    # The step spreads its own work over the CPU threads (the compiled row sums).
    threaded: bool = False
    # What the step runs, in words (fit_info_["step"]).
    detail: str = ""


class _LSHIndex:
    """Quantised random projections; buckets located by sorting the keys."""

    def __init__(self, data: torch.Tensor, reach: float, options: dict):
        n, d = data.shape
        gen = torch.Generator(device="cpu").manual_seed(int(options["seed"]))
        self.n_tables = int(options["n_tables"])
        self.n_bits = int(options["n_bits"])
        width = float(options["bucket_width"]) * reach
        proj = torch.randn(self.n_tables, d, self.n_bits, generator=gen, dtype=torch.float64)
        self.proj = (proj / width).to(data.dtype).to(data.device)
        self.shift = torch.rand(self.n_tables, 1, self.n_bits, generator=gen, dtype=torch.float64).to(
            data.dtype
        ).to(data.device)
        self.keys = []
        self.orders = []
        for t in range(self.n_tables):
            key = self._keys(data, t)
            key, order = torch.sort(key)
            self.keys.append(key)
            self.orders.append(order)

    def _keys(self, x: torch.Tensor, table: int) -> torch.Tensor:
        codes = torch.floor(x @ self.proj[table] + self.shift[table]).long()
        # Mix the codes into one int64 (collisions only merge buckets: more candidates).
        key = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for b in range(self.n_bits):
            key = key * 1_000_003 + codes[:, b]
        return key

    def count(self, seeds: torch.Tensor) -> torch.Tensor:
        """Upper bound on each seed's candidates: its bucket sizes summed over tables."""
        total = torch.zeros(seeds.shape[0], dtype=torch.long, device=seeds.device)
        for t in range(self.n_tables):
            key = self._keys(seeds, t)
            total += torch.searchsorted(self.keys[t], key, right=True) - torch.searchsorted(self.keys[t], key)
        return total

    def candidates(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owners, points = [], []
        for t in range(self.n_tables):
            key = self._keys(seeds, t)
            lo = torch.searchsorted(self.keys[t], key)
            hi = torch.searchsorted(self.keys[t], key, right=True)
            counts = hi - lo
            owner = torch.repeat_interleave(torch.arange(seeds.shape[0], device=seeds.device), counts)
            within = torch.arange(int(counts.sum()), device=seeds.device) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts
            )
            owners.append(owner)
            points.append(self.orders[t][torch.repeat_interleave(lo, counts) + within])
        return _unique_pairs(torch.cat(owners), torch.cat(points), seeds.shape[0])


def _unique_pairs(owner: torch.Tensor, point: torch.Tensor, n_seeds: int):
    """CSR (seed_ptr, point_index) of the distinct (owner, point) pairs."""
    if owner.numel():
        n_points = int(point.max()) + 1
        pair = torch.unique(owner * n_points + point)
        owner, point = pair // n_points, pair % n_points
    counts = torch.bincount(owner, minlength=n_seeds)
    seed_ptr = torch.zeros(n_seeds + 1, dtype=torch.long, device=owner.device)
    seed_ptr[1:] = torch.cumsum(counts, 0)
    return seed_ptr, point


class _FaissIndex:
    """faiss range search (exact flat or IVF) on float32 copies of the data."""

    def __init__(self, data: torch.Tensor, reach: float, options: dict):
        import faiss
        import numpy as np

        self._np = np
        self.faiss = faiss
        n, d = data.shape
        self.radius2 = reach * reach * (1 + 1e-5)  # float32 search, exact test later
        kind = options["index"]
        if kind == "auto":
            kind = "ivf" if n >= 200_000 else "flat"
        x = np.ascontiguousarray(data.detach().cpu().numpy(), dtype=np.float32)
        if kind == "flat":
            index = faiss.IndexFlatL2(d)
        else:
            nlist = int(options["nlist"] or max(16, int(4 * math.sqrt(n))))
            nlist = min(nlist, max(1, n // 39))
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist)
            sample = x if n <= 256 * nlist else x[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
            index.train(sample)
            index.nprobe = min(nlist, int(options["nprobe"] or max(16, nlist // 4)))
        index.add(x)
        self.index = index
        self.kind = kind
        self.device = data.device

    def candidates(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        np = self._np
        q = np.ascontiguousarray(seeds.detach().cpu().numpy(), dtype=np.float32)
        lims, _, ids = self.index.range_search(q, self.radius2)
        seed_ptr = torch.from_numpy(lims.astype(np.int64)).to(self.device)
        return seed_ptr, torch.from_numpy(ids.astype(np.int64)).to(self.device)


def pair_budget(cap: int, blocks: Blocks) -> int:
    """Pairs a pruned step may hold at once: ``cap``, less once out-of-memory has shrunk the tiles.

    The dense tiles start at ``_TILE_ELEMENTS_AT_START`` elements or more;
    every halving of them (see :func:`meanshift_gpu._engine.ascent.call_shrinking_on_oom`)
    halves this budget too, so a pruned step that ran out of memory retries
    smaller instead of failing the same way again.
    """
    shrink = min(1.0, blocks.seeds * blocks.points / _TILE_ELEMENTS_AT_START)
    return max(1024, int(int(cap) * shrink))


def mean_window(index: GridIndex) -> float:
    """Estimated mean number of points in the unit window of a seed placed on a data point.

    The share of the ``3**d`` cells around a point (``grid_fraction``) times
    the unit ball's share of those cells; exact for uniform data.
    """
    d = index.n_features
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    return grid_fraction(index) * index.points.shape[0] * ball / 3**d


def row_cells(n_features: int, window: float, compiled: bool = False) -> int:
    """Cells per bandwidth across the rows (a power of two) for a mean window of ``window`` points.

    More cells narrow the band of tested points (~ window / m) but add rows
    (~ m in 2-D, ~ m**2 in 3-D).  Measured on 2 CPU cores, uniform data:

    * torch version, 2-D: m = 8 was best at 300-1,000 points per window,
      m = 16 at 3,000-10,000 (24 was no better);
    * compiled (its band test is vectorised, so a wide band costs little and
      few rows pay), 2-D: m = 1 up to ~2,500 points, 2 to ~8,000, 4 at
      10,000-30,000; 3-D: m = 1 up to ~5,000, 2 at 10,000-30,000.

    Other cases use ``ROW_CELLS``.
    """
    if n_features == 1:
        return 1
    if compiled:
        for limit, cells in _COMPILED_ROW_CELLS[n_features]:
            if window < limit:
                return cells
    if n_features != 2:
        return ROW_CELLS[n_features]
    return 8 if window < _ROW_CELLS_16_FROM else 16


def _use_compiled(choice, device: torch.device) -> bool:
    """Whether row sums run as the compiled CPU loop (:mod:`meanshift_gpu._neighbors.compiled`).

    "auto" takes it whenever the C extension loads and the data are on the CPU; the
    torch version is the fallback, and the one used on GPUs.
    """
    if choice is False:
        return False
    reason = compiled_unavailable()
    if device.type != "cpu" and reason is None:
        reason = f"the data are on {device.type}, and the compiled row sums run on the CPU"
    if choice is True and reason is not None:
        raise RuntimeError(f"neighbor_options['compiled']=True cannot run: {reason}")
    return reason is None


def _use_row_sums(
    choice, kernel: str, n_features: int, blocked_step, window: Callable[[], float], compiled: bool
) -> bool:
    """Whether the grid runs as row prefix sums (:mod:`meanshift_gpu._neighbors.rowsum`).

    They need the flat kernel and at most three features.  "auto" takes the
    compiled loop whenever it can run (it beat the batched grid at every
    window size measured).  The torch version needs full windows (a fixed
    cost per row of cells only pays off against many points: on 2 CPU cores
    the batched grid was 3x faster at ~20 points per window, even at ~300,
    and row sums 2x faster at ~2,500) and at most two features (in 3-D its
    tested band is most of the ball, and the batched grid was 3-5x faster).
    "auto" leaves a backend's own block-sparse kernel (Triton) in charge:
    asked for by name, it should run.
    """
    possible = kernel == "flat" and n_features <= ROWSUM_MAX_FEATURES
    if choice is True and not possible:
        raise ValueError(
            "neighbor_options['row_sums']=True needs kernel='flat' and at most "
            f"{ROWSUM_MAX_FEATURES} features, got kernel={kernel!r} with {n_features}"
        )
    if choice == "auto":
        most = _ROW_SUMS_AUTO_MAX_FEATURES_COMPILED if compiled else _ROW_SUMS_AUTO_MAX_FEATURES
        if not (possible and n_features <= most and blocked_step is None):
            return False
        return compiled or window() >= _ROW_SUMS_MIN_WINDOW
    return bool(choice)


def build_pruner(
    method: str,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    kernel: str,
    options: dict,
    dense_step: Callable,
    grid: GridIndex | None = None,
    blocked_step: Callable | None = None,
) -> Pruner:
    """Bind a resolved neighbour method to the scaled data.

    ``dense_step(seeds, data, weights, kernel, blocks)`` is the backend's
    exact step, used by ``"dense"``; ``blocked_step`` is the backend's
    block-sparse step, used by ``"grid"`` and for the candidate lists of
    ``"lsh"`` and ``"faiss"`` (None: the torch one).
    """
    reach = kernel_reach(kernel, options)
    if method == "dense":
        return Pruner("dense", lambda seeds, k, blocks: dense_step(seeds, data, weights, k, blocks),
                      detail="dense: every seed against every point")
    if method == "grid":
        if data.shape[1] > _GRID_MAX_FEATURES:
            raise ValueError(
                f"neighbors='grid' reads 3**d cells and supports at most {_GRID_MAX_FEATURES} "
                f"features, got {data.shape[1]}; use neighbors='lsh' or 'faiss'"
            )
        built = [grid] if grid is not None else []
        window: list[float] = []

        def grid_index():
            if not built:
                built.append(GridIndex(data, reach, weights))
            return built[0]

        def estimated_window():
            if not window:
                window.append(mean_window(grid_index()))
            return window[0]

        rows = None
        compiled = _use_compiled(options["compiled"], data.device) if kernel == "flat" else False
        if _use_row_sums(options["row_sums"], kernel, data.shape[1], blocked_step, estimated_window, compiled):
            d = data.shape[1]
            cells = row_cells(d, estimated_window(), compiled)
            try:
                rows = RowSumIndex(data, weights, cells)
            except OverflowError:
                if options["row_sums"] is True:
                    raise
        if rows is not None:

            if compiled:
                def row_sum_step(seeds, k, blocks):
                    return compiled_rowsum_step(seeds, rows)

            else:

                def row_sum_step(seeds, k, blocks):
                    return rowsum_step(seeds, rows, max_pairs=pair_budget(options["max_pairs"], blocks))

            how = "compiled C loop" if compiled else "torch"
            return Pruner("grid", row_sum_step, None, threaded=compiled,
                          detail=f"grid: row prefix sums, {how}, {cells} cell{'s' if cells != 1 else ''} per bandwidth")
        index = grid_index()

        def grid_step(seeds, k, blocks):
            return grid_mean_shift_step(
                seeds, index, kernel=k, blocked_step=blocked_step,
                max_indices=pair_budget(_GRID_MAX_INDICES, blocks),
            )

        why = "" if kernel == "flat" and data.shape[1] <= ROWSUM_MAX_FEATURES else f" ({kernel} kernel, {data.shape[1]} features)"
        return Pruner("grid", grid_step, None, detail=f"grid: cells of one reach, batched block-sparse step{why}")
    if method in ("lsh", "faiss"):
        if method == "faiss":
            reason = faiss_unavailable()
            if reason is not None:
                raise RuntimeError(f"neighbors='faiss' cannot run: {reason}")
            index = _FaissIndex(data, reach, options)
        else:
            index = _LSHIndex(data, reach, options)
        def candidate_step(seeds, k, blocks):
            return _chunked_pairs_step(
                seeds, data, weights, index, kernel=k, reach=reach,
                max_pairs=pair_budget(options["max_pairs"], blocks), step=blocked_step,
            )

        kind = f"faiss {index.kind} index" if method == "faiss" else f"LSH, {index.n_tables} tables"
        return Pruner(method, candidate_step, index.candidates, detail=f"{method}: candidate lists ({kind})")
    raise ValueError(f"unknown neighbors {method!r}; expected one of {NEIGHBOR_METHODS}")


def neighbor_recall(
    pruner: Pruner, seeds: torch.Tensor, data: torch.Tensor, *, reach: float = 1.0
) -> float:
    """Share of the true within-``reach`` (seed, point) pairs the pruner finds.

    Exact neighbours come from a dense distance pass, so call this on a
    sample of seeds.  Methods without candidate lists (dense, grid) are exact:
    1.0.
    """
    if pruner.candidates is None:
        return 1.0
    seed_ptr, point_index = pruner.candidates(seeds)
    owner = torch.repeat_interleave(torch.arange(seeds.shape[0], device=seeds.device), seed_ptr.diff())
    found = torch.zeros(seeds.shape[0], data.shape[0], dtype=torch.bool, device=seeds.device)
    found[owner, point_index] = True
    truth = torch.cdist(seeds, data).square() <= reach * reach
    n_true = int(truth.sum())
    return 1.0 if n_true == 0 else float((truth & found).sum()) / n_true
