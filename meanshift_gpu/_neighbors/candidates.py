"""The step shared by the candidate-list methods (LSH, faiss): chunks of seeds, each over its own list."""

from __future__ import annotations

from typing import Callable

import torch

from .._reference import StepResult
from .base import NeighborMethod
from .blocked import blocked_step as torch_blocked_step


def unique_pairs(owner: torch.Tensor, point: torch.Tensor, n_seeds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(seed_ptr, point_index)`` of the distinct ``(owner, point)`` pairs."""
    if owner.numel():
        n_points = int(point.max()) + 1
        pair = torch.unique(owner * n_points + point)
        owner, point = pair // n_points, pair % n_points
    counts = torch.bincount(owner, minlength=n_seeds)
    seed_ptr = torch.zeros(n_seeds + 1, dtype=torch.long, device=owner.device)
    seed_ptr[1:] = torch.cumsum(counts, 0)
    return seed_ptr, point


class CandidateListNeighbors(NeighborMethod):
    """Base of the methods that list candidate points per seed (``index.candidates``).

    A step cuts the seeds into chunks of about ``max_pairs`` candidate pairs
    (from the index's cheap per-seed upper bound ``index.count`` when it has
    one, else from the candidates per seed seen so far) and runs the
    block-sparse step on each seed's list (blocks of one seed).
    """

    def __init__(self, data, weights, index, *, reach: float, max_pairs: Callable[[object], int],
                 blocked_step: Callable | None = None):
        self.data, self.weights, self.index, self.reach = data, weights, index, reach
        self._max_pairs = max_pairs
        self._blocked_step = blocked_step or torch_blocked_step

    def candidates(self, seeds):
        return self.index.candidates(seeds)

    def step(self, seeds, kernel, blocks):
        max_pairs = self._max_pairs(blocks)
        index = self.index
        n_seeds = seeds.shape[0]
        bounds = None
        if hasattr(index, "count") and n_seeds:
            cumulative = torch.cumsum(index.count(seeds), 0)
            # Chunk c ends at the last seed whose cumulative count fits c * max_pairs.
            ends = torch.arange(1, int(cumulative[-1]) // max_pairs + 2, device=seeds.device) * max_pairs
            bounds = torch.searchsorted(cumulative, ends, right=True).tolist()
        per_seed = 64.0
        positions, log_density = [], []
        s0 = 0
        while s0 < n_seeds:
            if bounds is not None:
                s1 = next((b for b in bounds if b > s0), n_seeds)
                s1 = max(s0 + 1, min(s1, n_seeds))
            else:
                s1 = min(n_seeds, s0 + max(1, int(max_pairs // per_seed)))
            part = seeds[s0:s1]
            seed_ptr, point_index = index.candidates(part)
            result = self._blocked_step(
                part, self.data, self.weights, seed_ptr - seed_ptr[0], point_index, kernel=kernel, seed_block=1,
                truncate=self.reach if kernel == "gaussian" else None,
            )
            positions.append(result.positions)
            log_density.append(result.log_density)
            per_seed = max(1.0, point_index.numel() / part.shape[0])
            s0 = s1
        if not positions:
            return StepResult(seeds.clone(), seeds.new_empty(0))
        return StepResult(torch.cat(positions), torch.cat(log_density))
