"""Tile sizes of the Triton kernels: a small committed table instead of autotuning in ``fit``.

Autotuning compiles and times every configuration the first time a kernel
meets a new key, which on a GPU cost most of a minute inside a user's first
``fit``.  The kernels instead take their tiles from :data:`TILE_TABLE`, keyed
by GPU architecture (compute capability), operation, feature count and
kernel profile, so a fit compiles exactly one specialisation per kernel it
runs, and Triton's disk cache makes later processes cheap.

How the rows were chosen, and their measurements, are in
``benchmarks/README.md`` (GPU tiles); ``python -m benchmarks.tile_sweep``
re-measures them on the GPU at hand.  Autotuning stays available: set
``MEANSHIFT_GPU_AUTOTUNE=1`` (or pass tiles explicitly to a kernel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """One launch configuration: rows per program, columns per inner step, warps, stages."""

    rows: int
    cols: int
    num_warps: int = 4
    num_stages: int = 2


# Feature-count buckets: the first bound that the count does not exceed.
FEATURE_BUCKETS = (2, 4, 8, 16, 64, 256, 1 << 30)

# (arch, op, feature bucket, kernel) -> Tile.  ``arch`` is "sm90" style or
# "default"; ``kernel`` is a profile name or "*".  Lookup falls back from the
# exact row to (arch, op, bucket, "*"), then the "default" arch, then the
# op's default row.
TILE_TABLE: dict[tuple[str, str, int, str], Tile] = {
    # Fused ascent (the fit's hot loop): the largest tiles that compile for
    # sm_90 (Triton 3.6) without spilling, at most 128 registers a thread
    # (benchmarks/README.md, "GPU tiles").
    ("default", "ascent", 2, "*"): Tile(64, 32, 4, 2),
    ("default", "ascent", 4, "*"): Tile(32, 32, 4, 2),
    ("default", "ascent", 8, "*"): Tile(32, 32, 4, 2),
    ("default", "step_exact", 4, "*"): Tile(64, 64, 4, 2),
    ("default", "step_dot", 16, "*"): Tile(64, 64, 4, 2),
    ("default", "step_dot", 64, "*"): Tile(64, 32, 4, 2),
    ("default", "step_dot", 256, "*"): Tile(32, 32, 4, 2),
    ("default", "step_dot", 1 << 30, "*"): Tile(32, 32, 4, 2),
    ("default", "blocked", 1 << 30, "*"): Tile(32, 64, 4, 2),
    ("default", "nearest", 1 << 30, "*"): Tile(64, 32, 4, 2),
    ("default", "pairwise", 1 << 30, "*"): Tile(64, 64, 4, 2),
}

_OP_DEFAULT = {
    "ascent": Tile(32, 32, 4, 2),
    "step_exact": Tile(64, 64, 4, 2),
    "step_dot": Tile(32, 32, 4, 2),
    "blocked": Tile(32, 64, 4, 2),
    "nearest": Tile(64, 32, 4, 2),
    "pairwise": Tile(64, 64, 4, 2),
}


def autotune_requested() -> bool:
    """Whether the user asked for autotuning (``MEANSHIFT_GPU_AUTOTUNE=1``)."""
    return os.environ.get("MEANSHIFT_GPU_AUTOTUNE", "0") == "1"


def device_arch(device: torch.device) -> str:
    """``"sm90"``-style name of a CUDA device's architecture; ``"cpu"`` otherwise."""
    if device.type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def feature_bucket(n_features: int) -> int:
    """The table's feature bucket of ``n_features``."""
    return next(b for b in FEATURE_BUCKETS if n_features <= b)


def pick_tile(op: str, n_features: int, kernel: str = "*", device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> Tile:
    """Tile for ``op`` from :data:`TILE_TABLE` (float64 halves the rows: twice the registers).

    Examples
    --------
    >>> pick_tile("ascent", 2, "flat")
    Tile(rows=64, cols=32, num_warps=4, num_stages=2)
    >>> pick_tile("ascent", 2, "flat", dtype=torch.float64)
    Tile(rows=32, cols=32, num_warps=4, num_stages=2)
    """
    if op not in _OP_DEFAULT:
        raise ValueError(f"unknown kernel operation {op!r}; expected one of {sorted(_OP_DEFAULT)}")
    arch = device_arch(device) if device is not None else "default"
    tile = None
    for bucket in FEATURE_BUCKETS:
        if bucket < n_features:
            continue
        for key in ((arch, op, bucket, kernel), (arch, op, bucket, "*"),
                    ("default", op, bucket, kernel), ("default", op, bucket, "*")):
            if key in TILE_TABLE:
                tile = TILE_TABLE[key]
                break
        if tile is not None:
            break
    tile = tile or _OP_DEFAULT[op]
    if dtype == torch.float64 and tile.rows > 16:
        tile = Tile(tile.rows // 2, tile.cols, tile.num_warps, tile.num_stages)
    return tile
