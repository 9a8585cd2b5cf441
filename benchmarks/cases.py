"""The workloads of the benchmark suite: labelled blobs, an image, the nodule pipeline.

Every case fixes one bandwidth, used by every method on that case, so that the
timings compare the same clustering problem.  ``bandwidth`` is the flat
kernel's radius (scikit-learn's meaning); Gaussian methods use the standard
deviation ``sigma = bandwidth / 2`` (a Gaussian of that sigma puts about the
same weight inside the flat window in two dimensions, and far clusters still
weigh ``exp(-32)`` or less).

Data are generated here (no downloads): the only file read is the sample image
that scikit-learn ships.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# Clusters in every blobs case, as in the seed lesson (6 random centroids).
N_BLOBS = 6
# Cluster standard deviation of the blobs (per feature).
BLOB_STD = 1.0


def gaussian_sigma(bandwidth: float) -> float:
    """The Gaussian kernel's standard deviation used for a flat radius ``bandwidth``.

    Examples
    --------
    >>> gaussian_sigma(3.0)
    1.5
    """
    return bandwidth / 2.0


@dataclass
class Case:
    """One clustering problem of the suite.

    Attributes
    ----------
    id : str
        Unique name, e.g. ``"blobs-d2-n1000"``.
    workload : str
        ``"blobs"``, ``"image"`` or ``"nodule"``.
    series : str or None
        Cases of one series differ only in ``n``; a series gives one line in the
        time-vs-N plot and lets the suite predict the time of its larger cases.
    n, d : int
        Points and features.
    bandwidth : float
        Flat-kernel radius used by every method (Gaussian: ``bandwidth / 2``).
    make : callable
        ``make() -> (X, y)``: float32 data of shape (n, d) and the true labels
        (None when there is no ground truth).
    note : str
        Where the data come from.
    """

    id: str
    workload: str
    series: str | None
    n: int
    d: int
    bandwidth: float
    make: Callable[[], tuple[np.ndarray, np.ndarray | None]] = field(repr=False)
    note: str = ""


def blob_bandwidth(d: int) -> float:
    """Flat radius for blobs of unit spread in ``d`` features: ``2 sqrt(d)``.

    Points of one blob lie about ``sqrt(d)`` from its center, so a window of
    twice that holds the whole blob in any dimension.

    Examples
    --------
    >>> blob_bandwidth(4)
    4.0
    """
    return 2.0 * math.sqrt(d) * BLOB_STD


def make_blobs_data(n: int, d: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in ``N_BLOBS`` Gaussian blobs whose closest centers are ``4 * bandwidth`` apart.

    The centers are random directions rescaled so that the *closest* pair is
    exactly four flat bandwidths apart: every method can separate them, and the
    adjusted Rand index against the truth measures the method, not the data.

    Parameters
    ----------
    n, d : int
        Number of points and features.
    seed : int
        Seed of the generator (centers and points).

    Returns
    -------
    X : ndarray of shape (n, d), float32
    y : ndarray of shape (n,), int64

    Examples
    --------
    >>> X, y = make_blobs_data(60, 3)
    >>> X.shape, X.dtype, len(set(y.tolist()))
    ((60, 3), dtype('float32'), 6)
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(N_BLOBS, d))
    gaps = np.linalg.norm(centers[:, None] - centers[None], axis=2)
    closest = gaps[np.triu_indices(N_BLOBS, 1)].min()
    centers *= 4.0 * blob_bandwidth(d) / closest
    y = np.arange(n) % N_BLOBS  # balanced, every cluster present even for tiny n
    rng.shuffle(y)
    X = centers[y] + rng.normal(scale=BLOB_STD, size=(n, d))
    return X.astype(np.float32), y.astype(np.int64)


def blobs_case(n: int, d: int, series: str | None) -> Case:
    """A blobs case with the suite's naming and bandwidth.

    Examples
    --------
    >>> blobs_case(1000, 2, "blobs-d2").id
    'blobs-d2-n1000'
    """
    return Case(
        id=f"blobs-d{d}-n{n}",
        workload="blobs",
        series=series,
        n=n,
        d=d,
        bandwidth=blob_bandwidth(d),
        make=lambda: make_blobs_data(n, d),
        note=f"{N_BLOBS} Gaussian blobs, unit spread, closest centers 4 bandwidths apart",
    )


def image_case(step: int, with_xy: bool) -> Case | str:
    """Colour segmentation of scikit-learn's ``china.jpg``, every ``step``-th pixel.

    Features are (r, g, b) in 0..255, or (x, y, r, g, b) with x, y in pixels
    of the original image.  The bandwidth is scikit-learn's
    ``estimate_bandwidth(quantile=0.1, n_samples=1000, random_state=0)``,
    computed once.  There is no ground truth: the ARI is against scikit-learn.

    Returns the case, or a sentence saying why it cannot be built (pillow
    missing, say).

    Examples
    --------
    >>> case = image_case(16, with_xy=False)
    >>> isinstance(case, str) or case.d == 3
    True
    """
    try:
        from sklearn.datasets import load_sample_image

        image = load_sample_image("china.jpg")
    except Exception as exc:  # ImportError without pillow, OSError for a broken install
        return f"skipped: cannot load sklearn's sample image ({type(exc).__name__}: {exc})"
    pixels = image[::step, ::step].astype(np.float32)
    height, width = pixels.shape[:2]
    features = pixels.reshape(-1, 3)
    if with_xy:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) * step
        features = np.column_stack([xx.ravel(), yy.ravel(), features])
    X = np.ascontiguousarray(features, dtype=np.float32)
    from sklearn.cluster import estimate_bandwidth

    bandwidth = float(estimate_bandwidth(X, quantile=0.1, n_samples=min(1000, len(X)), random_state=0))
    name = "xyrgb" if with_xy else "rgb"
    return Case(
        id=f"image-{name}-n{len(X)}",
        workload="image",
        series=None,
        n=len(X),
        d=X.shape[1],
        bandwidth=bandwidth,
        make=lambda: (X, None),
        note=f"china.jpg every {step}th pixel ({height}x{width}), features {name}",
    )


# Names looked up, in this order, for the nodule pipeline's benchmark hook.
NODULE_HOOKS = ("examples.nodule_candidates", "examples.nodule_candidates.pipeline")


def nodule_case(scale: str) -> Case | str:
    """The nodule pipeline's clustering problem, if the example exposes it.

    The example must provide ``benchmark_points(scale: str) -> (X, y, bandwidth)``
    (``y`` may be None) in ``examples.nodule_candidates`` or its ``pipeline``
    module; otherwise a sentence saying that it was skipped is returned.

    Examples
    --------
    >>> result = nodule_case("quick")
    >>> isinstance(result, (str, Case))
    True
    """
    import importlib

    for module_name in NODULE_HOOKS:
        try:
            module = importlib.import_module(module_name)
        except Exception:
            continue
        hook = getattr(module, "benchmark_points", None)
        if callable(hook):
            try:
                X, y, bandwidth = hook(scale)
            except Exception as exc:
                return f"skipped: {module_name}.benchmark_points failed ({type(exc).__name__}: {exc})"
            X = np.ascontiguousarray(X, dtype=np.float32)
            y = None if y is None else np.asarray(y)
            return Case(
                id=f"nodule-n{len(X)}",
                workload="nodule",
                series=None,
                n=len(X),
                d=X.shape[1],
                bandwidth=float(bandwidth),
                make=lambda: (X, y),
                note=f"points from {module_name}.benchmark_points({scale!r})",
            )
    return (
        "skipped: examples.nodule_candidates exposes no benchmark_points(scale) -> (X, y, bandwidth) "
        "callable"
    )


@dataclass
class SuiteSpec:
    """The cases and settings of one suite on one device."""

    name: str
    cases: list[Case]
    skipped: list[tuple[str, str]]  # (workload, reason)
    budget_s: float  # per method and case: larger predicted times are skipped
    repeats: int  # timed runs after the warm-up (fewer when over budget)
    sweep_case: str  # id of the case used for the quality-vs-bandwidth sweep
    sweep_factors: tuple[float, ...]
    time_limit_s: float | None = None  # whole run; later method-case pairs are not run


def build_suite(name: str, device: str, only: list[str] | None = None) -> SuiteSpec:
    """The ``quick`` or ``full`` suite for ``device`` ("cpu" or "cuda").

    Examples
    --------
    >>> spec = build_suite("quick", "cpu")
    >>> spec.cases[0].id
    'blobs-d2-n1000'
    """
    if name not in ("quick", "full"):
        raise ValueError(f"unknown suite {name!r}; expected 'quick' or 'full'")
    gpu = device == "cuda"
    if name == "quick":
        sizes = [1_000, 2_000, 5_000, 10_000, 20_000] + ([50_000, 100_000] if gpu else [])
        dim_n, dims = (10_000 if gpu else 1_000), (3, 5, 8, 32, 128)
        image_step, image_xy = (4, False) if gpu else (8, False)
        budget, repeats, time_limit = (5.0, 3, 540.0)
        sweep_factors = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    else:
        if gpu:
            sizes = [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000]
            dim_n = 100_000
            image_step = 1
        else:
            sizes = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000]
            dim_n = 10_000
            image_step = 4
        dims, image_xy = (3, 5, 8, 32, 128), True
        budget, repeats, time_limit = (300.0 if gpu else 120.0, 5, None)
        sweep_factors = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0)
    cases = [blobs_case(n, 2, "blobs-d2") for n in sizes]
    cases += [blobs_case(dim_n, d, None) for d in dims]
    skipped = []
    # Building the nodule case renders a phantom (seconds): only when it can be selected.
    want_nodule = only is None or any("nodule".startswith(p) or p.startswith("nodule") for p in only)
    nodule = nodule_case(name) if want_nodule else "not selected (--only)"
    for workload, built in (("image", image_case(image_step, image_xy)), ("nodule", nodule)):
        if isinstance(built, str):
            skipped.append((workload, built))
        else:
            cases.append(built)
    sweep = blobs_case(2_000 if not gpu else 10_000, 2, None).id
    return SuiteSpec(name, cases, skipped, budget, repeats, sweep, sweep_factors, time_limit)
