"""``neighbors="dense"``: every seed reads every point, the backend's exact fused pass."""

from __future__ import annotations

from typing import Callable

import torch

from .base import NeighborMethod


class DenseNeighbors(NeighborMethod):
    """Every seed against every point, through ``dense_step(seeds, data, weights, kernel, blocks)``.

    Examples
    --------
    >>> import torch
    >>> from meanshift_gpu._engine.backends import Blocks, resolve_backend
    >>> from meanshift_gpu._neighbors.dense import DenseNeighbors
    >>> data = torch.tensor([[0.0], [0.5], [3.0]], dtype=torch.float64)
    >>> method = DenseNeighbors(data, None, resolve_backend("torch", data.device).step)
    >>> method.step(data[:1], "flat", Blocks(8, 256)).positions
    tensor([[0.2500]], dtype=torch.float64)
    """

    name = "dense"
    detail = "dense: every seed against every point"

    def __init__(self, data: torch.Tensor, weights: torch.Tensor | None, dense_step: Callable):
        self.data, self.weights, self._dense_step = data, weights, dense_step

    def step(self, seeds, kernel, blocks):
        return self._dense_step(seeds, self.data, self.weights, kernel, blocks)
