"""The interface every neighbour method implements.

A neighbour method is built once from the scaled data (bandwidth 1) and then
answers one mean-shift step for any set of seeds, reading only the points
that can be in each seed's window.  One file per method: ``dense.py``,
``grid.py``, ``rowsum.py`` (the grid's flat-kernel step in 1-3 D),
``lsh.py``, ``faiss_range.py``; :func:`meanshift_gpu._neighbors.build_neighbor_method`
picks the class.
"""

from __future__ import annotations

import torch

from .._engine.backends import Blocks
from .._reference import StepResult


class NeighborMethod:
    """One neighbour method bound to one data set (scaled coordinates).

    Attributes
    ----------
    name : str
        The method's name as ``neighbors=`` takes it ("dense", "grid", "lsh", "faiss").
    detail : str
        What the step runs, in words (``fit_info_["step"]``).
    threaded : bool
        True when the step spreads its own work over the CPU threads (the
        compiled row sums); the engine then does not split it.
    """

    name = ""
    detail = ""
    threaded = False

    def step(self, seeds: torch.Tensor, kernel: str, blocks: Blocks) -> StepResult:
        """One mean-shift step of ``seeds`` (scaled) over the bound data."""
        raise NotImplementedError

    def candidates(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR ``(seed_ptr, point_index)`` of the points each seed reads (candidate-list methods only)."""
        raise NotImplementedError(f"neighbors={self.name!r} reads no candidate lists")

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.detail}>"
