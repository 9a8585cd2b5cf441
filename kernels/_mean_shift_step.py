"""Fused mean-shift step: flash attention with distance logits.

One program owns a block of seeds and streams the data through on-chip
memory in blocks of points, exactly as flash attention streams keys and
values past a block of queries.  For each tile it computes the squared
distances, turns them into kernel weights ``p`` and accumulates ``p @ x``
and ``sum(p)`` in float32, so no seeds x points matrix is ever written.

Two kernels share this structure:

``_step_exact_kernel`` (1 to ``EXACT_MAX_FEATURES`` = 4 features)
    Distances are summed from per-feature differences, in the same order as
    :func:`meanshift_gpu._reference.squared_distances`: exact to rounding, so
    the inclusive flat window matches sklearn on integer-like data.  The
    weighted sums are per-feature row reductions.  ``tl.dot`` would need the
    feature axis padded to 16 columns, which costs more than the 1-4 fused
    multiply-adds per pair done here.
``_step_dot_kernel`` (5 features and more)
    ``|q - x|^2 = |q|^2 + |x|^2 - 2 q.x`` with ``q.x`` and ``p @ x`` from
    ``tl.dot``.  Up to 256 features, the padded feature axis is held whole:
    the data tile is loaded once and used as keys and values.  Wider data
    are cut into 128-column feature tiles; each program then owns one tile
    of output columns and recomputes the distances (streaming all feature
    tiles), which costs ``1 + d / 128`` distance passes instead of one but
    keeps the accumulator within registers for any width.

Kernel weights: flat ``[d2 <= 1]``, Epanechnikov ``max(0, 1 - d2)``,
Gaussian ``exp(-d2 / 2)``.  The Gaussian keeps a running maximum of the
logits (``-d2 / 2 + log w``, in base 2 for ``exp2``) and rescales its
accumulators whenever it grows, as flash attention does, so a seed far from
all data still gets the mean of its nearest points instead of 0 / 0.  Sample
weights multiply flat and Epanechnikov weights and add ``log w`` to Gaussian
logits.  Padding rows and columns of ragged tiles get weight 0 (logit
``-inf``) and are loaded as zeros, so they never reach a result.

Both kernels compute in float32 (other float dtypes are cast, and the
results cast back); the dot products are IEEE float32 (``tl.dot(...,
input_precision="ieee")``), with an error of the order of float32 rounding of
``|q|^2 + |x|^2`` (the engine centres the data, which keeps that small).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import Tile, autotune_requested, pick_tile
from ._common import (
    EXACT_MAX_FEATURES,
    INTERPRETED,
    LN2,
    NEG_HALF_LOG2E,
    check_tiles,
    feature_tile,
    flat_slack,
    step_inputs,
    tiled_dot_and_norms,
    tiled_row_norms,
)

# Fixed tiles under the interpreter: big enough to keep the number of
# (slow, Python-level) tile iterations down, small enough that tests of a
# few hundred points still cross several ragged tile edges.
_INTERPRETER_TILES = {"exact": (32, 64), "dot": (32, 32)}


# ----------------------------------------------------------------------------- device code
@triton.jit
def _kernel_weights(d2, w_n, valid_n, m_i, flat_slack, KERNEL: tl.constexpr, HAS_WEIGHTS: tl.constexpr):
    """Weights ``p`` of one (seeds, points) tile; Gaussian also rescaling state.

    Returns ``(p, alpha, m_new)``: for the Gaussian, ``p`` is relative to the
    new running maximum ``m_new`` (base-2 logits) and ``alpha`` rescales the
    accumulators from the old maximum; other kernels return ``alpha = 1``.
    """
    if KERNEL == "gaussian":
        logit = d2 * NEG_HALF_LOG2E
        if HAS_WEIGHTS:
            logit = logit + w_n[None, :]  # log2 of the sample weights
        logit = tl.where(valid_n[None, :], logit, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logit, 1))
        # A row with only -inf logits so far keeps max -inf; shift by 0 there
        # so exp2 gives 0 instead of NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - shift)
        p = tl.exp2(logit - shift[:, None])
    else:
        if KERNEL == "flat":
            p = tl.where(d2 - 1.0 <= flat_slack, 1.0, 0.0)
        else:  # epanechnikov
            p = tl.maximum(1.0 - d2, 0.0)
        if HAS_WEIGHTS:
            p = p * w_n[None, :]
        p = tl.where(valid_n[None, :], p, 0.0)
        m_new = m_i
        alpha = tl.full(m_i.shape, 1.0, tl.float32)
    return p, alpha, m_new


@triton.jit
def _store_result(
    acc, l_i, m_i, q, offs_s, valid_s, cols, valid_cols, pos_ptr, stride_pos, logd_ptr,
    KERNEL: tl.constexpr,
):
    """Write mean positions (old position where the window is empty) and log densities.

    Only the programs of the first output-column tile write the log density
    (with feature tiles, every column tile computes the same one).
    """
    empty = l_i <= 0.0
    safe_l = tl.where(empty, 1.0, l_i)
    positions = tl.where(empty[:, None], q, acc / safe_l[:, None])
    out_ptrs = pos_ptr + offs_s[:, None] * stride_pos + cols[None, :]
    tl.store(out_ptrs, positions, mask=valid_s[:, None] & valid_cols[None, :])
    log_l = tl.log(safe_l)
    if KERNEL == "gaussian":
        log_l += tl.where(m_i == float("-inf"), 0.0, m_i) * LN2
    first_column_tile = (offs_s * 0 + tl.program_id(1)) == 0
    tl.store(logd_ptr + offs_s, tl.where(empty, float("-inf"), log_l),
             mask=valid_s & first_column_tile)


@triton.jit
def _step_exact_kernel(
    seeds_ptr, data_ptr, weights_ptr, pos_ptr, logd_ptr,
    n_seeds, n_points, stride_seed, stride_data, stride_pos, flat_slack,
    N_FEATURES: tl.constexpr, D_PAD: tl.constexpr,
    KERNEL: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    valid_s = offs_s < n_seeds
    cols = tl.arange(0, D_PAD)
    acc = tl.zeros((BLOCK_S, D_PAD), tl.float32)
    l_i = tl.zeros((BLOCK_S,), tl.float32)
    m_i = tl.full((BLOCK_S,), float("-inf"), tl.float32)
    for n0 in range(0, n_points, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid_n = offs_n < n_points
        d2 = tl.zeros((BLOCK_S, BLOCK_N), tl.float32)
        for j in tl.static_range(N_FEATURES):
            q_j = tl.load(seeds_ptr + offs_s * stride_seed + j, mask=valid_s, other=0.0)
            x_j = tl.load(data_ptr + offs_n * stride_data + j, mask=valid_n, other=0.0)
            diff = q_j[:, None] - x_j[None, :]
            d2 += diff * diff
        w_n = offs_n  # placeholder when unweighted (never read)
        if HAS_WEIGHTS:
            w_n = tl.load(weights_ptr + offs_n, mask=valid_n, other=0.0)
        p, alpha, m_new = _kernel_weights(d2, w_n, valid_n, m_i, flat_slack, KERNEL, HAS_WEIGHTS)
        if KERNEL == "gaussian":
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            m_i = m_new
        else:
            l_i += tl.sum(p, 1)
        for j in tl.static_range(N_FEATURES):
            x_j = tl.load(data_ptr + offs_n * stride_data + j, mask=valid_n, other=0.0)
            acc += tl.where(cols[None, :] == j, tl.sum(p * x_j[None, :], 1)[:, None], 0.0)
    valid_cols = cols < N_FEATURES
    q = tl.load(
        seeds_ptr + offs_s[:, None] * stride_seed + cols[None, :],
        mask=valid_s[:, None] & valid_cols[None, :],
        other=0.0,
    )
    _store_result(acc, l_i, m_i, q, offs_s, valid_s, cols, valid_cols, pos_ptr, stride_pos,
                  logd_ptr, KERNEL)


@triton.jit
def _step_dot_kernel(
    seeds_ptr, data_ptr, weights_ptr, pos_ptr, logd_ptr,
    n_seeds, n_points, n_features, stride_seed, stride_data, stride_pos, flat_slack,
    KERNEL: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    BLOCK_D: tl.constexpr, D_TILES: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    valid_s = offs_s < n_seeds
    offs_d = tl.arange(0, BLOCK_D)
    # Output columns of this program (all of them unless the features are tiled).
    cols_out = tl.program_id(1) * BLOCK_D + offs_d
    valid_out = cols_out < n_features

    if D_TILES == 1:
        q = tl.load(
            seeds_ptr + offs_s[:, None] * stride_seed + offs_d[None, :],
            mask=valid_s[:, None] & valid_out[None, :],
            other=0.0,
        )
        q_norm = tl.sum(q * q, 1)
    else:
        q_norm = tiled_row_norms(seeds_ptr, offs_s, stride_seed, valid_s, n_features, BLOCK_S, BLOCK_D, D_TILES)

    acc = tl.zeros((BLOCK_S, BLOCK_D), tl.float32)
    l_i = tl.zeros((BLOCK_S,), tl.float32)
    m_i = tl.full((BLOCK_S,), float("-inf"), tl.float32)
    for n0 in range(0, n_points, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid_n = offs_n < n_points
        if D_TILES == 1:
            # One tile serves as keys (distances) and values (weighted sum).
            x = tl.load(
                data_ptr + offs_n[:, None] * stride_data + offs_d[None, :],
                mask=valid_n[:, None] & valid_out[None, :],
                other=0.0,
            )
            qx = tl.dot(q, tl.trans(x), input_precision="ieee")
            x_norm = tl.sum(x * x, 1)
        else:
            qx, x_norm = tiled_dot_and_norms(
                seeds_ptr, offs_s, stride_seed, valid_s, data_ptr, offs_n, stride_data, valid_n, n_features,
                BLOCK_S, BLOCK_N, BLOCK_D, D_TILES,
            )
            x = tl.load(
                data_ptr + offs_n[:, None] * stride_data + cols_out[None, :],
                mask=valid_n[:, None] & valid_out[None, :],
                other=0.0,
            )
        d2 = tl.maximum(q_norm[:, None] + x_norm[None, :] - 2.0 * qx, 0.0)
        w_n = offs_n  # placeholder when unweighted (never read)
        if HAS_WEIGHTS:
            w_n = tl.load(weights_ptr + offs_n, mask=valid_n, other=0.0)
        p, alpha, m_new = _kernel_weights(d2, w_n, valid_n, m_i, flat_slack, KERNEL, HAS_WEIGHTS)
        if KERNEL == "gaussian":
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            m_i = m_new
        else:
            l_i += tl.sum(p, 1)
        acc += tl.dot(p, x, input_precision="ieee")

    # Seeds with empty windows keep their old position.
    q_out = tl.load(
        seeds_ptr + offs_s[:, None] * stride_seed + cols_out[None, :],
        mask=valid_s[:, None] & valid_out[None, :],
        other=0.0,
    )
    _store_result(acc, l_i, m_i, q_out, offs_s, valid_s, cols_out, valid_out, pos_ptr,
                  stride_pos, logd_ptr, KERNEL)


# ------------------------------------------------------------------------------ autotuning
def _registers_per_thread(block_s: int, block_n: int, block_d: int, num_warps: int) -> float:
    """Rough float32 registers a thread needs: accumulator, seeds, data tile, two pair tiles."""
    live = 2 * block_s * block_d + block_n * block_d + 2 * block_s * block_n
    return live / (32 * num_warps)


def _prune_dot_configs(configs, named_args, **kwargs):
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = [
        c for c in configs
        if _registers_per_thread(c.kwargs["BLOCK_S"], c.kwargs["BLOCK_N"], block_d, c.num_warps) <= 128
    ]
    # Never prune everything: fall back to the smallest tile.
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_S"] * c.kwargs["BLOCK_N"])]


def _prune_exact_configs(configs, named_args, **kwargs):
    kept = [
        c for c in configs
        if 3 * c.kwargs["BLOCK_S"] * c.kwargs["BLOCK_N"] / (32 * c.num_warps) <= 128
    ]
    return kept or configs[:1]


_DOT_CONFIGS = [
    triton.Config({"BLOCK_S": s, "BLOCK_N": n}, num_warps=w, num_stages=st)
    for s in (32, 64, 128)
    for n in (32, 64, 128)
    for w in (4, 8)
    for st in (2, 3)
]
_EXACT_CONFIGS = [
    triton.Config({"BLOCK_S": s, "BLOCK_N": n}, num_warps=w, num_stages=2)
    for s in (32, 64, 128)
    for n in (64, 128, 256)
    for w in (4, 8)
]

# The step is timed once per (features, kernel, weights); the number of
# seeds shrinks as seeds converge, so it is not part of the key.
_step_dot_tuned = triton.autotune(
    configs=_DOT_CONFIGS,
    key=["n_features", "KERNEL", "HAS_WEIGHTS"],
    prune_configs_by={"early_config_prune": _prune_dot_configs},
)(_step_dot_kernel)
_step_exact_tuned = triton.autotune(
    configs=_EXACT_CONFIGS,
    key=["N_FEATURES", "KERNEL", "HAS_WEIGHTS"],
    prune_configs_by={"early_config_prune": _prune_exact_configs},
)(_step_exact_kernel)


# --------------------------------------------------------------------------------- launcher
def mean_shift_step(
    seeds: torch.Tensor,
    data: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    kernel: str = "flat",
    block_seeds: int | None = None,
    block_points: int | None = None,
):
    """One fused mean-shift step (see the module docstring for the design).

    Same contract as :func:`meanshift_gpu._reference.mean_shift_step`; the
    computation is float32 (other float dtypes are cast, and the results
    cast back).  ``block_seeds`` / ``block_points`` fix the tile sizes
    (powers of two >= 16) instead of taking them from the tile table.
    """
    from meanshift_gpu._reference import StepResult

    seeds32, data32, weights32, out_dtype = step_inputs(seeds, data, weights, kernel)
    n_seeds, n_features = seeds32.shape
    n_points = data32.shape[0]
    positions = torch.empty((n_seeds, n_features), dtype=torch.float32, device=seeds.device)
    log_density = torch.empty(n_seeds, dtype=torch.float32, device=seeds.device)
    if n_seeds == 0:
        return StepResult(positions.to(out_dtype), log_density.to(out_dtype))

    has_weights = weights32 is not None
    if not has_weights:
        weights32 = data32  # never read
    common = (seeds32, data32, weights32, positions, log_density)
    slack = flat_slack()
    tiles = check_tiles(("block_seeds", block_seeds), ("block_points", block_points))
    if n_features <= EXACT_MAX_FEATURES:
        args = (*common, n_seeds, n_points, seeds32.stride(0), data32.stride(0), positions.stride(0), slack)
        meta = dict(
            N_FEATURES=n_features,
            D_PAD=triton.next_power_of_2(n_features),
            KERNEL=kernel,
            HAS_WEIGHTS=has_weights,
        )
        if tiles is None and INTERPRETED:
            tiles = _INTERPRETER_TILES["exact"]
        if tiles is None and autotune_requested():
            grid = lambda m: (triton.cdiv(n_seeds, m["BLOCK_S"]),)  # noqa: E731
            _step_exact_tuned[grid](*args, **meta)
        else:
            tile = _tile("step_exact", n_features, kernel, seeds.device, tiles)
            grid = (triton.cdiv(n_seeds, tile.rows),)
            _step_exact_kernel[grid](*args, **meta, BLOCK_S=tile.rows, BLOCK_N=tile.cols,
                                     num_warps=tile.num_warps, num_stages=tile.num_stages)
    else:
        block_d, d_tiles = feature_tile(n_features)
        args = (
            *common, n_seeds, n_points, n_features,
            seeds32.stride(0), data32.stride(0), positions.stride(0), slack,
        )
        meta = dict(
            KERNEL=kernel,
            HAS_WEIGHTS=has_weights,
            BLOCK_D=block_d,
            D_TILES=d_tiles,
        )
        if tiles is None and INTERPRETED:
            tiles = _INTERPRETER_TILES["dot"]
        if tiles is None and autotune_requested():
            grid = lambda m: (triton.cdiv(n_seeds, m["BLOCK_S"]), d_tiles)  # noqa: E731
            _step_dot_tuned[grid](*args, **meta)
        else:
            tile = _tile("step_dot", n_features, kernel, seeds.device, tiles)
            grid = (triton.cdiv(n_seeds, tile.rows), d_tiles)
            _step_dot_kernel[grid](*args, **meta, BLOCK_S=tile.rows, BLOCK_N=tile.cols,
                                   num_warps=tile.num_warps, num_stages=tile.num_stages)
    return StepResult(positions.to(out_dtype), log_density.to(out_dtype))


def _tile(op, n_features, kernel, device, tiles):
    """Explicit tiles, else the committed table's row for this GPU (see ``_tiles``)."""
    if tiles is not None:
        return Tile(tiles[0], tiles[1])
    return pick_tile(op, n_features, kernel, device)

