"""Triton kernels for meanshift_gpu, installed as ``meanshift_gpu.kernels``.

Import this subpackage only through ``meanshift_gpu`` (never as a top-level
``kernels`` module: another PyPI package has that name).  Triton is imported
lazily, on the first kernel call, so the library imports and works without
it; calling a kernel without Triton raises an ``ImportError`` that says how
to install it.

The kernels work on *scaled* coordinates (bandwidth 1) and follow the
contracts of :mod:`meanshift_gpu._reference`, which is their test oracle:

- :func:`mean_shift_step`: fused flash-attention-style mean-shift step;
- :func:`nearest_centers`: fused argmin over cluster centers;
- :func:`kth_neighbor_distance`: k-th-neighbour distance (bandwidth estimate);
- :func:`blocked_step`: block-sparse step that reads only candidate points
  (neighbour pruning), contract of
  :func:`meanshift_gpu._neighbors.blocked.blocked_step`.

They run compiled on CUDA tensors, or on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, which must be set before Triton is first
imported; slow, for tests).  Tile sizes come from a committed table keyed
by GPU architecture, feature count and kernel (:mod:`meanshift_gpu.kernels._tiles`),
so no fit autotunes; ``MEANSHIFT_GPU_AUTOTUNE=1`` asks for autotuning instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from meanshift_gpu._reference import StepResult

__all__ = [
    "blocked_step",
    "kth_neighbor_distance",
    "mean_shift_step",
    "nearest_centers",
]


def _implementation(name: str) -> ModuleType:
    """Import a kernel module (and Triton) on first use, with clear errors."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the Triton kernels need the 'triton' package (pip install 'meanshift-gpu[triton]'); "
            "without it use backend='torch'"
        ) from exc
    from . import _common

    reason = _common.triton_mode_error()
    if reason is not None:
        raise RuntimeError(reason)
    return importlib.import_module(f"{__name__}.{name}")


def mean_shift_step(
    seeds: "torch.Tensor",
    data: "torch.Tensor",
    weights: "torch.Tensor | None" = None,
    *,
    kernel: str = "flat",
    block_seeds: int | None = None,
    block_points: int | None = None,
) -> "StepResult":
    """One fused mean-shift step: move every seed to the kernel-weighted data mean.

    An attention pass with queries = seeds, keys = values = data and logits
    ``-|q - x|^2 / 2`` (bandwidth 1), computed like flash attention: data
    tiles stream past a block of seeds and only the weighted sums are kept.
    Results match :func:`meanshift_gpu._reference.mean_shift_step` to float32
    rounding: the kernel computes in float32, with IEEE float32 dot products
    from 5 features on (per-feature differences up to 4).

    Parameters
    ----------
    seeds : Tensor of shape (n_seeds, n_features)
        Current seed positions (scaled coordinates), on a CUDA device (or
        the CPU under ``TRITON_INTERPRET=1``).
    data : Tensor of shape (n_points, n_features)
        Data points (scaled coordinates), same device as ``seeds``.
    weights : Tensor of shape (n_points,) or None
        Non-negative sample weights (not checked here); ``None`` means ones.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile; the bandwidth is 1 in scaled coordinates.
    block_seeds, block_points : int or None
        Tile sizes (powers of two >= 16); ``None`` takes them from the tile table on the GPU and
        uses fixed small tiles under the interpreter.  Results do not depend
        on them beyond float rounding.

    Returns
    -------
    StepResult
        ``positions`` (n_seeds, n_features) and ``log_density`` (n_seeds,),
        in the seeds' dtype.  A seed with an empty window keeps its position
        and gets ``log_density = -inf``.

    Examples
    --------
    >>> import os, torch
    >>> _ = os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors need the interpreter
    >>> from meanshift_gpu import kernels
    >>> data = torch.tensor([[0.0], [0.5], [5.0]])
    >>> kernels.mean_shift_step(data[:1], data).positions
    tensor([[0.2500]])
    """
    return _implementation("_mean_shift_step").mean_shift_step(
        seeds, data, weights, kernel=kernel, block_seeds=block_seeds, block_points=block_points,
    )


def nearest_centers(
    points: "torch.Tensor",
    centers: "torch.Tensor",
    *,
    block_points: int | None = None,
    block_centers: int | None = None,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Index of, and squared distance to, the nearest center of every point.

    Fused argmin: centers stream past a block of points, so no points x
    centers matrix is written.  Ties go to the lowest center index, as in
    :func:`meanshift_gpu._reference.nearest_centers`.

    Parameters
    ----------
    points : Tensor of shape (n_points, n_features)
        Points to label (scaled coordinates).
    centers : Tensor of shape (n_centers, n_features)
        Cluster centers, ``n_centers >= 1``, same device as ``points``.
    block_points, block_centers : int or None
        Tile sizes (powers of two >= 16); ``None`` picks them automatically.

    Returns
    -------
    index : Tensor of shape (n_points,), int64
        Nearest center of each point.
    dist2 : Tensor of shape (n_points,)
        Squared distance to it, in the points' dtype.

    Examples
    --------
    >>> import os, torch
    >>> _ = os.environ.setdefault("TRITON_INTERPRET", "1")
    >>> from meanshift_gpu import kernels
    >>> idx, d2 = kernels.nearest_centers(torch.tensor([[0.0], [3.0]]), torch.tensor([[1.0], [4.0]]))
    >>> idx.tolist(), d2.tolist()
    ([0, 1], [1.0, 1.0])
    """
    return _implementation("_nearest_centers").nearest_centers(
        points, centers, block_points=block_points, block_centers=block_centers
    )


def kth_neighbor_distance(
    queries: "torch.Tensor", data: "torch.Tensor", k: int, *, query_block: int | None = None
) -> "torch.Tensor":
    """Distance from each query to its k-th nearest data point (1-based).

    Squared distances of a block of queries are produced by a fused Triton
    tile kernel and the k-th is selected with ``torch.kthvalue`` (a fused
    selection cannot hold the ``k = 0.3 N`` candidates on chip; see
    ``meanshift_gpu.kernels._kth_neighbor``).  A query that is itself in
    ``data`` counts as its own first neighbour, as in sklearn.

    Parameters
    ----------
    queries : Tensor of shape (n_queries, n_features)
        Query points.
    data : Tensor of shape (n_points, n_features)
        Reference points, same device as ``queries``.
    k : int
        Rank of the neighbour, ``1 <= k <= n_points``.
    query_block : int or None
        Queries per distance block; ``None`` sizes it from a memory budget.

    Returns
    -------
    Tensor of shape (n_queries,)
        Distances (not squared), in the queries' dtype.

    Examples
    --------
    >>> import os, torch
    >>> _ = os.environ.setdefault("TRITON_INTERPRET", "1")
    >>> from meanshift_gpu import kernels
    >>> x = torch.tensor([[0.0], [1.0], [3.0]])
    >>> kernels.kth_neighbor_distance(x, x, 2).tolist()
    [1.0, 1.0, 2.0]
    """
    return _implementation("_kth_neighbor").kth_neighbor_distance(
        queries, data, k, query_block=query_block
    )


def blocked_step(
    seeds: "torch.Tensor",
    data: "torch.Tensor",
    weights: "torch.Tensor | None",
    block_starts: "torch.Tensor",
    block_indices: "torch.Tensor",
    *,
    kernel: str = "flat",
    seed_block: int,
    split: int | None = None,
    block_seeds: int | None = None,
    block_points: int | None = None,
    validate: bool = True,
) -> "StepResult":
    """Fused block-sparse step: each block of seeds reads only its candidate points.

    Seed block ``b`` is rows ``[b * seed_block, min((b + 1) * seed_block, m))``;
    its candidates ``block_indices[block_starts[b]:block_starts[b + 1]]`` are
    gathered tile by tile and streamed past the block as in
    :func:`mean_shift_step`.  Same contract as
    :func:`meanshift_gpu._neighbors.blocked.blocked_step` (results match it to float32
    rounding; float32 throughout): per block, the dense step on
    ``data[candidates]``.  Per-seed candidate lists (LSH, faiss) are blocks
    of one seed.

    Parameters
    ----------
    seeds : Tensor of shape (m, d)
        Seed positions (scaled coordinates), on a CUDA device (or the CPU
        under ``TRITON_INTERPRET=1``).
    data : Tensor of shape (n, d)
        Data points, same device.
    weights : Tensor of shape (n,) or None
        Non-negative sample weights; ``None`` means ones.
    block_starts : int64 Tensor of shape (ceil(m / seed_block) + 1,)
        CSR pointers into ``block_indices``.
    block_indices : int64 Tensor of shape (nnz,)
        Data row indices of each block's candidates.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile (bandwidth 1).
    seed_block : int
        Seeds per block (any positive size; programs tile it by ``block_seeds``).
    split : int or None
        Candidate lists longer than this are spread over several programs
        whose partial sums are combined afterwards (load balance for skewed
        blocks).  ``None``: ``max(1024, 4 * mean list length)``.
    block_seeds, block_points : int or None
        Tile sizes (powers of two >= 16); ``None`` takes them from the tile table.
    validate : bool, default=True
        Check the CSR layout and index range first (costs a few reductions).

    Returns
    -------
    StepResult
        ``positions`` (m, d) and ``log_density`` (m,) in the seeds' dtype.

    Examples
    --------
    >>> import os, torch
    >>> _ = os.environ.setdefault("TRITON_INTERPRET", "1")
    >>> from meanshift_gpu import kernels
    >>> data = torch.tensor([[0.0], [0.5], [0.9], [5.0]])
    >>> seeds = torch.tensor([[0.0], [0.2], [5.0]])
    >>> starts, index = torch.tensor([0, 2, 3]), torch.tensor([0, 1, 3])
    >>> kernels.blocked_step(seeds, data, None, starts, index, seed_block=2).positions
    tensor([[0.2500],
            [0.2500],
            [5.0000]])
    """
    return _implementation("_sparse_step").blocked_step(
        seeds, data, weights, block_starts, block_indices, kernel=kernel, seed_block=seed_block,
        split=split, block_seeds=block_seeds, block_points=block_points,
        validate=validate,
    )


def _ascent_module() -> ModuleType:
    """The fused ascent kernel's module (:mod:`meanshift_gpu.kernels._ascent`), imported on first use."""
    return _implementation("_ascent")


# Most features the fused ascent kernel unrolls: its one definition, here so
# that the engine can ask without importing Triton (``_ascent.MAX_FEATURES``
# reads it).
_ASCENT_MAX_FEATURES = 8


def _ascent_max_features() -> int:
    """Most features the fused ascent kernel takes (``_ascent.MAX_FEATURES``)."""
    return _ASCENT_MAX_FEATURES
