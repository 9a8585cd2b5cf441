"""Backend registry: which implementation runs the hot operations.

A backend provides three operations on scaled coordinates (bandwidth 1):

- ``step(seeds, data, weights, kernel, block)``: one mean-shift step
  (see :func:`meanshift_gpu._reference.mean_shift_step`);
- ``nearest(points, centers, block)``: nearest-center index and squared distance;
- ``kth_distance(queries, data, k, block)``: k-th neighbour distance.

Selection (as in Liger-Kernel, made in :func:`meanshift_gpu._decisions.decide_backend`):
an explicit ``backend=`` name must be available for the device or a clear error
is raised; ``"auto"`` walks the priority list (``auto_priority``) and takes the
first backend that can run on the device, which always ends at the pure-torch
engine.  New backends (Triton, pruned variants)
register here without touching the estimator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .. import _reference
from .._decisions import triton_blocked_takes, triton_step_takes


@dataclass(frozen=True)
class Blocks:
    """Tile sizes for one call: seeds (or queries) per block, data points per block."""

    seeds: int
    points: int


@dataclass(frozen=True)
class Backend:
    """One implementation of the hot operations.

    ``unavailable(device)`` returns ``None`` when the backend can run on the
    device, else a sentence that says why not and how to fix it.
    """

    name: str
    step: Callable
    nearest: Callable
    kth_distance: Callable
    unavailable: Callable[[torch.device], str | None]
    auto_priority: int  # lower runs first under backend="auto"
    # Stricter check for backend="auto" (e.g. never pick an interpreter); None = same.
    auto_unavailable: Callable[[torch.device], str | None] | None = None
    # Block-sparse step for neighbour pruning, with the contract of
    # meanshift_gpu._neighbors.blocked.blocked_step; None = the torch version.
    blocked_step: Callable | None = None


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add or replace a backend in the registry."""
    _REGISTRY[backend.name] = backend


def available_backends() -> list[str]:
    """Names of all registered backends (available or not on this machine)."""
    return sorted(_REGISTRY)


def resolve_backend(name: str, device: torch.device) -> Backend:
    """The backend for ``name`` (or ``"auto"``) on ``device``; the choice is :func:`meanshift_gpu._decisions.decide_backend`'s."""
    from .._decisions import decide_backend

    return decide_backend(name, device).choice


# --------------------------------------------------------------------------- torch
def _torch_step(seeds, data, weights, kernel, blocks: Blocks):
    return _reference.mean_shift_step(
        seeds, data, weights, kernel=kernel, seed_block=blocks.seeds, point_block=blocks.points
    )


def _torch_nearest(points, centers, blocks: Blocks):
    return _reference.nearest_centers(points, centers, point_block=blocks.seeds * blocks.points // 64)


def _torch_kth(queries, data, k, blocks: Blocks):
    return _reference.kth_neighbor_distance(queries, data, k, query_block=blocks.seeds)


register_backend(
    Backend(
        name="torch",
        step=_torch_step,
        nearest=_torch_nearest,
        kth_distance=_torch_kth,
        unavailable=lambda device: None,
        auto_priority=100,
    )
)


# -------------------------------------------------------------------------- triton
def _triton_unavailable(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install 'meanshift-gpu[triton]')"
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type == "cuda" and not interpreted:
        return None
    if device.type == "cpu" and interpreted:
        return None
    if device.type == "cpu":
        return (
            "Triton kernels need a CUDA device; on the CPU they run only under the "
            "interpreter (set TRITON_INTERPRET=1 before importing triton), or use backend='torch'"
        )
    return f"Triton kernels do not support device type {device.type!r}"


def _triton_module():
    try:
        from .. import kernels
    except ImportError as exc:  # pragma: no cover - packaging error
        raise RuntimeError("meanshift_gpu.kernels is missing from this installation") from exc
    if not hasattr(kernels, "mean_shift_step"):
        raise RuntimeError("this build of meanshift_gpu ships no Triton kernels yet")
    return kernels


# Which data the Triton kernels take is decided in meanshift_gpu._decisions
# (triton_step_takes, triton_blocked_takes); the rest run in torch.  The fused
# ascent kernel (meanshift_gpu.kernels._ascent) runs float64 itself.
def _triton_step(seeds, data, weights, kernel, blocks: Blocks):
    if not triton_step_takes(seeds.dtype):
        return _torch_step(seeds, data, weights, kernel, blocks)
    return _triton_module().mean_shift_step(seeds, data, weights, kernel=kernel)


def _triton_nearest(points, centers, blocks: Blocks):
    if not triton_step_takes(points.dtype):
        return _torch_nearest(points, centers, blocks)
    return _triton_module().nearest_centers(points, centers)


def _triton_kth(queries, data, k, blocks: Blocks):
    if not triton_step_takes(queries.dtype):
        return _torch_kth(queries, data, k, blocks)
    return _triton_module().kth_neighbor_distance(queries, data, k)


def _triton_blocked(seeds, data, weights, block_starts, block_indices, *, kernel, seed_block, truncate=None):
    if not triton_blocked_takes(seeds.dtype, kernel, truncate):
        from .._neighbors.blocked import blocked_step

        return blocked_step(
            seeds, data, weights, block_starts, block_indices,
            kernel=kernel, seed_block=seed_block, truncate=truncate,
        )
    return _triton_module().blocked_step(
        seeds, data, weights, block_starts, block_indices, kernel=kernel, seed_block=seed_block
    )


def _triton_auto_ok(device: torch.device) -> str | None:
    # "auto" takes Triton only on a real GPU: the interpreter is for testing.
    if device.type != "cuda":
        return "auto uses Triton on CUDA devices only"
    reason = _triton_unavailable(device)
    if reason is None:
        try:
            _triton_module()
        except RuntimeError as exc:
            return str(exc)
    return reason


register_backend(
    Backend(
        name="triton",
        step=_triton_step,
        nearest=_triton_nearest,
        kth_distance=_triton_kth,
        unavailable=_triton_unavailable,
        auto_priority=10,
        auto_unavailable=_triton_auto_ok,
        blocked_step=_triton_blocked,
    )
)
