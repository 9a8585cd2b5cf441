"""Neighbour methods: which data points each seed's mean-shift step reads.

Far points weigh nothing (flat, Epanechnikov) or next to nothing (Gaussian
beyond a few bandwidths), so a step only needs the points near each seed.  A
neighbour method (:class:`~meanshift_gpu._neighbors.base.NeighborMethod`) is
built once from the (scaled) data and then answers one step for any set of
seeds.  One file per method:

``dense.py``
    Every seed reads every point: the exact fused pass of the backend.
``grid.py``
    Cells of side = the kernel's reach, points sorted by cell; a seed reads its
    own and the ``3**d - 1`` adjacent cells.  Exact for the flat and
    Epanechnikov kernels.  Low dimensions only.
``rowsum.py``
    The grid's step for the flat kernel in 1-D to 3-D: running sums over rows
    of fine cells, so that only the points near each window's edge are tested
    one by one; in torch, or as the compiled CPU loop (``compiled.py``, the C
    extension ``_native.c`` beside it).
``lsh.py``
    Locality-sensitive hashing in torch: approximate candidate lists; recall
    of the in-window points is reported by :func:`neighbor_recall`.
``faiss_range.py``
    faiss range search over an exact flat or an IVF index (optional faiss).

The Gaussian kernel is truncated at ``truncate`` bandwidths (default 3: the
weight there is ``exp(-4.5) ~ 1.1%`` of the peak) by every method but
``"dense"``.  Which method runs for ``"auto"``, and how the grid steps, is
decided in :mod:`meanshift_gpu._decisions` (:func:`~meanshift_gpu._decisions.decide_neighbors`,
:func:`~meanshift_gpu._decisions.decide_grid_step`); :func:`build_neighbor_method`
builds the class for a decided method.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .._decisions import (
    BATCHED_GRID_STEP, CPU_TILE_ELEMENTS, GRID_MAX_FEATURES, decide_grid_step, decide_neighbors, decide_step_kernels, record,
)
from .._engine.backends import Blocks
from .._reference import flat_edge
from .base import NeighborMethod
from .blocked import DEFAULT_MAX_PAIRS
from .candidates import CandidateListNeighbors
from .dense import DenseNeighbors
from .faiss_range import FaissNeighbors, faiss_unavailable  # noqa: F401  (re-exported)
from .grid import GridIndex, GridNeighbors
from .lsh import LSHNeighbors
from .rowsum import RowSumIndex, RowSumNeighbors

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
    "max_pairs": DEFAULT_MAX_PAIRS,  # seed-point pairs held at once by the candidate step
    "row_sums": "auto",  # grid, flat kernel, d <= 3: prefix sums over rows of fine cells
    "compiled": "auto",  # row sums on the CPU as a compiled loop (C extension) instead of torch
    "cells_per_reach": "auto",  # grid on the fused Triton ascent: cells per reach (2 in 1-3 D, else 1)
}

# Candidate indices the batched grid step holds at once (before out-of-memory shrinks it).
_GRID_MAX_INDICES = 1 << 24


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


def pair_budget(cap: int, blocks: Blocks) -> int:
    """Pairs a pruned step may hold at once: ``cap``, less once out-of-memory has shrunk the tiles.

    The dense tiles start at ``CPU_TILE_ELEMENTS`` elements or more (the smallest start, on the CPU);
    every halving of them (see :func:`meanshift_gpu._engine.ascent.call_shrinking_on_oom`)
    halves this budget too, so a pruned step that ran out of memory retries
    smaller instead of failing the same way again.
    """
    shrink = min(1.0, blocks.seeds * blocks.points / CPU_TILE_ELEMENTS)
    return max(1024, int(int(cap) * shrink))


def mean_window(index: GridIndex) -> float:
    """Estimated mean number of points in the unit window of a seed placed on a data point.

    The share of the ``3**d`` cells around a point (``grid_fraction``) times
    the unit ball's share of those cells; exact for uniform data.
    """
    d = index.n_features
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    return grid_fraction(index) * index.points.shape[0] * ball / 3**d


def choose_neighbors(
    requested: str,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    n_seeds: int,
    kernel: str,
    options: dict,
    per_point_bandwidths: bool = False,
) -> tuple[str, GridIndex | None]:
    """The decided neighbour method for ``n_seeds`` seeds over ``data``, and the grid index if deciding built it.

    The size table (:func:`meanshift_gpu._decisions.decide_neighbors`) builds
    the grid only when it must look at it; the index is then handed on to
    :func:`host_loop_method` rather than built twice.
    """
    grid = None

    def lazy_grid() -> GridIndex:
        nonlocal grid
        if grid is None:
            grid = GridIndex(data, kernel_reach(kernel, options), weights)
        return grid

    method = decide_neighbors(
        requested, n_seeds=n_seeds, n_points=data.shape[0], n_features=data.shape[1], device=data.device,
        kernel=kernel, compiled=options["compiled"], grid=lazy_grid, per_point_bandwidths=per_point_bandwidths,
    ).value
    return method, grid


def host_loop_method(
    method: str, data: torch.Tensor, weights: torch.Tensor | None, *, kernel: str, options: dict, backend,
    grid: GridIndex | None = None,
) -> NeighborMethod:
    """The neighbour method the host loop steps with: which kernels run it, the method built, its step recorded.

    Shared by :class:`meanshift_gpu.MeanShift` and the Dask workers.
    """
    decide_step_kernels(backend.name, data.dtype, kernel, method)
    neighbors = build_neighbor_method(
        method, data, weights, kernel=kernel, options=options,
        dense_step=backend.step, blocked_step=backend.blocked_step, grid=grid,
    )
    if method != "grid":  # the grid's step is decided while it is built
        record("step", neighbors.detail, f"neighbors={method!r} has one step")
    return neighbors


def build_neighbor_method(
    method: str,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    kernel: str,
    options: dict,
    dense_step: Callable,
    grid: GridIndex | None = None,
    blocked_step: Callable | None = None,
) -> NeighborMethod:
    """Bind a decided neighbour method to the scaled data.

    ``dense_step(seeds, data, weights, kernel, blocks)`` is the backend's
    exact step, used by ``"dense"``; ``blocked_step`` is the backend's
    block-sparse step, used by ``"grid"`` and for the candidate lists of
    ``"lsh"`` and ``"faiss"`` (None: the torch one).  For ``"grid"`` the
    step (row sums or not, compiled or not, cells) is
    :func:`meanshift_gpu._decisions.decide_grid_step`'s; ``grid`` is an
    index already built on ``data``, if any.

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu._engine.backends import resolve_backend
    >>> from meanshift_gpu._neighbors import DEFAULT_OPTIONS, build_neighbor_method
    >>> data = torch.rand(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    >>> backend = resolve_backend("torch", data.device)
    >>> build_neighbor_method("grid", data, None, kernel="flat", options=DEFAULT_OPTIONS,
    ...                       dense_step=backend.step).name
    'grid'
    """
    reach = kernel_reach(kernel, options)

    def max_pairs(blocks: Blocks) -> int:
        return pair_budget(options["max_pairs"], blocks)

    if method == "dense":
        return DenseNeighbors(data, weights, dense_step)
    if method == "grid":
        if data.shape[1] > GRID_MAX_FEATURES:
            raise ValueError(
                f"neighbors='grid' reads 3**d cells and supports at most {GRID_MAX_FEATURES} "
                f"features, got {data.shape[1]}; use neighbors='lsh' or 'faiss'"
            )
        index = grid
        window = None

        def grid_index() -> GridIndex:
            nonlocal index
            if index is None:
                index = GridIndex(data, reach, weights)
            return index

        def estimated_window() -> float:
            nonlocal window
            if window is None:
                window = mean_window(grid_index())
            return window

        plan = decide_grid_step(
            options, kernel, data.shape[1], data.device, blocked_step is not None, estimated_window
        )
        if plan.choice.row_sums:
            try:
                rows = RowSumIndex(data, weights, plan.choice.cells)
            except OverflowError:
                if options["row_sums"] is True:
                    raise
                record("step", BATCHED_GRID_STEP, "row sums: the data span too many fine cells for int64 keys")
            else:
                return RowSumNeighbors(rows, compiled=plan.choice.compiled, max_pairs=max_pairs, detail=plan.value)
        return GridNeighbors(
            grid_index(), blocked_step=blocked_step, detail=BATCHED_GRID_STEP if plan.choice.row_sums else plan.value,
            max_indices=lambda blocks: pair_budget(_GRID_MAX_INDICES, blocks),
        )
    if method == "lsh":
        return LSHNeighbors(data, weights, reach=reach, options=options, max_pairs=max_pairs, blocked_step=blocked_step)
    if method == "faiss":
        return FaissNeighbors(data, weights, reach=reach, options=options, max_pairs=max_pairs,
                              blocked_step=blocked_step)
    raise ValueError(f"unknown neighbors {method!r}; expected one of {NEIGHBOR_METHODS}")


def neighbor_recall(
    pruner: NeighborMethod, seeds: torch.Tensor, data: torch.Tensor, *, reach: float = 1.0
) -> float:
    """Share of the true within-``reach`` (seed, point) pairs the pruner finds.

    Exact neighbours come from a dense distance pass, so call this on a
    sample of seeds.  Methods without candidate lists (dense, grid) are exact:
    1.0.
    """
    if not isinstance(pruner, CandidateListNeighbors):
        return 1.0
    seed_ptr, point_index = pruner.candidates(seeds)
    owner = torch.repeat_interleave(torch.arange(seeds.shape[0], device=seeds.device), seed_ptr.diff())
    found = torch.zeros(seeds.shape[0], data.shape[0], dtype=torch.bool, device=seeds.device)
    found[owner, point_index] = True
    truth = torch.cdist(seeds, data).square() <= reach * reach
    n_true = int(truth.sum())
    return 1.0 if n_true == 0 else float((truth & found).sum()) / n_true
