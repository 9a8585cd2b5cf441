"""Shared fixtures for the meanshift_gpu test suite.

Helpers are exposed as session-scoped fixtures (rather than importable
functions) so that every test file, Hypothesis tests included, can use them
without relying on ``tests/`` being importable as a package.

Devices.  Every test that fits or computes says which device it checks:

- a test that takes a ``device`` argument is parametrized over ``DEVICES``
  (ids ``cpu`` / ``cuda``): ``"cpu"`` always, ``"cuda"`` when
  ``torch.cuda.is_available()``.  Behaviour that must hold on every device
  (scikit-learn parity, fitted attributes, invariances, error messages) is
  written this way; on a machine without a GPU it adds nothing.
- CPU-only behaviour (the compiled C loops, the hash-grid merge, dask, the
  nodule example, CPU tile sizes, Triton under its interpreter) passes
  ``device="cpu"`` or CPU tensors explicitly.
- GPU-only tests carry the ``cuda`` marker and are skipped, with the reason,
  where CUDA is absent (``tests/test_cuda.py``).

Nothing relies on ``device="auto"`` except the tests of "auto" itself and the
example scripts (run as users run them, checked on outcomes): on a CUDA
machine "auto" is the GPU, where results match the CPU only to the tolerance
of the compute dtype (``tolerance`` below), never bit for bit.  Module-level
parametrization that cannot take an argument (``parametrize_with_checks``)
imports ``DEVICES`` from here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import make_blobs

# The devices parity tests run on; ids are the device names.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_CUDA_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False)"


def pytest_generate_tests(metafunc):
    # Plain parametrization rather than a parametrized fixture: it adds no
    # fixture scope (so Hypothesis tests can take it too) and does not reorder
    # tests.  A test that parametrizes "device" itself keeps its own values.
    if "device" in metafunc.fixturenames and not _parametrizes(metafunc, "device"):
        metafunc.parametrize("device", DEVICES, ids=DEVICES)


def _parametrizes(metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def requires_cuda():
    """Skip the requesting test (with the reason) where CUDA is absent."""
    if not torch.cuda.is_available():
        pytest.skip(NO_CUDA_REASON)


def _compute_dtype(dtype) -> np.dtype:
    """The float dtype the library computes in for input of ``dtype`` (on every device):
    float32 stays float32, everything else (float64, integers, bool) is float64."""
    if isinstance(dtype, torch.dtype):
        narrow = dtype.is_floating_point and dtype != torch.float64  # float16/bfloat16 widen to float32
        return np.dtype(np.float32) if narrow else np.dtype(np.float64)
    if isinstance(dtype, (np.ndarray, np.generic, torch.Tensor)):
        return _compute_dtype(dtype.dtype)
    return np.dtype(np.float32) if np.dtype(dtype) == np.float32 else np.dtype(np.float64)


# Relative precision of a result computed in each dtype, see _tolerance.
_RELATIVE = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}


def _tolerance(dtype, magnitude: float = 1.0) -> dict:
    """``rtol`` / ``atol`` for results computed in ``dtype`` from data of size ``magnitude``.

    Two computations of the same clustering (CPU and GPU, sklearn and us,
    two tilings) differ only in summation order: a center is a mean of the
    points in its window, so its error is a few units in the last place of
    the data's magnitude, times the log of the window size for blocked sums.

    - float64 (eps 2.2e-16): 1e-9 relative, ~5e6 eps, so any summation order
      passes, yet it is 100x below float32's rounding (~1e-7): a path that
      silently computes in float32 fails it.
    - float32 (eps 1.2e-7): 1e-5 relative, ~80 eps, enough for sums over a
      million points in blocks and for both sides rounding independently;
      far below any real change of a window (a point more or less moves a
      mean by ~bandwidth / window size).

    ``atol`` scales with ``magnitude`` (use ``np.abs(X).max()``): coordinates
    near 0 carry the absolute error of the data's largest coordinates.
    """
    relative = _RELATIVE[_compute_dtype(dtype)]
    return {"rtol": relative, "atol": relative * float(magnitude)}


def _make_blob_data(
    n_samples: int = 300,
    n_features: int = 2,
    n_centers: int = 3,
    *,
    random_state: int = 0,
    cluster_std: float = 1.0,
    center_box: tuple[float, float] = (-10.0, 10.0),
    dtype=np.float64,
):
    """Gaussian blobs (continuous coordinates, so no exact window-boundary ties)."""
    X, y = make_blobs(
        n_samples=n_samples,
        n_features=n_features,
        centers=n_centers,
        cluster_std=cluster_std,
        center_box=center_box,
        random_state=random_state,
    )
    return X.astype(dtype, copy=False), y


def _match_centers(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Index into ``other`` of the center matched to each reference center.

    Optimal one-to-one assignment on Euclidean distance, so the match does not
    depend on the order in which either side lists its centers.
    """
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    assert reference.shape == other.shape, (
        f"different numbers of clusters: {reference.shape[0]} vs {other.shape[0]}"
    )
    cost = np.linalg.norm(reference[:, None, :] - other[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    match = np.empty(reference.shape[0], dtype=np.int64)
    match[rows] = cols
    return match


def _assert_same_clustering(
    ref_centers,
    ref_labels,
    centers,
    labels,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    tie_points=None,
):
    """Same number of clusters, matched centers close, labels equal after renaming.

    The labels of ``labels`` are mapped through the center matching (label j
    of the second clustering becomes the reference label of the center it was
    matched to), and the mapped labels must equal ``ref_labels`` exactly, -1
    (orphans) included.  This is stricter than ARI == 1: it also checks that
    each label goes with the right center.
    """
    ref_centers = np.asarray(ref_centers)
    centers = np.asarray(centers)
    ref_labels = np.asarray(ref_labels)
    labels = np.asarray(labels)
    assert centers.shape == ref_centers.shape, (
        f"expected {ref_centers.shape[0]} clusters, got {centers.shape[0]}"
    )
    match = _match_centers(ref_centers, centers)
    np.testing.assert_allclose(centers[match], ref_centers, atol=atol, rtol=rtol)
    rename = np.full(centers.shape[0] + 1, -1, dtype=np.int64)  # index -1 -> -1
    rename[match] = np.arange(ref_centers.shape[0])
    mapped = np.where(labels >= 0, rename[labels], -1)
    mismatched = np.flatnonzero(mapped != ref_labels)
    if tie_points is not None and mismatched.size:
        # A point exactly equidistant from two centers has no "right" label:
        # sklearn's KD-tree and our argmin break such ties differently.
        points = np.asarray(tie_points, dtype=np.float64)[mismatched]
        own = np.linalg.norm(points - ref_centers[ref_labels[mismatched]], axis=1)
        other = np.linalg.norm(points - ref_centers[np.maximum(mapped[mismatched], 0)], axis=1)
        is_tie = (mapped[mismatched] >= 0) & (ref_labels[mismatched] >= 0) & np.isclose(own, other, rtol=1e-9, atol=0)
        mismatched = mismatched[~is_tie]
    assert mismatched.size == 0, (
        f"{mismatched.size} of {labels.size} labels differ after matching centers, "
        f"first at index {mismatched[:5].tolist()}"
    )


@pytest.fixture(scope="session")
def make_blob_data():
    """Factory ``make_blob_data(n_samples, n_features, n_centers, *, random_state, ...)``."""
    return _make_blob_data


@pytest.fixture(scope="session")
def match_centers():
    """``match_centers(reference, other)`` -> index into ``other`` per reference center."""
    return _match_centers


@pytest.fixture(scope="session")
def assert_same_clustering():
    """``assert_same_clustering(ref_centers, ref_labels, centers, labels, atol=, rtol=)``."""
    return _assert_same_clustering


@pytest.fixture(scope="session")
def tolerance():
    """``tolerance(dtype, magnitude=1.0)`` -> ``{"rtol", "atol"}`` for results computed in ``dtype``."""
    return _tolerance


@pytest.fixture
def no_triton_interpreter(monkeypatch):
    """Run a test as on a plain CPU machine: the Triton interpreter switched off."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _numpy_profile(d2: np.ndarray, kernel: str) -> np.ndarray:
    if kernel == "flat":
        return (d2 <= 1.0).astype(np.float64)
    if kernel == "epanechnikov":
        return np.maximum(0.0, 1.0 - d2)
    if kernel == "gaussian":
        return np.exp(-0.5 * d2)
    raise ValueError(kernel)


def _numpy_mean_shift(
    X,
    bandwidth,
    *,
    kernel: str = "flat",
    algorithm: str = "standard",
    seeds=None,
    sample_weight=None,
    tol: float = 1e-3,
    max_iter: int = 300,
    cluster_all: bool = True,
):
    """Brute-force float64 numpy mean shift, written from the definitions.

    One seed at a time (scikit-learn's ``_mean_shift_single_seed`` loop with a
    general kernel profile and weights), or blurring (all points move at once,
    stop when no point moved more than ``tol`` bandwidths).  Work is done in
    coordinates divided by the (scalar or per-feature) bandwidth.  Modes are
    merged as scikit-learn does: sorted by (intensity, coordinates) descending,
    each kept mode removes later ones within distance 1 (inclusive); every
    point gets its nearest mode.  Returns ``(centers, labels, n_iter)``.
    """
    X = np.asarray(X, dtype=np.float64)
    h = np.broadcast_to(np.asarray(bandwidth, dtype=np.float64), (X.shape[1],))
    Z = X / h
    w = np.ones(len(Z)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)

    def density(q):
        k = _numpy_profile(((Z - q) ** 2).sum(1), kernel) * w
        return k, k.sum()

    if algorithm == "standard":
        S = Z[w > 0] if seeds is None else np.asarray(seeds, dtype=np.float64) / h
        candidates, intensity, n_iter = [], [], 0
        for q in S:
            completed = 0
            while True:
                k, total = density(q)
                if total <= 0:
                    break
                new = k @ Z / total
                if np.linalg.norm(new - q) <= tol or completed == max_iter:
                    candidates.append(new)
                    intensity.append(total)
                    n_iter = max(n_iter, completed)
                    break
                q = new
                completed += 1
        candidates = np.array(candidates).reshape(-1, X.shape[1])
        intensity = np.array(intensity)
        modes_at = Z
    else:
        P, n_iter = Z.copy(), 0
        while True:
            K = _numpy_profile(((P[:, None, :] - P[None, :, :]) ** 2).sum(2), kernel) * w[None, :]
            total = K.sum(1)
            new = K @ P / total[:, None]
            shift = np.linalg.norm(new - P, axis=1).max()
            P = new
            if shift <= tol or n_iter >= max_iter:
                break
            n_iter += 1
        candidates, intensity, modes_at = P, total, P

    order = sorted(
        range(len(candidates)), key=lambda i: (intensity[i], tuple(candidates[i])), reverse=True
    )
    kept: list[np.ndarray] = []
    for i in order:
        if all(np.linalg.norm(candidates[i] - c) > 1.0 for c in kept):
            kept.append(candidates[i])
    if not kept:
        raise ValueError("No point was within bandwidth of any seed")
    centers = np.array(kept)
    dist = np.linalg.norm(modes_at[:, None, :] - centers[None, :, :], axis=2)
    labels = dist.argmin(1)
    if not cluster_all:
        labels = np.where(dist.min(1) <= 1.0, labels, -1)
    return centers * h, labels, n_iter


@pytest.fixture(scope="session")
def numpy_mean_shift():
    """Brute-force numpy mean shift ``numpy_mean_shift(X, bandwidth, *, kernel=, algorithm=,
    seeds=, sample_weight=, tol=, max_iter=, cluster_all=)`` -> ``(centers, labels, n_iter)``."""
    return _numpy_mean_shift
