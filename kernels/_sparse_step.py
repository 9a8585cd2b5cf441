"""Block-sparse fused mean-shift step: each block of seeds reads only its candidate points.

Triton version of :func:`meanshift_gpu._neighbors.blocked.blocked_step` (same
contract; that torch function is the test oracle).  The design follows the
dense kernel in :mod:`._mean_shift_step`, with the data tile *gathered*
through an index list instead of read as a contiguous slice.

``_blocked_kernel`` (seed blocks sharing a candidate list, CSR layout)
    A program owns a tile of ``BLOCK_S`` seeds of one seed block and walks
    that block's candidate list ``BLOCK_N`` indices at a time: it loads the
    indices, gathers those data rows, and from then on is the dense step
    (exact per-feature differences up to ``EXACT_MAX_FEATURES`` features,
    ``tl.dot`` for the distances and ``p @ x`` above; feature tiles over 256
    columns; Gaussian with the online running maximum).  Seed blocks larger
    than ``BLOCK_S`` are covered by several programs (grid axis 2), so the
    tile size is tuned independently of the caller's ``seed_block``.

    Load balance: with one program per block, one block with 100k candidates
    next to blocks of 10 would run alone long after the others finish.
    Candidate lists longer than ``split`` entries are therefore cut into
    *work items* of ``split`` candidates; the programs of a cut block write
    partial sums ``(sum p x, sum p, running max)`` and a short torch pass
    combines them (log-sum-exp rescaling for the Gaussian) -- the split-K /
    flash-decoding scheme.  Without long blocks the kernel writes the final
    positions directly.

The kernel computes in float32 (other float dtypes are cast and the results
cast back; IEEE float32 ``tl.dot``), masks every padding row / index so it
never reaches a result (padding indices read row 0 with weight 0), and gives
an empty window its old position and ``log_density = -inf``.  The
neighbour methods with per-seed candidate lists (LSH, faiss) pass them as
blocks of one seed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._tiles import Tile, autotune_requested, pick_tile
from ._common import (
    EXACT_MAX_FEATURES,
    INTERPRETED,
    LN2,
    check_device,
    check_tiles,
    feature_tile,
    flat_slack,
    step_inputs,
    tiled_dot_and_norms,
    tiled_row_norms,
)
from ._mean_shift_step import _kernel_weights, _store_result

# Fixed tiles under the interpreter: (BLOCK_S, BLOCK_N).
_INTERPRETER_BLOCKED = (16, 32)


# ----------------------------------------------------------------------------- device code
@triton.jit
def _blocked_kernel(
    seeds_ptr, data_ptr, weights_ptr, index_ptr,
    item_block_ptr, item_lo_ptr, item_hi_ptr,
    pos_ptr, logd_ptr, part_ptr, part_l_ptr, part_m_ptr,
    n_seeds, seed_block, n_features,
    stride_seed, stride_data, stride_pos, stride_part, flat_slack,
    KERNEL: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    EXACT: tl.constexpr, EXACT_FEATURES: tl.constexpr,
    BLOCK_D: tl.constexpr, D_TILES: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
):
    item = tl.program_id(0)
    block = tl.load(item_block_ptr + item)
    lo = tl.load(item_lo_ptr + item)
    hi = tl.load(item_hi_ptr + item)
    # Seeds of this program: a BLOCK_S tile (grid axis 2) of seed block `block`.
    local = tl.program_id(2) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_s = block * seed_block + local
    valid_s = (local < seed_block) & (offs_s < n_seeds)
    offs_d = tl.arange(0, BLOCK_D)
    cols_out = tl.program_id(1) * BLOCK_D + offs_d
    valid_out = cols_out < n_features

    if not EXACT:
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
    for c0 in range(lo, hi, BLOCK_N):
        slots = c0 + tl.arange(0, BLOCK_N)
        valid_n = slots < hi
        # Padding slots gather row 0 (always readable) and get weight 0.
        rows = tl.load(index_ptr + slots, mask=valid_n, other=0).to(tl.int64)
        if EXACT:
            d2 = tl.zeros((BLOCK_S, BLOCK_N), tl.float32)
            for j in tl.static_range(EXACT_FEATURES):
                q_j = tl.load(seeds_ptr + offs_s * stride_seed + j, mask=valid_s, other=0.0)
                x_j = tl.load(data_ptr + rows * stride_data + j, mask=valid_n, other=0.0)
                diff = q_j[:, None] - x_j[None, :]
                d2 += diff * diff
        elif D_TILES == 1:
            x = tl.load(
                data_ptr + rows[:, None] * stride_data + offs_d[None, :],
                mask=valid_n[:, None] & valid_out[None, :],
                other=0.0,
            )
            qx = tl.dot(q, tl.trans(x), input_precision="ieee")
            d2 = tl.maximum(q_norm[:, None] + tl.sum(x * x, 1)[None, :] - 2.0 * qx, 0.0)
        else:
            qx, x_norm = tiled_dot_and_norms(
                seeds_ptr, offs_s, stride_seed, valid_s, data_ptr, rows, stride_data, valid_n, n_features,
                BLOCK_S, BLOCK_N, BLOCK_D, D_TILES,
            )
            x = tl.load(
                data_ptr + rows[:, None] * stride_data + cols_out[None, :],
                mask=valid_n[:, None] & valid_out[None, :],
                other=0.0,
            )
            d2 = tl.maximum(q_norm[:, None] + x_norm[None, :] - 2.0 * qx, 0.0)
        w_n = rows  # placeholder when unweighted (never read)
        if HAS_WEIGHTS:
            w_n = tl.load(weights_ptr + rows, mask=valid_n, other=0.0)
        p, alpha, m_new = _kernel_weights(d2, w_n, valid_n, m_i, flat_slack, KERNEL, HAS_WEIGHTS)
        if KERNEL == "gaussian":
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            m_i = m_new
        else:
            l_i += tl.sum(p, 1)
        if EXACT:
            for j in tl.static_range(EXACT_FEATURES):
                x_j = tl.load(data_ptr + rows * stride_data + j, mask=valid_n, other=0.0)
                acc += tl.where(offs_d[None, :] == j, tl.sum(p * x_j[None, :], 1)[:, None], 0.0)
        else:
            acc += tl.dot(p, x, input_precision="ieee")

    if SPLIT:
        # Partial sums of this work item, row `item * seed_block + local`;
        # the launcher combines the items of each block.
        part_rows = item.to(tl.int64) * seed_block + local
        valid_rows = local < seed_block
        tl.store(part_ptr + part_rows[:, None] * stride_part + cols_out[None, :], acc,
                 mask=valid_rows[:, None] & valid_out[None, :])
        first_column_tile = (local * 0 + tl.program_id(1)) == 0
        tl.store(part_l_ptr + part_rows, l_i, mask=valid_rows & first_column_tile)
        tl.store(part_m_ptr + part_rows, m_i, mask=valid_rows & first_column_tile)
    else:
        q_out = tl.load(
            seeds_ptr + offs_s[:, None] * stride_seed + cols_out[None, :],
            mask=valid_s[:, None] & valid_out[None, :],
            other=0.0,
        )
        _store_result(acc, l_i, m_i, q_out, offs_s, valid_s, cols_out, valid_out, pos_ptr,
                      stride_pos, logd_ptr, KERNEL)


# ------------------------------------------------------------------------------ autotuning
def _prune_blocked(configs, named_args, **kwargs):
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = [
        c for c in configs
        if (2 * c.kwargs["BLOCK_S"] * block_d + c.kwargs["BLOCK_N"] * block_d
            + 2 * c.kwargs["BLOCK_S"] * c.kwargs["BLOCK_N"]) / (32 * c.num_warps) <= 128
    ]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_S"] * c.kwargs["BLOCK_N"])]


_BLOCKED_CONFIGS = [
    triton.Config({"BLOCK_S": s, "BLOCK_N": n}, num_warps=w, num_stages=2)
    for s in (16, 32, 64)
    for n in (32, 64, 128)
    for w in (4, 8)
]
# Not keyed on the number of seeds or candidates: both change every step.
_blocked_tuned = triton.autotune(
    configs=_BLOCKED_CONFIGS,
    key=["n_features", "KERNEL", "HAS_WEIGHTS", "SPLIT"],
    prune_configs_by={"early_config_prune": _prune_blocked},
)(_blocked_kernel)


# -------------------------------------------------------------------------------- launchers
def _work_items(block_starts: torch.Tensor, split: int | None, device):
    """(item_block, item_lo, item_hi, split?) with lists longer than ``split`` cut."""
    starts = block_starts.to(device)
    n_blocks = starts.shape[0] - 1
    counts = (block_starts[1:] - block_starts[:-1]).cpu()
    if split is None:
        # Cut lists much longer than the typical one, so a skewed block is
        # spread over as many programs as its length warrants.
        mean = float(counts.sum()) / max(1, n_blocks)
        split = max(1024, 4 * int(math.ceil(mean)))
    if n_blocks == 0 or int(counts.max()) <= split:
        return torch.arange(n_blocks, device=device), starts[:-1], starts[1:], False
    per_block = torch.clamp(-(-counts // split), min=1)
    item_block = torch.repeat_interleave(torch.arange(n_blocks), per_block)
    first = torch.cumsum(per_block, 0) - per_block
    rank = torch.arange(item_block.shape[0]) - torch.repeat_interleave(first, per_block)
    starts_cpu = block_starts.cpu()
    item_lo = starts_cpu[item_block] + rank * split
    item_hi = torch.minimum(item_lo + split, starts_cpu[item_block + 1])
    return item_block.to(device), item_lo.to(device), item_hi.to(device), True


def blocked_step(
    seeds: torch.Tensor,
    data: torch.Tensor,
    weights: torch.Tensor | None,
    block_starts: torch.Tensor,
    block_indices: torch.Tensor,
    *,
    kernel: str = "flat",
    seed_block: int,
    split: int | None = None,
    block_seeds: int | None = None,
    block_points: int | None = None,
    validate: bool = True,
):
    """Fused block-sparse step (see the module docstring); contract of ``_sparse.blocked_step``."""
    from meanshift_gpu._reference import StepResult
    from meanshift_gpu._neighbors.blocked import _Accumulator, check_blocks

    seeds32, data32, weights32, out_dtype = step_inputs(seeds, data, weights, kernel)
    check_device(seeds, block_starts, block_indices)
    n_seeds, n_features = seeds32.shape
    if validate:
        check_blocks(n_seeds, data32.shape[0], block_starts, block_indices, seed_block)
    elif seed_block < 1:
        raise ValueError(f"seed_block must be >= 1, got {seed_block}")
    device = seeds.device
    positions = torch.empty((n_seeds, n_features), dtype=torch.float32, device=device)
    log_density = torch.empty(n_seeds, dtype=torch.float32, device=device)
    if n_seeds == 0:
        return StepResult(positions.to(out_dtype), log_density.to(out_dtype))
    if split is not None:
        split = int(split)
        if split < 1:
            raise ValueError(f"split must be >= 1, got {split}")

    item_block, item_lo, item_hi, is_split = _work_items(block_starts, split, device)
    exact = n_features <= EXACT_MAX_FEATURES
    if exact:
        block_d, d_tiles = triton.next_power_of_2(n_features), 1
    else:
        block_d, d_tiles = feature_tile(n_features)
    n_items = item_block.shape[0]
    if is_split:
        part = torch.empty((n_items * seed_block, block_d * d_tiles), dtype=torch.float32, device=device)
        part_l = torch.empty(n_items * seed_block, dtype=torch.float32, device=device)
        part_m = torch.empty(n_items * seed_block, dtype=torch.float32, device=device)
    else:
        part = part_l = part_m = positions  # never written
    index = block_indices.contiguous()
    if index.numel() == 0:
        index = torch.zeros(1, dtype=torch.int64, device=device)  # a readable dummy
    args = (
        seeds32, data32, data32 if weights32 is None else weights32, index,
        item_block, item_lo, item_hi, positions, log_density, part, part_l, part_m,
        n_seeds, seed_block, n_features,
        seeds32.stride(0), data32.stride(0), positions.stride(0), part.stride(0), flat_slack(),
    )
    meta = dict(
        KERNEL=kernel, HAS_WEIGHTS=weights32 is not None,
        EXACT=exact, EXACT_FEATURES=n_features if exact else 0,
        BLOCK_D=block_d, D_TILES=d_tiles, SPLIT=is_split,
    )
    tiles = check_tiles(("block_seeds", block_seeds), ("block_points", block_points))
    if tiles is None and INTERPRETED:
        tiles = _INTERPRETER_BLOCKED
    if tiles is None and autotune_requested():
        grid = lambda m: (n_items, d_tiles, triton.cdiv(seed_block, m["BLOCK_S"]))  # noqa: E731
        _blocked_tuned[grid](*args, **meta)
    else:
        tile = Tile(*tiles) if tiles is not None else pick_tile("blocked", n_features, kernel, device)
        # A program never needs more rows than a block has seeds (tl.dot needs 16).
        rows = min(tile.rows, triton.next_power_of_2(seed_block))
        rows = rows if exact else max(16, rows)
        grid = (n_items, d_tiles, triton.cdiv(seed_block, rows))
        _blocked_kernel[grid](*args, **meta, BLOCK_S=rows, BLOCK_N=tile.cols,
                              num_warps=tile.num_warps, num_stages=tile.num_stages)
    if not is_split:
        return StepResult(positions.to(out_dtype), log_density.to(out_dtype))

    # Combine the work items of each block (float32, like the kernel).
    local = torch.arange(seed_block, device=device)
    rows = (item_block[:, None] * seed_block + local).reshape(-1)
    n_blocks = block_starts.shape[0] - 1
    accumulator = _Accumulator(n_blocks * seed_block, n_features, torch.float32, device,
                               kernel == "gaussian")
    partial = torch.cat([part[:, :n_features], part_l[:, None]], 1)
    accumulator.add(rows, partial, part_m * LN2.value if kernel == "gaussian" else None)
    result = accumulator.finish(seeds32)
    return StepResult(result.positions.to(out_dtype), result.log_density.to(out_dtype))

