"""Input checks and conversions shared by the public functions.

Arrays (numpy, lists, pandas) go through scikit-learn's own validation, so the
error messages are the ones sklearn users know.  Torch tensors stay tensors (and
stay on their device); they get the same checks here.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.utils import check_array

_FLOAT_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def resolve_device(device, X=None) -> torch.device:
    """Turn ``device`` ("auto", "cpu", "cuda", "cuda:1", torch.device) into a torch.device.

    ``"auto"`` follows a CUDA tensor's device, else takes CUDA when available,
    else the CPU.
    """
    if isinstance(device, str) and device == "auto":
        if isinstance(X, torch.Tensor) and X.device.type != "cpu":
            return X.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be 'auto', a device string such as 'cpu' or 'cuda:0', or a "
            f"torch.device; got {type(device).__name__}"
        )
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but no CUDA GPU is available "
                "(torch.cuda.is_available() is False); use device='cpu' or 'auto'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    elif resolved.type in ("mps", "xpu"):
        backend = getattr(torch.backends, "mps", None) if resolved.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            raise ValueError(
                f"device={device!r} was requested but this torch build has no usable {resolved.type} "
                "device; use device='cpu' or 'auto'"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu' or 'cuda'")
    return resolved


def compute_dtype(dtype) -> torch.dtype:
    """Float dtype the engine computes in for input of ``dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float64):
            return dtype
        # Half floats widen exactly to float32; integers (and bool) need float64
        # to stay exact, as numpy integer input does.
        return torch.float32 if dtype.is_floating_point else torch.float64
    return _FLOAT_DTYPES.get(np.dtype(dtype), torch.float64)


def check_tensor(X: torch.Tensor, name: str = "X", n_features: int | None = None) -> torch.Tensor:
    """Validate a 2-D torch tensor of samples; return it as a float tensor.

    Gradients are not tracked through a fit (mean shift's modes are not a
    differentiable function of the data): the tensor is detached.
    """
    X = X.detach()
    if X.is_sparse or X.layout != torch.strided:
        raise TypeError(
            f"{name} is a sparse tensor, but dense data is required; use {name}.to_dense()"
        )
    if X.is_complex():
        raise TypeError(f"{name} is complex ({X.dtype}); mean shift needs real-valued data")
    if X.dtype == torch.bool:
        X = X.to(torch.float64)
    if X.ndim != 2:
        hint = " Reshape with X.reshape(-1, 1) for a single feature." if X.ndim == 1 else ""
        raise ValueError(
            f"Expected a 2-D {name} of shape (n_samples, n_features), got shape "
            f"{tuple(X.shape)}.{hint}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={tuple(X.shape)}) in {name}")
    if X.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={tuple(X.shape)}) in {name}")
    X = X.to(compute_dtype(X.dtype))
    if not bool(torch.isfinite(X).all()):
        raise ValueError(
            f"Input {name} contains NaN or infinity; remove or impute those values first"
        )
    if n_features is not None and X.shape[1] != n_features:
        if name == "X":
            raise ValueError(
                f"X has {X.shape[1]} features, but MeanShift is expecting "
                f"{n_features} features as input"
            )
        # Same wording as check_points, so seeds read the same for arrays and tensors.
        raise ValueError(
            f"{name} has {X.shape[1]} features, but X has {n_features}; they must match"
        )
    return X


def check_nested_sequence(X, name: str = "X") -> None:
    """Reject ragged or empty Python lists with a message that says what is wrong.

    numpy's own error for ragged lists ("setting an array element with a
    sequence ... inhomogeneous shape") and sklearn's for ``[]`` ("Expected 2D
    array, got 1D array") do not say how to fix the input.  Arrays, tensors
    and data frames pass through untouched.
    """
    if not isinstance(X, (list, tuple)):
        return
    if len(X) == 0:
        raise ValueError(
            f"{name} is empty; pass at least one sample as a 2-D array of shape "
            "(n_samples, n_features)"
        )
    try:
        np.asarray(X)
    except ValueError as exc:
        if "inhomogeneous" not in str(exc):
            raise
        lengths = sorted({len(row) if hasattr(row, "__len__") else 1 for row in X})
        raise ValueError(
            f"{name} is a ragged list: its rows have different lengths {lengths}; every "
            "sample must have the same number of features (pad or drop the short rows)"
        ) from exc


def as_tensor(X, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A validated array or tensor as a contiguous torch tensor on ``device``."""
    if isinstance(X, torch.Tensor):
        t = X
    else:
        arr = np.ascontiguousarray(X)
        # torch cannot wrap read-only memory (memmaps, broadcast views): copy it.
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    return t.to(device=device, dtype=dtype or compute_dtype(t.dtype)).contiguous()


def check_points(X, name: str, n_features: int | None = None):
    """Validate samples (array-like or tensor) without an estimator.

    Returns a float numpy array or a float torch tensor.
    """
    if isinstance(X, torch.Tensor):
        return check_tensor(X, name, n_features)
    check_nested_sequence(X, name)
    # Count samples ourselves: sklearn's "Found array with 0 sample(s)" does not name the input.
    X = check_array(X, dtype=[np.float64, np.float32], input_name=name, ensure_min_samples=0)
    if X.shape[0] == 0:
        raise ValueError(
            f"{name} is empty (shape={X.shape}); pass at least one sample as a 2-D array "
            "of shape (n_samples, n_features)"
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{name} has {X.shape[1]} features, but X has {n_features}; they must match"
        )
    return X


def check_sample_weight(sample_weight, n_samples: int, device, dtype) -> torch.Tensor | None:
    """Validate sample weights; ``None`` (or all ones) becomes ``None``."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number) and not isinstance(sample_weight, bool):
        sample_weight = np.full(n_samples, float(sample_weight))
    if isinstance(sample_weight, torch.Tensor):
        w = sample_weight.detach().to(device=device, dtype=dtype)
    else:
        arr = np.asarray(sample_weight)
        if arr.dtype == object or arr.dtype.kind in "OUSc":
            raise ValueError("sample_weight must be numeric")
        w = torch.as_tensor(np.asarray(arr, dtype=np.float64), device=device).to(dtype)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight.shape == {tuple(w.shape)}, expected ({n_samples},)"
        )
    check_weight_summary(
        finite=bool(torch.isfinite(w).all()), any_negative=bool((w < 0).any()), any_positive=bool((w > 0).any())
    )
    if bool((w == 1).all()):
        return None
    return w.contiguous()


def check_weight_summary(*, finite: bool, any_negative: bool, any_positive: bool) -> None:
    """The sample-weight errors, from summaries of the weights (also computed lazily, on Dask arrays)."""
    if not finite:
        raise ValueError("sample_weight contains NaN or infinity")
    if any_negative:
        raise ValueError("Negative values in data passed to sample_weight; weights must be >= 0")
    if not any_positive:
        raise ValueError("sample_weight is all zero; at least one point needs a positive weight")


def check_bandwidth_value(bandwidth, n_features: int) -> np.ndarray | float:
    """A user bandwidth as a positive float or a positive per-feature array."""
    if isinstance(bandwidth, bool):
        raise TypeError("bandwidth must be a positive float or an array, not a bool")
    if isinstance(bandwidth, numbers.Real):
        value = float(bandwidth)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
        return value
    if isinstance(bandwidth, torch.Tensor):
        bandwidth = bandwidth.detach().cpu().numpy()
    arr = np.asarray(bandwidth, dtype=np.float64) if not isinstance(bandwidth, str) else None
    if arr is None or arr.ndim > 1:
        raise ValueError(
            f"bandwidth must be a positive float or a 1-D array of one bandwidth per "
            f"feature, got {bandwidth!r}"
        )
    if arr.ndim == 0:
        return check_bandwidth_value(float(arr), n_features)
    if arr.shape[0] != n_features:
        raise ValueError(
            f"bandwidth has {arr.shape[0]} entries but X has {n_features} features; give "
            "one bandwidth per feature or a single float"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"every per-feature bandwidth must be positive and finite, got {arr}")
    return arr
