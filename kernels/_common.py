"""Helpers shared by the Triton kernels: launch checks, input preparation, tile shapes.

This module imports Triton at import time; :mod:`meanshift_gpu.kernels`
imports it lazily, on the first kernel call, so that ``import meanshift_gpu``
works without Triton.

Triton decides between compiled and interpreted kernels when a function is
decorated with ``triton.jit``, from ``TRITON_INTERPRET``: its own
``triton.language`` helpers when Triton is imported, ours when this package's
kernel modules are.  Both must agree, so the variable has to be set before
Triton is first imported; :func:`triton_mode_error` explains the problem
when it was not.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from meanshift_gpu._reference import KERNELS

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_interprets() -> bool:
    """Whether Triton's own library was built for the interpreter (fixed at its import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def triton_mode_error() -> str | None:
    """Why kernels cannot run in the current process, or None when they can."""
    wanted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    built = triton_interprets()
    if wanted == built == INTERPRETED:
        return None
    state = "interpreted" if built else "compiled"
    return (
        f"Triton was imported in {state} mode but TRITON_INTERPRET is now "
        f"{os.environ.get('TRITON_INTERPRET', 'unset')!r}; set TRITON_INTERPRET before anything "
        "imports triton (e.g. at the very top of the script or test module) and restart"
    )


def kernel_device() -> tuple[torch.device | None, str | None]:
    """Where the kernels run in this process, or ``(None, why not)``.

    The CPU under Triton's interpreter, CUDA when compiled; used by the
    kernel tests to pick their device or skip with the reason.
    """
    problem = triton_mode_error()
    if problem is not None:
        return None, f"Triton kernels cannot run in this session: {problem}"
    if INTERPRETED:
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    return None, "TRITON_INTERPRET=0 and no CUDA device: the kernels cannot run"

# Up to this many features, squared distances are summed from per-feature
# differences: exact to rounding (no |q|^2 - 2 q.x + |x|^2 cancellation), so
# sklearn's inclusive ``distance <= bandwidth`` window is kept on integer-like
# data, and cheaper than a dot product padded to the 16 columns that
# ``tl.dot`` needs.  (The torch reference switches at 3 features; at 4 the
# kernels are the more exact of the two.)
EXACT_MAX_FEATURES = 4

# Feature axes up to this width stay in registers whole (one feature tile);
# wider ones are cut into tiles of ``FEATURE_TILE`` columns.
RESIDENT_MAX_FEATURES = 256
FEATURE_TILE = 128

# ``tl.dot`` needs every dimension >= 16 on the GPU.
MIN_DOT_DIM = 16

# Globals read inside kernels must be tl.constexpr.
LN2 = tl.constexpr(math.log(2.0))
NEG_HALF_LOG2E = tl.constexpr(-0.5 * math.log2(math.e))  # exp(-d2 / 2) = exp2(d2 * this)


def check_kernel(kernel: str) -> None:
    """Raise ``ValueError`` unless ``kernel`` is a profile the kernels implement."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")


def check_device(*tensors: torch.Tensor) -> None:
    """Raise a clear error when Triton cannot run on the tensors' device."""
    device = tensors[0].device
    for tensor in tensors[1:]:
        if tensor.device != device:
            raise ValueError(
                f"all inputs must be on the same device, got {device} and {tensor.device}; "
                "move them with .to(device)"
            )
    # (The interpreter also accepts CUDA tensors: it copies them through the host.)
    if device.type == "cuda" or (device.type == "cpu" and INTERPRETED):
        return
    if device.type == "cpu":
        raise RuntimeError(
            "Triton kernels need CUDA tensors; CPU tensors run only under the interpreter "
            "(set TRITON_INTERPRET=1 before triton is first imported), or use the torch backend"
        )
    raise RuntimeError(f"Triton kernels do not support device type {device.type!r}")


def as_rows(tensor: torch.Tensor, name: str, n_features: int | None = None) -> torch.Tensor:
    """A float32 2-D tensor whose rows are contiguous (row stride may be larger)."""
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, n_features), got shape {tuple(tensor.shape)}")
    if n_features is not None and tensor.shape[1] != n_features:
        raise ValueError(
            f"{name} has {tensor.shape[1]} features but the data have {n_features}; "
            "pass points with the same number of columns"
        )
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    # Kernels index rows by stride and columns by 1, so views of wider
    # buffers (a column slice) need no copy; anything else is made contiguous.
    strided_columns = tensor.shape[1] > 1 and tensor.stride(1) != 1
    if strided_columns or tensor.stride(0) < tensor.shape[1]:
        tensor = tensor.contiguous()
    return tensor


def output_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a kernel's float32 results are cast back to: the input's, if floating."""
    return tensor.dtype if tensor.is_floating_point() else torch.float32


class StepInputs(NamedTuple):
    """Checked inputs of a mean-shift step kernel, as the kernels read them."""

    seeds: torch.Tensor
    """float32 (m, d), rows contiguous."""
    data: torch.Tensor
    """float32 (n, d), rows contiguous."""
    weights: torch.Tensor | None
    """float32 (n,) contiguous; ``log2`` of the sample weights for the Gaussian; None: ones."""
    out_dtype: torch.dtype
    """dtype of the results (the seeds')."""


def step_inputs(
    seeds: torch.Tensor, data: torch.Tensor, weights: torch.Tensor | None, kernel: str
) -> StepInputs:
    """Check the inputs of a step kernel and convert them to what the kernel reads.

    Parameters
    ----------
    seeds : Tensor of shape (m, d)
        Seed positions, any floating dtype.
    data : Tensor of shape (n, d)
        Data points, on the seeds' device.
    weights : Tensor of shape (n,) or None
        Non-negative sample weights (not checked); None means ones.
    kernel : str
        Kernel profile, one of :data:`meanshift_gpu._reference.KERNELS`.

    Returns
    -------
    StepInputs
        float32 views (copies where needed) and the dtype of the results.
    """
    check_kernel(kernel)
    check_device(seeds, data, *(() if weights is None else (weights,)))
    seeds32 = as_rows(seeds, "seeds")
    data32 = as_rows(data, "data", seeds32.shape[1])
    if seeds32.shape[1] == 0:
        raise ValueError("seeds and data need at least one feature")
    weights32 = None
    if weights is not None:
        if weights.shape != (data32.shape[0],):
            raise ValueError(
                f"weights must have shape ({data32.shape[0]},) to match data, got {tuple(weights.shape)}"
            )
        weights32 = weights.to(torch.float32).contiguous()
        if kernel == "gaussian":
            # Gaussian weights enter as log2 w added to the base-2 logits.
            weights32 = torch.log2(weights32)
    return StepInputs(seeds32, data32, weights32, output_dtype(seeds))


def check_tiles(rows: tuple[str, int | None], cols: tuple[str, int | None]) -> tuple[int, int] | None:
    """Explicit tile sizes ``(rows, cols)`` given as ``(name, value)`` pairs, checked; None if neither is.

    Both must be given or neither (None: the caller takes the tile table's),
    and each must be a power of two >= ``MIN_DOT_DIM`` (``tl.dot``'s minimum).

    Examples
    --------
    >>> check_tiles(("block_seeds", 32), ("block_points", 64))
    (32, 64)
    >>> check_tiles(("block_seeds", None), ("block_points", None)) is None
    True
    """
    (rows_name, rows_value), (cols_name, cols_value) = rows, cols
    if rows_value is None and cols_value is None:
        return None
    if rows_value is None or cols_value is None:
        raise ValueError(f"give both {rows_name} and {cols_name}, or neither (from the tile table)")
    for name, value in (rows, cols):
        if value < MIN_DOT_DIM or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= {MIN_DOT_DIM}, got {value}")
    return int(rows_value), int(cols_value)


def feature_tile(n_features: int) -> tuple[int, int]:
    """(columns per feature tile, number of feature tiles) for the dot-product kernels."""
    padded = max(MIN_DOT_DIM, triton.next_power_of_2(n_features))
    if padded <= RESIDENT_MAX_FEATURES:
        return padded, 1
    return FEATURE_TILE, triton.cdiv(n_features, FEATURE_TILE)


@triton.jit
def tiled_row_norms(
    ptr, rows, stride, valid_rows, n_features,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, D_TILES: tl.constexpr,
):
    """``|row|^2`` of a tile of rows, summed over ``D_TILES`` feature tiles."""
    offs_d = tl.arange(0, BLOCK_D)
    norms = tl.zeros((BLOCK_R,), tl.float32)
    for t in range(D_TILES):
        cols = t * BLOCK_D + offs_d
        r_t = tl.load(
            ptr + rows[:, None] * stride + cols[None, :],
            mask=valid_rows[:, None] & (cols < n_features)[None, :],
            other=0.0,
        )
        norms += tl.sum(r_t * r_t, 1)
    return norms


@triton.jit
def tiled_dot_and_norms(
    q_ptr, q_rows, q_stride, valid_q, x_ptr, x_rows, x_stride, valid_x, n_features,
    BLOCK_Q: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_D: tl.constexpr, D_TILES: tl.constexpr,
):
    """``q @ x.T`` (IEEE float32 ``tl.dot``) and ``|x|^2`` over ``D_TILES`` feature tiles.

    The rows of ``x`` are ``x_rows`` (contiguous offsets, or gathered
    candidate indices), so the dense, block-sparse and nearest-center kernels
    share this loop.
    """
    offs_d = tl.arange(0, BLOCK_D)
    qx = tl.zeros((BLOCK_Q, BLOCK_X), tl.float32)
    x_norm = tl.zeros((BLOCK_X,), tl.float32)
    for t in range(D_TILES):
        cols = t * BLOCK_D + offs_d
        valid_cols = cols < n_features
        q_t = tl.load(
            q_ptr + q_rows[:, None] * q_stride + cols[None, :],
            mask=valid_q[:, None] & valid_cols[None, :],
            other=0.0,
        )
        x_t = tl.load(
            x_ptr + x_rows[:, None] * x_stride + cols[None, :],
            mask=valid_x[:, None] & valid_cols[None, :],
            other=0.0,
        )
        qx += tl.dot(q_t, tl.trans(x_t), input_precision="ieee")
        x_norm += tl.sum(x_t * x_t, 1)
    return qx, x_norm


def flat_slack() -> float:
    """How far beyond 1 the flat window's edge lies (:func:`meanshift_gpu._reference.flat_edge` - 1).

    The kernels compare ``d2 - 1 <= slack`` rather than ``d2 <= edge``:
    Triton passes a Python float as float32, which would round ``1 + 1e-14``
    to 1, while the slack itself survives, and ``d2 - 1`` is exact near 1.
    """
    from meanshift_gpu._reference import flat_edge

    return flat_edge() - 1.0
