"""k-th-neighbour distance for ``estimate_bandwidth``: fused distance tiles + torch selection.

Why not a fully fused kernel: sklearn's rule takes ``k = quantile * N``
(30 % of the points by default), so each query would need a selection state
of ``k`` distances, far more than a program's registers or shared memory; a
streaming selection would have to spill that state to global memory and
re-read it per data tile, which is slower than selecting once from a row.

What is done instead, per block of queries:

1. ``_pairwise_kernel`` writes the block's squared distances to all data
   points in one pass (exact per-feature differences up to
   ``EXACT_MAX_FEATURES`` features, IEEE float32 ``tl.dot`` expansion above).
   The torch engine needs ``2 d + 1`` passes over the same matrix for
   ``d <= 3`` (one difference, square and add per feature) and an ``addmm``
   plus a norm pass above, so the fused tile is the cheaper producer.
2. ``torch.kthvalue`` selects the k-th smallest of every row.  On CUDA it is
   a radix select that reads each row a few times (no sort), i.e. O(N) per
   query whatever ``k`` is; ``torch.topk`` with k = 0.3 N would sort-merge
   far more, and a full sort is O(N log N).

The query block is sized so that the block's distance matrix takes at most
~512 MiB on the GPU, which keeps thousands of rows in flight for the
selection (one CUDA block per row) while leaving memory for the caller.
These choices are argued from the algorithms' costs; they have not been
timed on a GPU yet (see ``benchmarks/gpu_step.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import autotune_requested, pick_tile
from ._common import EXACT_MAX_FEATURES, INTERPRETED, as_rows, check_device, feature_tile, output_dtype

_GPU_BLOCK_ELEMENTS = 1 << 27  # 512 MiB of float32 distances per query block
_HOST_BLOCK_ELEMENTS = 1 << 20
_INTERPRETER_TILES = (32, 64)  # (queries, points) per tile


@triton.jit
def _pairwise_kernel(
    queries_ptr, data_ptr, out_ptr,
    n_queries, n_points, n_features, stride_query, stride_data, stride_out,
    EXACT: tl.constexpr, N_EXACT: tl.constexpr,
    BLOCK_D: tl.constexpr, D_TILES: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    valid_q = offs_q < n_queries
    valid_n = offs_n < n_points
    if EXACT:
        d2 = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
        for j in tl.static_range(N_EXACT):
            q_j = tl.load(queries_ptr + offs_q * stride_query + j, mask=valid_q, other=0.0)
            x_j = tl.load(data_ptr + offs_n * stride_data + j, mask=valid_n, other=0.0)
            diff = q_j[:, None] - x_j[None, :]
            d2 += diff * diff
    else:
        offs_d = tl.arange(0, BLOCK_D)
        qx = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
        q_norm = tl.zeros((BLOCK_Q,), tl.float32)
        x_norm = tl.zeros((BLOCK_N,), tl.float32)
        for t in range(D_TILES):
            cols = t * BLOCK_D + offs_d
            valid_cols = cols < n_features
            q_t = tl.load(
                queries_ptr + offs_q[:, None] * stride_query + cols[None, :],
                mask=valid_q[:, None] & valid_cols[None, :],
                other=0.0,
            )
            x_t = tl.load(
                data_ptr + offs_n[:, None] * stride_data + cols[None, :],
                mask=valid_n[:, None] & valid_cols[None, :],
                other=0.0,
            )
            qx += tl.dot(q_t, tl.trans(x_t), input_precision="ieee")
            q_norm += tl.sum(q_t * q_t, 1)
            x_norm += tl.sum(x_t * x_t, 1)
        d2 = tl.maximum(q_norm[:, None] + x_norm[None, :] - 2.0 * qx, 0.0)
    out_ptrs = out_ptr + offs_q[:, None].to(tl.int64) * stride_out + offs_n[None, :]
    tl.store(out_ptrs, d2, mask=valid_q[:, None] & valid_n[None, :])


_CONFIGS = [
    triton.Config({"BLOCK_Q": q, "BLOCK_N": n}, num_warps=w, num_stages=2)
    for q in (32, 64, 128)
    for n in (64, 128)
    for w in (4, 8)
]
_pairwise_tuned = triton.autotune(configs=_CONFIGS, key=["n_features", "EXACT"])(_pairwise_kernel)


def pairwise_squared_distances(
    queries: torch.Tensor, data: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared distances of float32 ``queries`` to float32 ``data``, shape (n_q, n_points)."""
    n_queries, n_features = queries.shape
    n_points = data.shape[0]
    if out is None:
        out = torch.empty((n_queries, n_points), dtype=torch.float32, device=queries.device)
    if n_queries == 0 or n_points == 0:
        return out
    exact = n_features <= EXACT_MAX_FEATURES
    block_d, d_tiles = feature_tile(n_features)
    args = (
        queries, data, out, n_queries, n_points, n_features,
        queries.stride(0), data.stride(0), out.stride(0),
    )
    meta = dict(EXACT=exact, N_EXACT=n_features if exact else 0, BLOCK_D=block_d, D_TILES=d_tiles)
    if INTERPRETED:
        block_q, block_n = _INTERPRETER_TILES
        grid = (triton.cdiv(n_queries, block_q), triton.cdiv(n_points, block_n))
        _pairwise_kernel[grid](*args, **meta, BLOCK_Q=block_q, BLOCK_N=block_n)
    elif autotune_requested():
        grid = lambda m: (  # noqa: E731
            triton.cdiv(n_queries, m["BLOCK_Q"]),
            triton.cdiv(n_points, m["BLOCK_N"]),
        )
        _pairwise_tuned[grid](*args, **meta)
    else:
        tile = pick_tile("pairwise", n_features, device=queries.device)
        grid = (triton.cdiv(n_queries, tile.rows), triton.cdiv(n_points, tile.cols))
        _pairwise_kernel[grid](*args, **meta, BLOCK_Q=tile.rows, BLOCK_N=tile.cols,
                               num_warps=tile.num_warps, num_stages=tile.num_stages)
    return out


def kth_neighbor_distance(
    queries: torch.Tensor, data: torch.Tensor, k: int, *, query_block: int | None = None
) -> torch.Tensor:
    """Distance from each query to its k-th nearest data point (1-based).

    Same contract as :func:`meanshift_gpu._reference.kth_neighbor_distance`
    (a query in ``data`` is its own first neighbour), computed in float32
    and cast back to the queries' dtype.
    """
    check_device(queries, data)
    out_dtype = output_dtype(queries)
    queries32 = as_rows(queries, "queries")
    data32 = as_rows(data, "data", queries32.shape[1])
    n_points = data32.shape[0]
    if not 1 <= k <= n_points:
        raise ValueError(f"k must be in [1, {n_points}], got {k}")
    if query_block is None:
        budget = _GPU_BLOCK_ELEMENTS if queries.device.type == "cuda" else _HOST_BLOCK_ELEMENTS
        query_block = max(1, budget // n_points)
    result = torch.empty(queries32.shape[0], dtype=torch.float32, device=queries.device)
    block = torch.empty((min(query_block, queries32.shape[0]), n_points), dtype=torch.float32,
                        device=queries.device)
    for q0 in range(0, queries32.shape[0], query_block):
        chunk = queries32[q0 : q0 + query_block]
        d2 = pairwise_squared_distances(chunk, data32, block[: chunk.shape[0]])
        result[q0 : q0 + chunk.shape[0]] = torch.kthvalue(d2, k, dim=1).values
    return result.sqrt_().to(out_dtype)
