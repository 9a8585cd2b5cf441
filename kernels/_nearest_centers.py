"""Fused nearest-center assignment: argmin over centers without a distance matrix.

One program owns a block of points and streams the centers past it, keeping
a running minimum and its index, so only ``(index, squared distance)`` per
point is written.  Distances are computed as in the mean-shift step kernel:
from per-feature differences up to ``EXACT_MAX_FEATURES`` features (exact to
rounding, so the inclusive ``distance <= bandwidth`` test of
``cluster_all=False`` is exact on integer-like data), otherwise from
``|p|^2 + |c|^2 - 2 p.c`` with an IEEE float32 ``tl.dot``.  Ties go
to the lowest center index: within a tile ``tl.argmin`` picks the first
minimum, and a later tile replaces the running minimum only when strictly
smaller.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import Tile, autotune_requested, pick_tile
from ._common import (
    EXACT_MAX_FEATURES,
    INTERPRETED,
    as_rows,
    check_device,
    check_tiles,
    feature_tile,
    output_dtype,
    tiled_dot_and_norms,
    tiled_row_norms,
)

_INTERPRETER_TILES = (32, 16)  # (points, centers) per tile


@triton.jit
def _nearest_kernel(
    points_ptr, centers_ptr, index_ptr, dist_ptr,
    n_points, n_centers, n_features, stride_point, stride_center,
    EXACT: tl.constexpr, N_EXACT: tl.constexpr,
    BLOCK_D: tl.constexpr, D_TILES: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    valid_p = offs_p < n_points
    offs_d = tl.arange(0, BLOCK_D)
    if not EXACT:
        if D_TILES == 1:
            pts = tl.load(
                points_ptr + offs_p[:, None] * stride_point + offs_d[None, :],
                mask=valid_p[:, None] & (offs_d < n_features)[None, :],
                other=0.0,
            )
            p_norm = tl.sum(pts * pts, 1)
        else:
            p_norm = tiled_row_norms(points_ptr, offs_p, stride_point, valid_p, n_features, BLOCK_P, BLOCK_D, D_TILES)

    best = tl.full((BLOCK_P,), float("inf"), tl.float32)
    best_index = tl.zeros((BLOCK_P,), tl.int64)
    for c0 in range(0, n_centers, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        valid_c = offs_c < n_centers
        if EXACT:
            d2 = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
            for j in tl.static_range(N_EXACT):
                p_j = tl.load(points_ptr + offs_p * stride_point + j, mask=valid_p, other=0.0)
                c_j = tl.load(centers_ptr + offs_c * stride_center + j, mask=valid_c, other=0.0)
                diff = p_j[:, None] - c_j[None, :]
                d2 += diff * diff
        else:
            if D_TILES == 1:
                ctr = tl.load(
                    centers_ptr + offs_c[:, None] * stride_center + offs_d[None, :],
                    mask=valid_c[:, None] & (offs_d < n_features)[None, :],
                    other=0.0,
                )
                pc = tl.dot(pts, tl.trans(ctr), input_precision="ieee")
                c_norm = tl.sum(ctr * ctr, 1)
            else:
                pc, c_norm = tiled_dot_and_norms(
                    points_ptr, offs_p, stride_point, valid_p, centers_ptr, offs_c, stride_center, valid_c,
                    n_features, BLOCK_P, BLOCK_C, BLOCK_D, D_TILES,
                )
            d2 = tl.maximum(p_norm[:, None] + c_norm[None, :] - 2.0 * pc, 0.0)
        d2 = tl.where(valid_c[None, :], d2, float("inf"))
        tile_best, tile_arg = tl.min(d2, 1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, (c0 + tile_arg).to(tl.int64), best_index)
    tl.store(index_ptr + offs_p, best_index, mask=valid_p)
    tl.store(dist_ptr + offs_p, best, mask=valid_p)


def _prune_configs(configs, named_args, **kwargs):
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = [
        c for c in configs
        if (c.kwargs["BLOCK_P"] * block_d + 2 * c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_C"]
            + c.kwargs["BLOCK_C"] * block_d) / (32 * c.num_warps) <= 128
    ]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_C"])]


_CONFIGS = [
    triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w, num_stages=2)
    for p in (64, 128)
    for c in (16, 32, 64)
    for w in (4, 8)
]
_nearest_tuned = triton.autotune(
    configs=_CONFIGS,
    key=["n_features", "EXACT"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_nearest_kernel)


def nearest_centers(
    points: torch.Tensor,
    centers: torch.Tensor,
    *,
    block_points: int | None = None,
    block_centers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (int64) of, and squared distance to, the nearest center of every point.

    Same contract as :func:`meanshift_gpu._reference.nearest_centers`, in
    float32 (the distances are cast back to the points' dtype).
    """
    check_device(points, centers)
    out_dtype = output_dtype(points)
    points32 = as_rows(points, "points")
    n_points, n_features = points32.shape
    centers32 = as_rows(centers, "centers", n_features)
    n_centers = centers32.shape[0]
    if n_centers == 0:
        raise ValueError("nearest_centers needs at least one center")
    index = torch.empty(n_points, dtype=torch.int64, device=points.device)
    dist2 = torch.empty(n_points, dtype=torch.float32, device=points.device)
    if n_points == 0:
        return index, dist2.to(out_dtype)
    exact = n_features <= EXACT_MAX_FEATURES
    block_d, d_tiles = feature_tile(n_features)
    args = (
        points32, centers32, index, dist2, n_points, n_centers, n_features,
        points32.stride(0), centers32.stride(0),
    )
    meta = dict(EXACT=exact, N_EXACT=n_features if exact else 0, BLOCK_D=block_d, D_TILES=d_tiles)
    tiles = check_tiles(("block_points", block_points), ("block_centers", block_centers))
    if tiles is None and INTERPRETED:
        tiles = _INTERPRETER_TILES
    if tiles is None and autotune_requested():
        grid = lambda m: (triton.cdiv(n_points, m["BLOCK_P"]),)  # noqa: E731
        _nearest_tuned[grid](*args, **meta)
    else:
        tile = Tile(*tiles) if tiles is not None else pick_tile("nearest", n_features, device=points.device)
        grid = (triton.cdiv(n_points, tile.rows),)
        _nearest_kernel[grid](*args, **meta, BLOCK_P=tile.rows, BLOCK_C=tile.cols,
                              num_warps=tile.num_warps, num_stages=tile.num_stages)
    return index, dist2.to(out_dtype)
