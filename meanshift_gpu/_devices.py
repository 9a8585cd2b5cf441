"""The torch device a fit runs on, for callers that put their own tensors beside it."""

from __future__ import annotations

import torch

from ._validation import resolve_device as _resolve_device


def resolve_device(device="auto") -> torch.device:
    """The torch device that ``MeanShift(device=device)`` computes on.

    The same rule as the estimator's, so that a pipeline's own torch work
    (filters, features) can run where its mean shift runs.

    Parameters
    ----------
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`.

    Returns
    -------
    device : torch.device
        The resolved device.

    Raises
    ------
    ValueError
        For an unknown device, or a CUDA device that this machine does not have.

    Examples
    --------
    >>> from meanshift_gpu import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    """
    return _resolve_device(device)
