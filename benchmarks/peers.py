"""The methods the suite times: the peers and this library's configurations.

Every method is a :class:`Method` whose ``fit(data, bandwidth)`` clusters one
case and returns the labels and the number of clusters.  Peers that are not
installed, and library configurations this build does not have, are still
listed: ``unavailable(device)`` says why, and the suite reports that sentence
instead of a time.

Peers, each written the obvious way for its tool:

- ``sklearn exact``: :class:`sklearn.cluster.MeanShift` (flat kernel, every
  point a seed);
- ``sklearn bin_seeding``: the same with ``bin_seeding=True``;
- ``lesson loop``: the seed lesson's torch mean shift: per batch of points,
  ``w = exp(-cdist(batch, X)**2 / (2 sigma**2))``, ``X[batch] = (w @ X) /
  w.sum(1)``, updating the points in place (blurring), repeated until no point
  moves more than ``tol * sigma`` (the lesson runs a fixed 5 passes, which does
  not converge in general);
- ``keops``: the Gaussian step as a pykeops ``LazyTensor`` reduction (no
  ``N x N`` matrix), seeds moved until they converge;
- ``faiss kNN``: a faiss ``IndexFlatL2`` k-nearest-neighbour search per
  iteration and Gaussian weights over those ``k`` neighbours.

The last three end with the same simple mode merge (modes closer than one
bandwidth join the one more points converged to) and label every point with
its nearest mode, as scikit-learn does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .cases import gaussian_sigma

TOL = 1e-3  # convergence: shift <= TOL * bandwidth, as in scikit-learn
MAX_ITER = 300
FAISS_K = 64  # neighbours per query of the faiss peer

# Library neighbour methods (MeanShift(neighbors=...)).
NEIGHBOR_METHODS = ("dense", "auto", "grid", "lsh", "faiss")


@dataclass
class CaseData:
    """One case's data, on the host and on the device, prepared outside the timings."""

    host: np.ndarray  # float32 (n, d), C-contiguous
    device_tensor: torch.Tensor  # the same values on the benchmark device
    device: torch.device


@dataclass
class FitOutput:
    """What a method returns: one label per point and the number of clusters."""

    labels: np.ndarray
    n_clusters: int
    detail: str = ""  # e.g. which neighbour method "auto" chose


@dataclass
class Method:
    """One timed configuration.

    Attributes
    ----------
    name : str
        Row label, e.g. ``"ours flat dense"``.
    family : str
        ``"peer"`` or ``"ours"``.
    kernel : str
        ``"flat"`` or ``"gaussian"``.
    fit : callable
        ``fit(data: CaseData, bandwidth: float) -> FitOutput`` (``bandwidth``
        is the case's flat radius; Gaussian methods convert it).
    unavailable : callable
        ``unavailable(device) -> str | None``: None when the method can run,
        else the status to report ("not installed: ...", "unavailable: ...").
    runs_on_host : bool
        True when the method ignores the device (scikit-learn).
    """

    name: str
    family: str
    kernel: str
    fit: Callable[[CaseData, float], FitOutput] = field(repr=False)
    unavailable: Callable[[torch.device], str | None] = field(default=lambda device: None, repr=False)
    runs_on_host: bool = False


# ------------------------------------------------------------------ shared helpers
def nearest_labels(points: torch.Tensor, centers: torch.Tensor, block: int = 1 << 14) -> torch.Tensor:
    """Index of the nearest center of every point, in blocks of points.

    Examples
    --------
    >>> p = torch.tensor([[0.0], [0.9], [2.2]])
    >>> nearest_labels(p, torch.tensor([[0.0], [2.0]])).tolist()
    [0, 0, 1]
    """
    out = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], block):
        out[start : start + block] = torch.cdist(points[start : start + block], centers).argmin(1)
    return out


def merge_modes(modes: torch.Tensor, radius: float) -> torch.Tensor:
    """Greedy mode merge: visit modes by how many seeds reached them, keep those
    farther than ``radius`` from every mode already kept.

    Seeds that stopped within ``radius / 100`` of each other count as one mode
    (they converged to the same place within the stopping tolerance).

    Examples
    --------
    >>> m = torch.tensor([[0.0, 0.0], [0.001, 0.0], [5.0, 5.0], [0.3, 0.0]])
    >>> merge_modes(m, 1.0).shape[0]
    2
    """
    keys = torch.round(modes / (radius / 100.0))
    _, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    representative = torch.zeros(counts.shape[0], modes.shape[1], dtype=modes.dtype, device=modes.device)
    representative.index_copy_(0, inverse, modes)  # one member of each group (the last written)
    order = torch.argsort(counts, descending=True, stable=True)
    candidates = representative[order]
    kept = candidates[:1]
    for start in range(1, candidates.shape[0], 1024):
        block = candidates[start : start + 1024]
        block = block[torch.cdist(block, kept).min(1).values > radius]
        for row in block:  # within a block, earlier (more popular) modes win
            if torch.cdist(row[None], kept).min() > radius:
                kept = torch.cat([kept, row[None]])
    return kept


def _finish(data: CaseData, modes: torch.Tensor, radius: float) -> FitOutput:
    centers = merge_modes(modes, radius)
    labels = nearest_labels(data.device_tensor, centers)
    return FitOutput(labels.cpu().numpy(), int(centers.shape[0]))


# ------------------------------------------------------------------ scikit-learn
def _sklearn(bin_seeding: bool):
    def fit(data: CaseData, bandwidth: float) -> FitOutput:
        from sklearn.cluster import MeanShift as SkMeanShift

        model = SkMeanShift(bandwidth=bandwidth, bin_seeding=bin_seeding).fit(data.host)
        return FitOutput(model.labels_, len(model.cluster_centers_))

    return fit


# ------------------------------------------------------------------ the lesson's loop
def lesson_batch_size(n: int, device: torch.device) -> int:
    """Seeds per batch: a (batch, n) float32 block of 16 MiB on the CPU, 1 GiB on a GPU.

    Examples
    --------
    >>> lesson_batch_size(1_000_000, torch.device("cpu"))
    4
    """
    elements = (1 << 28) if device.type == "cuda" else (1 << 22)
    return max(1, elements // max(1, n))


def lesson_loop(data: CaseData, bandwidth: float) -> FitOutput:
    """The lesson's blurring mean shift, per batch: cdist, Gaussian weights, matmul."""
    sigma = gaussian_sigma(bandwidth)
    X = data.device_tensor.clone()
    n = X.shape[0]
    batch = lesson_batch_size(n, X.device)
    for _ in range(MAX_ITER):
        largest = torch.zeros((), device=X.device)
        for start in range(0, n, batch):
            rows = slice(start, min(n, start + batch))
            weight = torch.exp(-torch.cdist(X[rows], X).square() / (2 * sigma**2))
            new = (weight @ X) / weight.sum(1, keepdim=True)
            largest = torch.maximum(largest, torch.linalg.vector_norm(new - X[rows], dim=1).max())
            X[rows] = new  # in place, as the lesson does
        if float(largest) <= TOL * sigma:
            break
    return _finish(data, X, sigma)


# ------------------------------------------------------------------ KeOps
def _keops_unavailable(device: torch.device) -> str | None:
    try:
        import pykeops  # noqa: F401
        from pykeops.torch import LazyTensor  # noqa: F401
    except Exception as exc:  # ImportError, or a broken compiler setup
        return f"not installed (pykeops: {type(exc).__name__})"
    return None


def keops_mean_shift(data: CaseData, bandwidth: float) -> FitOutput:
    """Gaussian mean shift whose step is one KeOps reduction (no N x N matrix)."""
    from pykeops.torch import LazyTensor

    sigma = gaussian_sigma(bandwidth)
    X = data.device_tensor.contiguous()
    y_j = LazyTensor(X[None, :, :])
    positions = X.clone()
    active = torch.arange(X.shape[0], device=X.device)
    for _ in range(MAX_ITER):
        if active.numel() == 0:
            break
        q = positions[active].contiguous()
        x_i = LazyTensor(q[:, None, :])
        weight = (-((x_i - y_j) ** 2).sum(-1) / (2 * sigma**2)).exp()
        new = (weight * y_j).sum(dim=1) / weight.sum(dim=1)
        moved = torch.linalg.vector_norm(new - q, dim=1) > TOL * sigma
        positions[active] = new
        active = active[moved]
    return _finish(data, positions, sigma)


# ------------------------------------------------------------------ faiss kNN
def _faiss_unavailable(device: torch.device) -> str | None:
    try:
        import faiss  # noqa: F401
    except Exception as exc:
        return f"not installed (faiss: {type(exc).__name__})"
    return None


def faiss_knn_mean_shift(data: CaseData, bandwidth: float) -> FitOutput:
    """Gaussian mean shift over each seed's ``FAISS_K`` nearest neighbours (faiss search).

    Uses a GPU index when faiss has GPUs and the benchmark device is CUDA; the
    weighted means are computed with numpy on the host either way.
    """
    import faiss

    sigma = gaussian_sigma(bandwidth)
    X = data.host
    n, d = X.shape
    k = min(FAISS_K, n)
    index = faiss.IndexFlatL2(d)
    if data.device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(X)
    positions = X.copy()
    active = np.arange(n)
    chunk = max(1, (1 << 24) // (k * d))  # bound the (chunk, k, d) gather
    for _ in range(MAX_ITER):
        if active.size == 0:
            break
        still = []
        for start in range(0, active.size, chunk):
            rows = active[start : start + chunk]
            q = positions[rows]
            dist2, neighbours = index.search(q, k)
            weight = np.exp(-dist2 / (2 * sigma**2))
            new = np.einsum("qk,qkd->qd", weight, X[neighbours]) / weight.sum(1, keepdims=True)
            still.append(rows[np.linalg.norm(new - q, axis=1) > TOL * sigma])
            positions[rows] = new
        active = np.concatenate(still)
    modes = torch.from_numpy(positions).to(data.device)
    return _finish(data, modes, sigma)


# ------------------------------------------------------------------ this library
def _ours(
    kernel: str, neighbors: str, *, bin_seeding: bool = False, algorithm: str = "standard",
    neighbor_options: dict | None = None,
):
    def fit(data: CaseData, bandwidth: float) -> FitOutput:
        from meanshift_gpu import MeanShift

        h = bandwidth if kernel == "flat" else gaussian_sigma(bandwidth)
        model = MeanShift(
            bandwidth=h, kernel=kernel, bin_seeding=bin_seeding, algorithm=algorithm,
            device=data.device, neighbors=neighbors, neighbor_options=neighbor_options,
        ).fit(data.device_tensor)
        return FitOutput(np.asarray(model.labels_), len(model.cluster_centers_), f"neighbors_={model.neighbors_}")

    return fit


def all_methods() -> list[Method]:
    """Peers first (their times are needed for the speed-ups), then this library.

    Examples
    --------
    >>> [m.name for m in all_methods()][:2]
    ['sklearn exact', 'sklearn bin_seeding']
    """
    methods = [
        Method("sklearn exact", "peer", "flat", _sklearn(False), runs_on_host=True),
        Method("sklearn bin_seeding", "peer", "flat", _sklearn(True), runs_on_host=True),
        Method("lesson loop", "peer", "gaussian", lesson_loop),
        Method("keops", "peer", "gaussian", keops_mean_shift, _keops_unavailable),
        Method("faiss kNN", "peer", "gaussian", faiss_knn_mean_shift, _faiss_unavailable),
    ]
    for kernel in ("flat", "gaussian"):
        for neighbors in NEIGHBOR_METHODS:
            methods.append(Method(f"ours {kernel} {neighbors}", "ours", kernel, _ours(kernel, neighbors)))
    # The grid's flat step runs as row prefix sums in 1-D to 3-D (the compiled
    # C loop on the CPU); these rows keep the batched per-cell step and the
    # torch row sums, to show what each brings.
    fit = _ours("flat", "grid", neighbor_options={"row_sums": False})
    methods.append(Method("ours flat grid batched", "ours", "flat", fit))
    fit = _ours("flat", "grid", neighbor_options={"compiled": False})
    methods.append(Method("ours flat grid torch row sums", "ours", "flat", fit))
    methods.append(Method("ours flat dense bin_seeding", "ours", "flat", _ours("flat", "dense", bin_seeding=True)))
    fit = _ours("gaussian", "dense", algorithm="blurring")
    methods.append(Method("ours gaussian dense blurring", "ours", "gaussian", fit))
    return methods


PEERS = ("sklearn exact", "sklearn bin_seeding", "lesson loop", "keops", "faiss kNN")
