"""Pure-torch reference implementation of the mean-shift building blocks.

This module is the definition of correct: every Triton kernel and every
neighbour-pruning path is tested against these functions (run in float64).
The same functions, run in the input dtype, are also the CPU engine.

All functions work on *scaled* coordinates: the caller divides the data by the
bandwidth (per feature if needed), so a kernel of radius / sigma 1 is used
throughout.  Nothing here ever materialises a seeds x points matrix larger than
one ``(seed_block, point_block)`` tile.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import NamedTuple

import torch

KERNELS = ("flat", "gaussian", "epanechnikov")

# Up to this many features the squared distance is summed from per-feature
# differences, which is exact to rounding and so keeps sklearn's inclusive
# ``distance <= bandwidth`` window bit-for-bit on integer-like data.  Above it,
# ``|q|^2 - 2 q.x + |x|^2`` (a matmul) is much faster; callers centre the data
# first so the cancellation error stays small.
EXACT_DIFFERENCE_MAX_FEATURES = 3

_flat = threading.local()


def flat_edge() -> float:
    """The flat window's edge on squared scaled distances: 1, or the value a fit set (:func:`using_flat_edge`).

    Examples
    --------
    >>> flat_edge()
    1.0
    """
    return getattr(_flat, "edge", 1.0)


@contextlib.contextmanager
def using_flat_edge(edge: float):
    """Within: :func:`flat_edge` is ``edge`` (in this thread; worker threads take it over explicitly).

    Examples
    --------
    >>> with using_flat_edge(1.0 + 1e-12):
    ...     flat_edge() > 1.0
    True
    """
    before = getattr(_flat, "edge", None)
    _flat.edge = float(edge)
    try:
        yield
    finally:
        if before is None:
            del _flat.edge
        else:
            _flat.edge = before


def typical_extent(scaled: torch.Tensor) -> float:
    """The size of scaled coordinates that sets the edge's rounding allowance: the 99th
    percentile of the points' largest coordinates.

    Not the maximum: one far outlier would widen every window by its own
    rounding; pairs among the farthest 1% are decided by plain rounding.

    Examples
    --------
    >>> typical_extent(torch.tensor([[0.5, -2.0], [1.0, 0.0], [1e9, 1e9]]))
    2.0
    """
    if not scaled.numel():
        return 0.0
    largest = scaled.abs().amax(1)
    n = largest.shape[0]
    # The 99th percentile, and never the maximum itself unless it is all there is.
    return float(largest.kthvalue(min(max(1, n - 1), math.ceil(0.99 * n))).values)


def flat_edge_for(dtype: torch.dtype, n_features: int, extent: float) -> float:
    """The flat window's edge for data scaled by the bandwidth: ``1`` plus the rounding of the scaling.

    scikit-learn includes a point at distance exactly ``bandwidth``
    (``sum (x - q)**2 <= bandwidth**2``, exact on integer or quantised data).
    After centring and dividing by the bandwidth, each coordinate is rounded
    (by up to half a unit in the last place of its size, ``extent`` being the
    largest scaled coordinate), and so is each term of the squared distance:
    a squared distance that is exactly 1 in exact arithmetic can come out a
    few units above it.  The edge allows for that rounding, and no more: a
    point counts as inside when its distance is within the rounding of the
    bandwidth, which on exact data means exactly within it.

    Examples
    --------
    >>> 1.0 < flat_edge_for(torch.float64, 2, 4.0) < 1.0 + 1e-13
    True
    """
    eps = torch.finfo(dtype).eps
    # Each coordinate of a seed and of a point is off by up to eps/2 of the
    # extent, which moves a squared distance near 1 by up to ~2 sqrt(d) eps
    # extent; squaring and summing add ~(d + 2) eps/2.  Twice that, for the
    # means' own rounding.
    return 1.0 + eps * (4.0 * math.sqrt(n_features) * (1.0 + float(extent)) + 2.0 * (n_features + 2))


class StepResult(NamedTuple):
    """Output of one mean-shift step for a set of seeds.

    Attributes
    ----------
    positions : Tensor of shape (n_seeds, n_features)
        Kernel-weighted mean of the data around each seed.  Seeds whose window
        is empty keep their old position.
    log_density : Tensor of shape (n_seeds,)
        ``log(sum_i s_i k(|q - x_i|^2))`` at the *old* seed position, ``-inf``
        when the window is empty.  For the flat kernel this is the log of the
        (weighted) number of points within the bandwidth, i.e. sklearn's
        cluster intensity.
    """

    positions: torch.Tensor
    log_density: torch.Tensor


def squared_distances(queries: torch.Tensor, points: torch.Tensor, near: float | None = None) -> torch.Tensor:
    """Squared Euclidean distances between two point sets, shape (n_q, n_p).

    Up to ``EXACT_DIFFERENCE_MAX_FEATURES`` features they are summed from
    per-feature differences.  Above, from a matmul; with ``near`` (an edge a
    caller compares them with), the entries within the matmul's rounding of
    ``near`` are summed from differences again, so comparisons with the edge
    are decided as exactly as in few dimensions.
    """
    n_features = queries.shape[1]
    if n_features <= EXACT_DIFFERENCE_MAX_FEATURES:
        return summed_squared_differences(queries[:, None, :], points[None, :, :])
    d2 = torch.addmm(points.square().sum(1), queries, points.T, alpha=-2.0)
    d2 += queries.square().sum(1, keepdim=True)
    d2.clamp_min_(0.0)
    if near is not None:
        refine_near_edge(d2, queries, points, near)
    return d2


def refine_near_edge(d2: torch.Tensor, queries: torch.Tensor, points: torch.Tensor, edge: float) -> None:
    """Recompute, from per-feature differences, the entries of matmul distances ``d2`` near ``edge``.

    ``d2`` is (..., s, t) for queries (..., s, d) and points (..., t, d).
    The matmul form ``|q|^2 - 2 q.x + |x|^2`` is off by up to a few units in
    the last place of ``(|q| + |x|)**2``; entries within that of the edge are
    replaced (in place), so that ``d2 <= edge`` is decided by the exact formula.
    """
    if not d2.numel():
        return
    eps = torch.finfo(d2.dtype).eps
    largest = float(queries.abs().amax()) + float(points.abs().amax()) if queries.numel() and points.numel() else 0.0
    reach = 4.0 * (queries.shape[-1] + 3) * eps * (largest * largest * queries.shape[-1] + 1.0)
    close = torch.nonzero((d2 - edge).abs_() <= reach)
    if not close.shape[0]:
        return
    *batch, row, col = close.unbind(1)
    d2[(*batch, row, col)] = summed_squared_differences(queries[(*batch, row)], points[(*batch, col)])


def summed_squared_differences(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_j (a_j - b_j)**2`` over the last axis, feature by feature in order (broadcasting the others).

    The exact formula: no cancellation, so a distance exactly on an edge
    stays there up to the rounding of the inputs.

    Examples
    --------
    >>> summed_squared_differences(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])).tolist()
    [25.0]
    """
    d2 = (a[..., 0] - b[..., 0]).square_()
    for j in range(1, a.shape[-1]):
        d2 += (a[..., j] - b[..., j]).square_()
    return d2


def kernel_weights(d2: torch.Tensor, kernel: str) -> torch.Tensor:
    """Kernel profile on scaled squared distances (bandwidth 1).

    Flat and Epanechnikov weights are exactly zero beyond the bandwidth; the
    Gaussian returns *log* weights (its stable form, see ``mean_shift_step``).
    """
    if kernel == "flat":
        return (d2 <= flat_edge()).to(d2.dtype)
    if kernel == "epanechnikov":
        return (1.0 - d2).clamp_min_(0.0)
    if kernel == "gaussian":
        return d2.mul_(-0.5)
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")


def mean_shift_step(
    seeds: torch.Tensor,
    data: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    kernel: str = "flat",
    seed_block: int = 256,
    point_block: int = 4096,
) -> StepResult:
    """One mean-shift step: move every seed to the kernel-weighted data mean.

    This is an attention pass with queries = seeds, keys = values = data and
    logits ``-|q - x|^2 / 2`` (bandwidth 1).  Data blocks are streamed per
    seed block; the Gaussian kernel keeps a running maximum of the logits, as
    flash attention does, so no seed ever divides 0 by 0 when all of its
    weights underflow.

    Parameters
    ----------
    seeds : Tensor of shape (n_seeds, n_features)
        Current seed positions (scaled coordinates).
    data : Tensor of shape (n_points, n_features)
        Data points (scaled coordinates), same dtype and device as ``seeds``.
    weights : Tensor of shape (n_points,) or None
        Non-negative sample weights; ``None`` means all ones.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile; the bandwidth is 1 in scaled coordinates.
    seed_block, point_block : int
        Tile sizes.  Results do not depend on them beyond float rounding.

    Returns
    -------
    StepResult
        New positions and log densities.

    Examples
    --------
    >>> import torch
    >>> data = torch.tensor([[0.0], [0.5], [5.0]], dtype=torch.float64)
    >>> mean_shift_step(data[:1], data).positions
    tensor([[0.2500]], dtype=torch.float64)
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    n_seeds, n_features = seeds.shape
    dtype, device = seeds.dtype, seeds.device
    log_weights = None
    if kernel == "gaussian" and weights is not None:
        log_weights = weights.log()
    values = torch.cat([data, torch.ones(data.shape[0], 1, dtype=dtype, device=device)], 1)
    if weights is not None and kernel != "gaussian":
        weighted_values = values * weights[:, None]
    else:
        weighted_values = values

    positions = torch.empty_like(seeds)
    log_density = torch.empty(n_seeds, dtype=dtype, device=device)
    for s0 in range(0, n_seeds, seed_block):
        q = seeds[s0 : s0 + seed_block]
        acc = torch.zeros(q.shape[0], n_features + 1, dtype=dtype, device=device)
        running_max = torch.full((q.shape[0],), -math.inf, dtype=dtype, device=device)
        for p0 in range(0, data.shape[0], point_block):
            x = data[p0 : p0 + point_block]
            w = kernel_weights(squared_distances(q, x, flat_edge() if kernel == "flat" else None), kernel)
            if kernel == "gaussian":
                if log_weights is not None:
                    w += log_weights[p0 : p0 + point_block]
                block_max = torch.maximum(running_max, w.amax(1))
                # A row whose logits are all -inf (zero weights) keeps max -inf;
                # shift by 0 there so that exp() gives 0, not NaN.
                shift = torch.where(torch.isinf(block_max), 0.0, block_max)
                acc *= torch.exp(running_max - shift)[:, None]
                w = torch.exp(w - shift[:, None])
                running_max = block_max
            acc += w @ weighted_values[p0 : p0 + point_block]
        total = acc[:, -1]
        empty = total <= 0
        safe_total = torch.where(empty, 1.0, total)
        positions[s0 : s0 + seed_block] = torch.where(
            empty[:, None], q, acc[:, :-1] / safe_total[:, None]
        )
        log_total = torch.log(total)
        if kernel == "gaussian":
            log_total = log_total + torch.where(torch.isinf(running_max), 0.0, running_max)
        log_density[s0 : s0 + seed_block] = torch.where(empty, -math.inf, log_total)
    return StepResult(positions, log_density)


def nearest_centers(
    points: torch.Tensor, centers: torch.Tensor, *, point_block: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and squared distance to, the nearest center of every point.

    Ties go to the lowest center index.

    Examples
    --------
    >>> import torch
    >>> idx, d2 = nearest_centers(torch.tensor([[0.0], [3.0]]), torch.tensor([[1.0], [4.0]]))
    >>> idx.tolist(), d2.tolist()
    ([0, 1], [1.0, 1.0])
    """
    index = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    dist2 = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    block = max(1, point_block // max(1, centers.shape[0] // 64 + 1))
    for p0 in range(0, points.shape[0], block):
        d2 = squared_distances(points[p0 : p0 + block], centers)
        dist2[p0 : p0 + block], index[p0 : p0 + block] = d2.min(1)
    return index, dist2


def kth_neighbor_distance(
    queries: torch.Tensor, data: torch.Tensor, k: int, *, query_block: int = 256
) -> torch.Tensor:
    """Distance from each query to its k-th nearest data point (1-based).

    A query that is itself in ``data`` counts as its own first neighbour, at
    distance 0, as in :func:`sklearn.cluster.estimate_bandwidth`.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    >>> kth_neighbor_distance(x, x, 2).tolist()
    [1.0, 1.0, 2.0]
    """
    if not 1 <= k <= data.shape[0]:
        raise ValueError(f"k must be in [1, {data.shape[0]}], got {k}")
    out = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
    for q0 in range(0, queries.shape[0], query_block):
        d2 = squared_distances(queries[q0 : q0 + query_block], data)
        out[q0 : q0 + query_block] = torch.kthvalue(d2, k, dim=1).values
    return out.sqrt_()
