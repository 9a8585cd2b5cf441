"""Shared fixtures for the meanshift_gpu test suite.

Helpers are exposed as session-scoped fixtures (rather than importable
functions) so that every test file, Hypothesis tests included, can use them
without relying on ``tests/`` being importable as a package.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import make_blobs


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


@pytest.fixture
def no_triton_interpreter(monkeypatch):
    """Run a test as on a plain CPU machine: the Triton interpreter switched off."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
