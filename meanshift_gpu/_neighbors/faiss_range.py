"""``neighbors="faiss"``: faiss range search (radius = the kernel's reach), an optional dependency.

An exact flat index, or an IVF index (``nlist`` cells, ``nprobe`` probed)
for large data; the search runs on float32 copies, with a slightly larger
radius, and the step then tests the exact distances.
"""

from __future__ import annotations

import numpy as np
import torch

from .._decisions import decide_faiss_index
from .candidates import CandidateListNeighbors

# The float32 search radius is this much wider than the reach; the step's exact test trims it.
_FLOAT32_RADIUS_SLACK = 1e-5


def faiss_unavailable() -> str | None:
    """None when faiss imports, else how to install it."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "faiss is not installed: pip install 'meanshift-gpu[faiss]' (or faiss-gpu)"
    return None


class FaissIndex:
    """faiss range search (exact flat or IVF) on float32 copies of the data."""

    def __init__(self, data: torch.Tensor, reach: float, options: dict):
        import faiss

        n, d = data.shape
        self.radius2 = reach * reach * (1 + _FLOAT32_RADIUS_SLACK)
        kind, nlist, nprobe = decide_faiss_index(options, n).choice
        x = np.ascontiguousarray(data.detach().cpu().numpy(), dtype=np.float32)
        if kind == "flat":
            index = faiss.IndexFlatL2(d)
        else:
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist)
            sample = x if n <= 256 * nlist else x[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
            index.train(sample)
            index.nprobe = nprobe
        index.add(x)
        self.index = index
        self.kind = kind
        self.device = data.device

    def candidates(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = np.ascontiguousarray(seeds.detach().cpu().numpy(), dtype=np.float32)
        lims, _, ids = self.index.range_search(q, self.radius2)
        seed_ptr = torch.from_numpy(lims.astype(np.int64)).to(self.device)
        return seed_ptr, torch.from_numpy(ids.astype(np.int64)).to(self.device)


class FaissNeighbors(CandidateListNeighbors):
    """Candidate lists from :class:`FaissIndex`; the step is the backend's block-sparse one."""

    name = "faiss"

    def __init__(self, data, weights, *, reach, options, max_pairs, blocked_step=None):
        reason = faiss_unavailable()
        if reason is not None:
            raise RuntimeError(f"neighbors='faiss' cannot run: {reason}")
        index = FaissIndex(data, reach, options)
        super().__init__(data, weights, index, reach=reach, max_pairs=max_pairs, blocked_step=blocked_step)
        self.detail = f"faiss: candidate lists (faiss {index.kind} index)"
