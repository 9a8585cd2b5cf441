"""Variable-bandwidth (adaptive) mean shift, after Comaniciu, Ramesh and Meer (2001).

Every data point ``x_i`` carries its own bandwidth ``h_i`` (from the distance
to its k-th nearest neighbour), and a seed ``q`` moves to

    m(q) = sum_i w_i x_i / sum_i w_i,   w_i = s_i / h_i^(d+2) * g(|q - x_i|^2 / h_i^2)

where ``g`` is the kernel profile and ``s_i`` the sample weight: the mean-shift
vector of the sample-point estimator, so points in tight regions (small
``h_i``) pull hard over short range and points in diffuse regions pull gently
over long range.

Like :mod:`meanshift_gpu._reference`, this works in *scaled* coordinates: the
caller divides the data by a reference bandwidth ``h_ref`` (the median of the
``h_i``), and the step receives the *relative* bandwidths ``h_i / h_ref``.
It is pure torch (tiled, any device) and is deliberately separate from
``_reference.mean_shift_step``: the fixed-bandwidth step stays the oracle of
the Triton kernels, and the adaptive fit always runs its step on this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._engine.backends import Backend, Blocks
from .._reference import KERNELS, StepResult, squared_distances

# Relative bandwidths are clipped to [1/_MAX_RATIO, _MAX_RATIO] around the
# median: a point with >= k exact duplicates has a k-th neighbour distance of
# 0 (an infinite weight), and an isolated outlier would get a window that
# spans the data.  A factor of 10 either way still covers the cluster-scale
# ratios the method is meant for.
_MAX_RATIO = 10.0


def pilot_k(n_samples: int) -> int:
    """Neighbour rank of the pilot bandwidths: about sqrt(n), at least 1, below n.

    ``sqrt(n)`` is the usual compromise for k-nearest-neighbour density
    estimates: it grows with the data (so the pilot is not noise) while
    staying a vanishing fraction of it (so it stays local).
    """
    return int(min(max(1, round(math.sqrt(n_samples))), max(1, n_samples - 1)))


def relative_bandwidths(
    data: torch.Tensor, k: int, backend: Backend, blocks: Blocks, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``r_k(x_i) / median_j r_k(x_j)``, clipped: each point's bandwidth relative to the median.

    ``r_k`` is the distance to the k-th nearest neighbour (the point itself
    counting as the first, as in scikit-learn's ``estimate_bandwidth``).
    With ``weights``, neighbours are taken among the positive-weight points
    only and the median over them, so zero-weight points change nothing but
    get a bandwidth of their own.  Returns ones when the median distance is
    zero (heavily duplicated data).

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu._engine.backends import Blocks, resolve_backend
    >>> x = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    >>> backend = resolve_backend("torch", x.device)
    >>> relative_bandwidths(x, 2, backend, Blocks(256, 4096)).tolist()
    [1.0, 1.0, 1.0, 8.0]
    """
    centred = data - data.mean(0)
    reference = centred
    if weights is not None and not bool((weights > 0).all()):
        reference = centred[weights > 0]
    if reference.shape[0] == 0:
        return torch.ones(data.shape[0], dtype=data.dtype, device=data.device)
    k = int(min(max(1, k), reference.shape[0]))
    radii = backend.kth_distance(centred, reference, k, blocks)
    median = radii.median() if reference is centred else radii[weights > 0].median()
    if not bool(median > 0):
        return torch.ones_like(radii)
    return (radii / median).clamp_(1.0 / _MAX_RATIO, _MAX_RATIO)


def adaptive_mean_shift_step(
    seeds: torch.Tensor,
    data: torch.Tensor,
    relative_bandwidth: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    kernel: str = "flat",
    seed_block: int = 256,
    point_block: int = 4096,
) -> StepResult:
    """One variable-bandwidth mean-shift step (scaled coordinates).

    Point ``i`` has window radius (or sigma) ``relative_bandwidth[i]`` and
    weight ``s_i / relative_bandwidth[i]**(d+2)`` inside it.  All weights are
    accumulated in the log domain with a running maximum per seed (as flash
    attention does), because ``h^-(d+2)`` spans hundreds of orders of
    magnitude in high dimension; so no kernel ever underflows to an empty
    window that is not empty.

    Parameters
    ----------
    seeds : Tensor of shape (n_seeds, n_features)
        Current seed positions.
    data : Tensor of shape (n_points, n_features)
        Data points, same dtype and device as ``seeds``.
    relative_bandwidth : Tensor of shape (n_points,)
        Positive bandwidth of each data point, in the scaled units.
    weights : Tensor of shape (n_points,) or None
        Non-negative sample weights; ``None`` means all ones.
    kernel : {"flat", "gaussian", "epanechnikov"}
        Kernel profile ``g``.
    seed_block, point_block : int
        Tile sizes; results do not depend on them beyond float rounding.

    Returns
    -------
    StepResult
        New positions, and ``log(sum_i w_i)`` at the old positions
        (``-inf`` where no point's window holds the seed; such seeds keep
        their position).

    Examples
    --------
    >>> import torch
    >>> data = torch.tensor([[0.0], [0.5], [5.0]], dtype=torch.float64)
    >>> h = torch.tensor([1.0, 1.0, 10.0], dtype=torch.float64)
    >>> step = adaptive_mean_shift_step(data[:1], data, h)
    >>> round(float(step.positions[0, 0]), 4)  # the far point's wide window reaches 0, weakly
    0.2524
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    n_seeds, n_features = seeds.shape
    dtype, device = seeds.dtype, seeds.device
    bandwidth = relative_bandwidth.to(dtype)
    inv_h2 = bandwidth.reciprocal().square()
    log_factor = -(n_features + 2) * bandwidth.log()
    if weights is not None:
        log_factor = log_factor + weights.to(dtype).log()
    values = torch.cat([data, torch.ones(data.shape[0], 1, dtype=dtype, device=device)], 1)

    positions = torch.empty_like(seeds)
    log_density = torch.empty(n_seeds, dtype=dtype, device=device)
    for s0 in range(0, n_seeds, seed_block):
        q = seeds[s0 : s0 + seed_block]
        acc = torch.zeros(q.shape[0], n_features + 1, dtype=dtype, device=device)
        running_max = torch.full((q.shape[0],), -math.inf, dtype=dtype, device=device)
        for p0 in range(0, data.shape[0], point_block):
            x = data[p0 : p0 + point_block]
            u = squared_distances(q, x).mul_(inv_h2[p0 : p0 + point_block])
            logits = _log_profile(u, kernel).add_(log_factor[p0 : p0 + point_block])
            block_max = torch.maximum(running_max, logits.amax(1))
            # Rows with no point in reach keep max -inf; shift by 0 so exp gives 0, not NaN.
            shift = torch.where(torch.isinf(block_max), 0.0, block_max)
            acc *= torch.exp(running_max - shift)[:, None]
            acc += torch.exp(logits - shift[:, None]) @ values[p0 : p0 + point_block]
            running_max = block_max
        total = acc[:, -1]
        empty = total <= 0
        safe_total = torch.where(empty, 1.0, total)
        positions[s0 : s0 + seed_block] = torch.where(empty[:, None], q, acc[:, :-1] / safe_total[:, None])
        log_total = torch.log(total) + torch.where(torch.isinf(running_max), 0.0, running_max)
        log_density[s0 : s0 + seed_block] = torch.where(empty, -math.inf, log_total)
    return StepResult(positions, log_density)


def _log_profile(u: torch.Tensor, kernel: str) -> torch.Tensor:
    """log g(u) on scaled squared distances u (``-inf`` outside the window)."""
    if kernel == "gaussian":
        return u.mul_(-0.5)
    if kernel == "flat":
        return torch.where(u <= 1.0, 0.0, -math.inf).to(u.dtype)
    return (1.0 - u).clamp_min_(0.0).log_()


@dataclass(frozen=True)
class PointBandwidths:
    """Per-point bandwidths of an adaptive fit.

    Attributes
    ----------
    reference : float
        ``h_ref``, the median bandwidth in the user's units: the engine's
        scaling, the merge radius, the convergence unit and the orphan radius
        of ``cluster_all=False``.
    relative : Tensor of shape (n_samples,)
        ``h_i / h_ref`` for every point, on the data's device.
    """

    reference: float
    relative: torch.Tensor

    def values(self) -> np.ndarray:
        """``h_i`` in the user's units, as a float64 numpy array."""
        return self.relative.detach().double().cpu().numpy() * self.reference


def adaptive_backend(base: Backend, relative: torch.Tensor) -> Backend:
    """``base`` with its step replaced by the variable-bandwidth step.

    The engine's loops (seed ascent, blurring) call ``backend.step`` with the
    full data (or all moving points, for blurring) as ``data``, always in the
    original point order, so the i-th relative bandwidth stays with the i-th
    point.  Nearest-center labelling and neighbour search stay on ``base``.
    """

    def step(seeds, data, weights, kernel, blocks: Blocks):
        return adaptive_mean_shift_step(
            seeds,
            data,
            relative,
            weights,
            kernel=kernel,
            seed_block=blocks.seeds,
            point_block=blocks.points,
        )

    return replace(base, name=f"adaptive-{base.name}", step=step)
