"""Nodule candidates from a CT scan by 5-D mean shift (x, y, z, HU, shape index).

The pipeline, after Ye et al. (voxels clustered jointly in space, intensity
and shape):

1. **Working grid.**  In-plane voxels are block-averaged to about
   ``working_mm`` (LUNA16 scans are 0.5-0.9 mm in-plane; nodules of interest
   are >= 3 mm), which cuts every later stage by up to 4x.
2. **Lungs.**  :func:`~examples.nodule_candidates.lung.segment_lungs`; the
   volume is cropped to the lungs' bounding box.
3. **Shape.**  Gaussian-smoothed HU and the volumetric shape index at
   ``sigma_mm`` (:mod:`~examples.nodule_candidates.shape_index`, torch, so on
   the GPU when ``device="cuda"``).  Inside large solid nodules the smoothed
   image is flat and the shape index undefined; there it is taken from a
   second, coarser scale (``coarse_sigma_mm`` on a 2x coarser grid).
4. **Voxels of interest**: inside the lungs, brighter than ``voi_hu``
   (ground-glass nodules are about -650 HU, parenchyma about -850 HU) and not
   concave (shape index >= ``min_shape_index``: the rim of the lungs, where
   the chest wall is seen from inside, is cup-shaped).  At most
   ``max_points`` of them are kept (a fixed random subsample).
5. **5-D mean shift** with per-feature bandwidths: ``bandwidth_mm`` for
   x, y, z (world mm), ``bandwidth_hu`` for the smoothed HU and
   ``bandwidth_si`` for the shape index, with bin seeding (every occupied
   cell a seed, so 5 mm nodules get one).  A nodule (round, shape index ~1)
   and the vessel it touches (shape index ~0.75) fall apart along the shape
   axis even where they touch in space.  The scan is cut into spatial tiles
   (``tile_mm``) with a halo of ``3 * bandwidth_mm``
   (:func:`meanshift_gpu.tiled_mean_shift`); each tile is fitted on its own
   with the library's exact dense pass and modes found in several tiles are
   merged (the same modes, for far less work: mean shift with a flat kernel
   never reads points beyond one bandwidth).
6. **Candidates**: one per cluster, at its mode, with size, intensity,
   shape, core and neighbourhood statistics (:class:`Clusters`) and the
   image context around the mode (:func:`context_features`), scored by
   a gradient-boosted tree ensemble trained on phantoms with other seeds
   than the evaluation set (:mod:`~examples.nodule_candidates.classifier`;
   :func:`score_clusters` is the older hand-set score); the best
   ``top_m`` of them are re-scored by a second ensemble that also reads
   the image around each one (:mod:`~examples.nodule_candidates.patches`:
   radial profiles, shell anisotropy, the thresholded component).  Candidates within
   ``nms_mm`` of a better one (``nms_large_mm`` of one inside a large
   object) are dropped and the ``max_candidates`` best are kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from meanshift_gpu import MeanShift, resolve_device, tiled_mean_shift

from .io import Finding, Scan, index_zyx_to_world
from .lung import segment_lungs
from .shape_index import shape_features

STAGES = ("resample", "lungs", "shape_index", "voxels", "mean_shift", "context", "patches", "scoring")

#: Scales (mm) of the Hessian blob responses in :func:`context_features`.
HESSIAN_SCALES_MM = (2.0, 4.0)
#: Scale (mm) of the surroundings that :func:`context_features` contrasts against.
SURROUND_SIGMA_MM = 8.0


@dataclass
class DetectorConfig:
    """Settings of :func:`detect_candidates` (defaults are the ones measured in the README).

    Attributes
    ----------
    working_mm : float
        Target in-plane voxel size; voxels are block-averaged by
        ``round(working_mm / spacing)`` (at least 1) along x and y.
    sigma_mm : float
        Scale of the Gaussian derivatives for the shape index.
    coarse_sigma_mm : float or None
        Second scale (on a 2x coarser grid) that fills in the shape index
        where the fine one is undefined; None to skip it.
    voi_hu : float
        Smoothed HU above which a lung voxel is of interest.  -800 rather
        than a threshold nearer ground glass (-650 HU): smoothing at
        ``sigma_mm`` pulls a 6-10 mm ground-glass nodule down to about
        -700 to -780 HU, and at -760 some of them had no voxel of interest
        at all.
    min_shape_index : float
        Voxels of interest must have at least this shape index.
    max_points : int
        At most this many voxels go into mean shift (random subsample).
    bandwidth_mm, bandwidth_hu, bandwidth_si : float
        Mean-shift bandwidths of the spatial, intensity and shape features.
    min_bin_freq : int
        Bin-seeding cells need at least this many voxels to become seeds.
        1: the voxels of a 5-8 mm nodule, especially one touching the chest
        wall, spread over many 5-D cells (their HU runs from the rim to the
        core), so with 3 no cell of theirs became a seed and the nodule was
        absorbed by a far-away mode.
    tile_mm : float or None
        Side of the spatial tiles; None fits the whole scan at once.  Tiles
        keep each fit small enough for the library's exact dense pass
        (``neighbors="dense"``); README.md (step 5) has the times by tile size.
    max_candidates : int
        Best-scored candidates kept per scan.
    min_cluster_voxels : int
        Clusters with fewer (subsampled) voxels are dropped as noise.
    group_radius : float
        Modes closer than this (in bandwidth units of the 5-D feature
        space) are grouped into one candidate, transitively: a large nodule
        that mean shift splits into several modes becomes one round object
        and a vessel one long one, so size and elongation mean something.
        0 (the default: on the phantoms grouping merged juxtavascular
        nodules into their vessels more often than it helped) keeps every
        mode on its own.
    nms_mm : float
        After scoring, a candidate within this distance of a better one is
        dropped (0 keeps all): mean shift leaves several modes along a vessel
        or inside a large nodule, and without this they fill the
        ``max_candidates`` slots.  Nodules closer than this to a better
        candidate are then found through it only.
    nms_large_mm, nms_large_density : float
        Candidates inside large objects (their 10 mm ball more than
        ``nms_large_density`` filled with voxels of interest) suppress within
        ``nms_large_mm`` instead (:func:`suppression_radius`); not above
        ``nms_mm`` turns this off.
    core_mm : float
        Radius around the mode of the "core" statistics of a cluster (its
        members further away were only assigned to it as the nearest mode).
    refine_mm : float
        Each cluster's position (its mode) climbs the lung image to the
        nearest bright peak, at most this far (:func:`refine_positions`);
        the image context, the patch features, the suppression and the
        reported candidate all use the refined position.  0 keeps the modes.
    device : str
        "cpu", "cuda" or "auto" (CUDA when available).
    seed : int
        Seed of the voxel subsample.
    """

    working_mm: float = 1.25
    sigma_mm: float = 2.0
    coarse_sigma_mm: float | None = 4.0
    voi_hu: float = -800.0
    min_shape_index: float = 0.5
    max_points: int = 150_000
    bandwidth_mm: float = 4.0
    bandwidth_hu: float = 150.0
    bandwidth_si: float = 0.15
    min_bin_freq: int = 1
    tile_mm: float | None = 48.0
    max_candidates: int = 100
    min_cluster_voxels: int = 4
    group_radius: float = 0.0
    nms_mm: float = 5.0
    nms_large_mm: float = 10.0
    nms_large_density: float = 0.5
    core_mm: float = 6.0
    refine_mm: float = 3.0
    device: str = "auto"
    seed: int = 0


@dataclass
class Clusters:
    """Per-cluster statistics from the mean-shift stage (one row per cluster).

    Attributes
    ----------
    center : ndarray of shape (n, 3)
        Mode position, world mm (x, y, z).
    n_voxels : ndarray of shape (n,)
        Voxels of interest in the cluster (before subsampling, estimated).
    volume_mm3 : ndarray of shape (n,)
        ``n_voxels`` times the working voxel volume.
    mean_hu, mean_si : ndarray of shape (n,)
        Mean smoothed HU and shape index of the cluster's voxels.
    round_fraction : ndarray of shape (n,)
        Fraction of its voxels with shape index >= 0.875 (cap-like).
    elongation : ndarray of shape (n,)
        Ratio of the largest to the smallest spatial standard deviation.
    extent_mm : ndarray of shape (n,)
        Diameter of the uniform ball with the same spatial variance
        (``sqrt(20 * mean variance)``).
    mode_hu, mode_si : ndarray of shape (n,) or None
        HU and shape index of the mean-shift mode.
    hu_std : ndarray of shape (n,) or None
        Standard deviation of the members' smoothed HU.
    core_fraction : ndarray of shape (n,) or None
        Fraction of the members within ``core_mm`` of the candidate position
        (the others were only assigned to this mode as the nearest one).
    core_si, core_round : ndarray of shape (n,) or None
        Mean shape index and cap fraction of those core members.
    density_3mm, density_6mm, density_10mm : ndarray of shape (n,) or None
        Fraction of the ball of that radius around the candidate filled with
        voxels of interest (of any cluster): a blob fills small balls and
        not large ones, a vessel fills neither, the chest-wall rim both.
    support_mm3 : ndarray of shape (n,) or None
        Volume of the voxels inside the mean-shift window (one bandwidth in
        the scaled 5-D space) around the mode: the kernel density there.
    wall_mm : ndarray of shape (n,) or None
        Distance from the candidate to the outside of the lung mask (chest
        wall, mediastinum, diaphragm), mm; from :func:`context_features`.
    hessian_2mm, hessian_4mm : ndarray of shape (n, 3) or None
        Eigenvalues (ascending) of the scale-normalised Hessian
        (``sigma^2 * H``, HU) of the image at the candidate, at 2 and 4 mm:
        all three negative on a bright blob, two on a vessel, one on the
        chest wall or a fissure.
    contrast_2mm, contrast_4mm : ndarray of shape (n,) or None
        Image smoothed at 2 (4) mm minus the image smoothed at
        ``SURROUND_SIGMA_MM`` at the candidate, HU: brightness against the
        surroundings.
    """

    center: np.ndarray
    n_voxels: np.ndarray
    volume_mm3: np.ndarray
    mean_hu: np.ndarray
    mean_si: np.ndarray
    round_fraction: np.ndarray
    elongation: np.ndarray
    extent_mm: np.ndarray
    mode_hu: np.ndarray | None = None
    mode_si: np.ndarray | None = None
    hu_std: np.ndarray | None = None
    core_fraction: np.ndarray | None = None
    core_si: np.ndarray | None = None
    core_round: np.ndarray | None = None
    density_3mm: np.ndarray | None = None
    density_6mm: np.ndarray | None = None
    density_10mm: np.ndarray | None = None
    support_mm3: np.ndarray | None = None
    wall_mm: np.ndarray | None = None
    hessian_2mm: np.ndarray | None = None
    hessian_4mm: np.ndarray | None = None
    contrast_2mm: np.ndarray | None = None
    contrast_4mm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.center)

    def take(self, index) -> "Clusters":
        """The clusters at ``index`` (an index array or boolean mask)."""
        return Clusters(**{k: None if v is None else v[index] for k, v in asdict(self).items()})


@dataclass
class Detection:
    """Result of :func:`detect_candidates` for one scan.

    Attributes
    ----------
    candidates : list of Finding
        Best first; ``value`` is the score in (0, 1).
    clusters : Clusters
        Statistics of the kept candidates' clusters (same order).
    timings : dict
        Seconds per stage (keys from ``STAGES``).
    n_points : int
        Voxels that went into mean shift.
    n_clusters : int
        Clusters found before scoring and truncation.
    """

    candidates: list[Finding]
    clusters: Clusters
    timings: dict = field(default_factory=dict)
    n_points: int = 0
    n_clusters: int = 0


# ------------------------------------------------------------------ stages
def block_average(array: np.ndarray, factors_zyx) -> np.ndarray:
    """Average non-overlapping blocks of ``factors_zyx`` voxels (edges cropped).

    Examples
    --------
    >>> block_average(np.arange(8.0).reshape(1, 2, 4), (1, 2, 2)).tolist()
    [[[2.5, 4.5]]]
    """
    fz, fy, fx = (int(f) for f in factors_zyx)
    nz, ny, nx = (n // f for n, f in zip(array.shape, (fz, fy, fx)))
    if (fz, fy, fx) == (1, 1, 1):
        return array.astype(np.float32, copy=False)
    cropped = array[: nz * fz, : ny * fy, : nx * fx].astype(np.float32)
    return cropped.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5), dtype=np.float32)


def working_scan(scan: Scan, working_mm: float) -> Scan:
    """The scan block-averaged in-plane to about ``working_mm`` (slices untouched).

    The new voxel ``(i, j, k)`` covers old voxels ``f*i ... f*i + f - 1``, so its
    center (the new origin for ``i = 0``) is ``(f - 1) / 2`` old voxels in.

    Examples
    --------
    >>> s = Scan(np.zeros((4, 8, 8), np.int16), [0, 0, 0], [0.6, 0.6, 2.0], seriesuid="a")
    >>> w = working_scan(s, 1.25)
    >>> w.array.shape, w.spacing.tolist(), w.origin.tolist()
    ((4, 4, 4), [1.2, 1.2, 2.0], [0.3, 0.3, 0.0])
    """
    factor = max(1, int(round(working_mm / max(scan.spacing[0], scan.spacing[1]))))
    factors_xyz = np.array([factor, factor, 1])
    array = block_average(scan.array, factors_xyz[::-1])
    shift = scan.direction @ ((factors_xyz - 1) / 2 * scan.spacing)
    return Scan(array, scan.origin + shift, scan.spacing * factors_xyz, scan.direction, scan.seriesuid)


def _bounding_box(mask: np.ndarray, margin) -> tuple[slice, slice, slice] | None:
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.nonzero(mask.any(axis=other))[0]
        lo = max(0, int(hits[0]) - margin[axis])
        hi = min(mask.shape[axis], int(hits[-1]) + 1 + margin[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def _coarse_shape_index(volume: torch.Tensor, spacing_xyz: np.ndarray, sigma_mm: float, device) -> torch.Tensor:
    """Shape index at ``sigma_mm`` on a 2x coarser grid, back on the fine grid (nearest)."""
    factors_zyx = [2 if s * 2 <= sigma_mm else 1 for s in spacing_xyz[::-1]]
    coarse = block_average(volume.cpu().numpy(), factors_zyx)
    feats = shape_features(coarse, spacing_xyz * np.array(factors_zyx[::-1]), sigma_mm, device=device)
    index = [
        (torch.arange(n, device=feats.shape_index.device) // f).clamp_(max=m - 1)
        for n, f, m in zip(volume.shape, factors_zyx, coarse.shape)
    ]
    return feats.shape_index[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]


def voxel_features(scan: Scan, config: DetectorConfig, timings: dict | None = None):
    """Lung mask, shape index and the 5-D features of the voxels of interest.

    Parameters
    ----------
    scan : Scan
        The CT scan (HU).
    config : DetectorConfig
        Settings.
    timings : dict, optional
        Filled with the seconds spent in "resample", "lungs", "shape_index"
        and "voxels".

    Returns
    -------
    features : ndarray of shape (n_points, 5), float32
        x, y, z (world mm), smoothed HU, shape index.
    voxel_volume : float
        mm^3 of one working voxel times the subsampling factor (the volume
        one point stands for).
    work : Scan
        The working-grid scan.
    lungs : ndarray of bool
        Lung mask on the working grid.

    Examples
    --------
    >>> from examples.nodule_candidates.phantom import make_phantom
    >>> ph = make_phantom((64, 64, 32), seed=1, n_nodules=1, diameter_range=(10, 12))
    >>> X, vol, work, lungs = voxel_features(ph.scan, DetectorConfig(device="cpu"))
    >>> X.shape[1], bool(lungs.any())
    (5, True)
    """
    timings = {} if timings is None else timings
    device = resolve_device(config.device)
    t0 = time.perf_counter()
    work = working_scan(scan, config.working_mm)
    t1 = time.perf_counter()
    lungs = segment_lungs(work.array, work.spacing)
    t2 = time.perf_counter()
    timings["resample"] = t1 - t0
    timings["lungs"] = t2 - t1
    # Crop to the lungs plus the derivative kernels' reach.
    reach = 3.0 * max(config.sigma_mm, config.coarse_sigma_mm or 0.0)
    margin = [int(math.ceil(reach / s)) + 2 for s in work.spacing[::-1]]
    box = _bounding_box(lungs, margin)
    if box is None:
        timings["shape_index"] = timings["voxels"] = 0.0
        return np.zeros((0, 5), np.float32), 0.0, work, lungs
    volume = torch.as_tensor(np.ascontiguousarray(work.array[box]), device=device)
    feats = shape_features(volume, work.spacing, config.sigma_mm, device=device)
    si = feats.shape_index
    smoothed = feats.smoothed
    lung_crop = torch.as_tensor(lungs[box], device=si.device)
    voi = lung_crop & (smoothed > config.voi_hu)
    if config.coarse_sigma_mm:
        missing = voi & torch.isnan(si)
        if bool(missing.any()):
            coarse = _coarse_shape_index(volume, work.spacing, config.coarse_sigma_mm, device)
            si = torch.where(missing, coarse, si)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t3 = time.perf_counter()
    timings["shape_index"] = t3 - t2
    voi &= si >= config.min_shape_index  # NaN compares False: undefined shape drops out
    index = torch.nonzero(voi)
    hu = smoothed[voi]
    shape = si[voi]
    n_voi = index.shape[0]
    if n_voi > config.max_points:
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        keep = torch.randperm(n_voi, generator=gen)[: config.max_points].to(index.device)
        keep = keep.sort().values
        index, hu, shape = index[keep], hu[keep], shape[keep]
    offset = np.array([b.start for b in box])
    world = index_zyx_to_world(index.cpu().numpy() + offset, work.origin, work.spacing, work.direction)
    X = np.column_stack([world, hu.cpu().numpy(), shape.cpu().numpy()]).astype(np.float32)
    voxel_volume = float(np.prod(work.spacing)) * (n_voi / max(1, X.shape[0]))
    timings["voxels"] = time.perf_counter() - t3
    return X, voxel_volume, work, lungs


def mean_shift_clusters(X: np.ndarray, config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the 5-D voxel features; returns ``(centers, labels)``.

    With ``config.tile_mm`` set the points are cut into spatial tiles of that
    side with a halo of ``3 * bandwidth_mm`` by
    :func:`meanshift_gpu.tiled_mean_shift`: each tile's seeds (bin seeds of
    its own points) climb over its points plus the halo, its points get
    labels from its own modes, and modes found by several tiles (within one
    bandwidth of each other in the scaled 5-D space) are merged, the mode
    with more points of its tile first.  Every fit uses the exact dense pass
    (``neighbors="dense"``): the tiles keep each one small enough for it.

    Parameters
    ----------
    X : ndarray of shape (n, 5)
        Features from :func:`voxel_features`.
    config : DetectorConfig
        Bandwidths and tiling.

    Returns
    -------
    centers : ndarray of shape (n_clusters, 5)
    labels : ndarray of shape (n,)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> blob = lambda c: np.column_stack([rng.normal(c, 1.0, (200, 3)), rng.normal(0, 20, 200), rng.uniform(0.9, 1, 200)])
    >>> X = np.vstack([blob(0.0), blob(60.0)]).astype(np.float32)
    >>> centers, labels = mean_shift_clusters(X, DetectorConfig(device="cpu", tile_mm=40.0))
    >>> len(centers), len(set(labels[:200].tolist())), bool(labels[0] != labels[-1])
    (2, 1, True)
    """
    bandwidth = np.array([config.bandwidth_mm] * 3 + [config.bandwidth_hu, config.bandwidth_si])
    if len(X) == 0:
        return np.zeros((0, 5), np.float32), np.zeros(0, np.int64)
    # On the 48 mm tiles "auto" (the 5-D grid on the bigger ones) was no
    # faster than the dense pass and found the same modes.
    options = dict(bandwidth=bandwidth, min_bin_freq=config.min_bin_freq, device=config.device, neighbors="dense")
    if config.tile_mm is None:
        model = MeanShift(bin_seeding=True, **options).fit(X)
        return model.cluster_centers_, model.labels_
    halo = 3.0 * config.bandwidth_mm
    return tiled_mean_shift(X, tile_size=float(config.tile_mm), halo=halo, tile_features=(0, 1, 2), **options)


def group_modes(centers: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """Group id of every mode: single linkage at ``config.group_radius`` bandwidths.

    Examples
    --------
    >>> c = np.array([[0, 0, 0, -100, 0.95], [5, 0, 0, -100, 0.95], [5, 0, 0, -100, 0.7], [40, 0, 0, 0, 1]])
    >>> group_modes(c, DetectorConfig(bandwidth_mm=4.0, group_radius=1.5)).tolist()
    [0, 0, 1, 2]
    """
    n = len(centers)
    if n == 0 or config.group_radius <= 0:
        return np.arange(n)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    bandwidth = np.array([config.bandwidth_mm] * 3 + [config.bandwidth_hu, config.bandwidth_si])
    pairs = cKDTree(np.asarray(centers, np.float64) / bandwidth).query_pairs(config.group_radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def cluster_statistics(
    X: np.ndarray,
    centers: np.ndarray | None,
    labels: np.ndarray,
    voxel_volume: float,
    *,
    bandwidth: np.ndarray | None = None,
    core_mm: float = 6.0,
) -> Clusters:
    """Size, intensity, shape and spread of every cluster.

    Parameters
    ----------
    X : ndarray of shape (n, 5)
        Voxel features (x, y, z, HU, shape index).
    centers : ndarray of shape (n_clusters, >= 3) or None
        Cluster positions (the mean-shift modes, 5 columns, for the mode
        statistics); None places each at the centroid of its voxels (for
        groups of modes).
    labels : ndarray of shape (n,)
        Cluster of each voxel (-1: none).
    voxel_volume : float
        mm^3 that one point stands for.
    bandwidth : ndarray of shape (5,), optional
        Mean-shift bandwidths; with it the optional statistics (mode, core,
        density, support; what the trained scorer reads) are filled in.
    core_mm : float, default=6.0
        Radius of the core around the candidate position.

    Returns
    -------
    clusters : Clusters

    Examples
    --------
    >>> X = np.array([[0, 0, 0, -100, 1.0], [1, 0, 0, -50, 0.8], [9, 9, 9, 0, 0.7]], np.float32)
    >>> c = cluster_statistics(X, X[[0, 2]], np.array([0, 0, 1]), voxel_volume=2.0)
    >>> c.volume_mm3.tolist(), c.mean_hu.tolist(), c.round_fraction.tolist()
    ([4.0, 2.0], [-75.0, 0.0], [0.5, 0.0])
    """
    if centers is not None:
        n = len(centers)
    else:
        n = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    ok = labels >= 0
    lab = labels[ok]
    pts = X[ok].astype(np.float64)
    count = np.bincount(lab, minlength=n).astype(np.float64)
    safe = np.maximum(count, 1)

    def mean(values):
        return np.bincount(lab, weights=values, minlength=n) / safe

    mean_xyz = np.column_stack([mean(pts[:, a]) for a in range(3)])
    d = pts[:, :3] - mean_xyz[lab]
    cov = np.zeros((n, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            cov[:, a, b] = cov[:, b, a] = mean(d[:, a] * d[:, b])
    eig = np.clip(np.linalg.eigvalsh(cov), 0, None)  # ascending
    elongation = np.sqrt((eig[:, 2] + 1e-2) / (eig[:, 0] + 1e-2))
    # A uniform ball of diameter D has per-axis variance D^2 / 20.
    extent = np.sqrt(20.0 * eig.mean(1))
    position = mean_xyz if centers is None else np.asarray(centers[:, :3], np.float64)
    clusters = Clusters(
        center=position,
        n_voxels=count,
        volume_mm3=count * voxel_volume,
        mean_hu=mean(pts[:, 3]),
        mean_si=mean(pts[:, 4]),
        round_fraction=mean((pts[:, 4] >= 0.875).astype(np.float64)),
        elongation=elongation,
        extent_mm=extent,
    )
    if bandwidth is None or n == 0:
        return clusters
    from scipy.spatial import cKDTree

    bandwidth = np.asarray(bandwidth, np.float64)
    if centers is not None and np.asarray(centers).shape[1] >= 5:
        modes = np.asarray(centers[:, :5], np.float64)
    else:
        modes = np.column_stack([position, clusters.mean_hu, clusters.mean_si])
    hu, si = pts[:, 3], pts[:, 4]
    clusters.mode_hu, clusters.mode_si = modes[:, 3].copy(), modes[:, 4].copy()
    clusters.hu_std = np.sqrt(np.maximum(mean(hu * hu) - clusters.mean_hu**2, 0.0))
    core = (np.linalg.norm(pts[:, :3] - position[lab], axis=1) < core_mm).astype(np.float64)
    clusters.core_fraction = mean(core)
    n_core = np.maximum(np.bincount(lab, weights=core, minlength=n), 1)
    clusters.core_si = np.bincount(lab, weights=core * si, minlength=n) / n_core
    clusters.core_round = np.bincount(lab, weights=core * (si >= 0.875), minlength=n) / n_core
    tree = cKDTree(np.asarray(X[:, :3], np.float64))
    for radius in (3, 6, 10):
        inside = tree.query_ball_point(position, float(radius), return_length=True)
        setattr(clusters, f"density_{radius}mm", inside * voxel_volume / (4.0 / 3.0 * np.pi * radius**3))
    window = cKDTree(np.asarray(X, np.float64) / bandwidth)
    clusters.support_mm3 = window.query_ball_point(modes / bandwidth, 1.0, return_length=True) * voxel_volume
    return clusters


def _sample_scale(volume: torch.Tensor, spacing_xyz: np.ndarray, sigma_mm: float, index: np.ndarray, slab: int = 48):
    """Smoothed value and scale-normalised Hessian eigenvalues at ``index`` (z, y, x rows).

    The volume is filtered in z-slabs with a halo of the kernel radius (the
    values do not depend on ``slab``), so memory stays at a few slabs even for
    a full-resolution scan.
    """
    from .shape_index import _derivatives

    n = len(index)
    value = np.zeros(n)
    eig = np.zeros((n, 3))
    nz = volume.shape[0]
    halo = max(1, int(math.ceil(3.0 * sigma_mm / spacing_xyz[2])))
    for z0 in range(0, nz, slab):
        rows = np.nonzero((index[:, 0] >= z0) & (index[:, 0] < z0 + slab))[0]
        if len(rows) == 0:
            continue
        lo, hi = max(0, z0 - halo), min(nz, z0 + slab + halo)
        d = _derivatives(volume[lo:hi], spacing_xyz, sigma_mm)
        device = d["f"].device
        at = [torch.as_tensor(index[rows, a] - (lo if a == 0 else 0), device=device) for a in range(3)]
        get = {k: v[at[0], at[1], at[2]].double().cpu().numpy() for k, v in d.items()}
        del d
        value[rows] = get["f"]
        hessian = np.stack(
            [
                np.stack([get["fxx"], get["fxy"], get["fxz"]], -1),
                np.stack([get["fxy"], get["fyy"], get["fyz"]], -1),
                np.stack([get["fxz"], get["fyz"], get["fzz"]], -1),
            ],
            -2,
        )
        eig[rows] = np.linalg.eigvalsh(hessian) * sigma_mm**2
    return value, eig


def context_features(work: Scan, lungs: np.ndarray, positions: np.ndarray, device: str = "cpu") -> dict:
    """Image features around candidate positions: wall distance, blobness, contrast.

    The cluster statistics describe a cluster's voxels of interest only; a
    5-8 mm nodule touching the chest wall or a vessel has few of them, with
    a shape index pulled towards the wall's or the vessel's.  These features
    read the image itself around the candidate instead.

    Parameters
    ----------
    work : Scan
        The working-grid scan (HU).
    lungs : ndarray of bool
        Lung mask on the working grid.
    positions : ndarray of shape (n, 3)
        Candidate positions, world mm (x, y, z).
    device : str, default="cpu"
        Where the filtering runs.

    Returns
    -------
    features : dict of ndarray
        ``wall_mm``, ``hessian_2mm``, ``hessian_4mm``, ``contrast_2mm``,
        ``contrast_4mm`` (see :class:`Clusters`).

    Examples
    --------
    >>> from examples.nodule_candidates.phantom import make_phantom
    >>> from examples.nodule_candidates.lung import segment_lungs
    >>> ph = make_phantom((96, 96, 48), seed=1, n_nodules=1, diameter_range=(10, 12))
    >>> lungs = segment_lungs(ph.scan.array, ph.scan.spacing)
    >>> f = context_features(ph.scan, lungs, ph.nodules[0].world[None])
    >>> bool((f["hessian_4mm"][0] < 0).all()), bool(f["contrast_4mm"][0] > 100)
    (True, True)
    """
    from scipy.ndimage import distance_transform_edt

    from .io import world_to_index_zyx
    from .shape_index import correlate1d, gaussian_derivative_kernels

    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    n = len(positions)
    out = {
        "wall_mm": np.zeros(n),
        "hessian_2mm": np.zeros((n, 3)),
        "hessian_4mm": np.zeros((n, 3)),
        "contrast_2mm": np.zeros(n),
        "contrast_4mm": np.zeros(n),
    }
    spacing = np.asarray(work.spacing, np.float64)
    margin = [int(math.ceil(3.0 * SURROUND_SIGMA_MM / s)) + 1 for s in spacing[::-1]]
    box = _bounding_box(lungs, margin)
    if n == 0 or box is None:
        return out
    shape = np.array([b.stop - b.start for b in box])
    offset = np.array([b.start for b in box])
    index = np.rint(world_to_index_zyx(positions, work.origin, spacing, work.direction)).astype(np.int64) - offset
    index = np.clip(index, 0, shape - 1)
    # Padding with "outside" makes the scan's own faces count as wall.
    inside = np.pad(lungs[box], 1)
    wall = distance_transform_edt(inside, sampling=spacing[::-1])[1:-1, 1:-1, 1:-1]
    out["wall_mm"] = wall[index[:, 0], index[:, 1], index[:, 2]].astype(np.float64)
    dev = resolve_device(device)
    volume = torch.as_tensor(np.ascontiguousarray(work.array[box], np.float32), device=dev)
    surround = volume
    for axis, s in zip(range(3), spacing[::-1]):
        surround = correlate1d(surround, gaussian_derivative_kernels(SURROUND_SIGMA_MM, float(s), device=dev)[0], axis)
    at = [torch.as_tensor(index[:, a], device=dev) for a in range(3)]
    background = surround[at[0], at[1], at[2]].double().cpu().numpy()
    del surround
    for sigma in HESSIAN_SCALES_MM:
        value, eig = _sample_scale(volume, spacing, sigma, index)
        out[f"hessian_{sigma:g}mm"] = eig
        out[f"contrast_{sigma:g}mm"] = value - background
    return out


def refine_positions(
    work: Scan,
    lungs: np.ndarray,
    positions: np.ndarray,
    *,
    sigma_mm: float = 1.5,
    max_shift_mm: float = 3.0,
    outside_hu: float = -850.0,
) -> np.ndarray:
    """Move candidate positions uphill to the nearest bright peak of the lung image.

    A 5-D mode is a compromise between space, intensity and shape: on a
    small nodule touching the chest wall or a vessel it sits in the
    junction, up to 3-4 mm from the nodule's centre, which for a 5-7 mm
    nodule is outside its radius (a miss by the LUNA16 rule), and the image
    features read there describe the junction rather than the nodule.  Here
    each position climbs the lung image, with everything outside the lung
    mask set to ``outside_hu`` (so the chest wall does not pull it out of the
    lungs) and smoothed at ``sigma_mm``, one voxel at a time to the best of
    its 26 neighbours, staying in the lungs and within ``max_shift_mm`` of
    where it started; the peak is then located to sub-voxel precision by a
    parabola through it and its two neighbours along each axis (slices are
    2-3 mm apart).

    Parameters
    ----------
    work : Scan
        The working-grid scan (HU).
    lungs : ndarray of bool
        Lung mask on the working grid.
    positions : ndarray of shape (n, 3)
        World positions (mm, x, y, z).
    sigma_mm : float, default=1.5
        Smoothing of the image that is climbed (about a 5 mm nodule's radius
        over 1.7).
    max_shift_mm : float, default=3.0
        How far a position may move; 0 returns ``positions`` unchanged.
    outside_hu : float, default=-850
        Value given to voxels outside the lungs before smoothing.

    Returns
    -------
    refined : ndarray of shape (n, 3)
        World positions (mm).

    Examples
    --------
    A 7 mm ball at (20, 20, 20) mm on 1.25 x 1.25 x 2.5 mm voxels, and a
    position 2.5 mm off its centre:

    >>> z, y, x = np.mgrid[0:16, 0:32, 0:32] * np.array([2.5, 1.25, 1.25])[:, None, None, None]
    >>> ball = np.where((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 3.5**2, 0.0, -850.0)
    >>> scan = Scan(ball.astype(np.float32), [0, 0, 0], [1.25, 1.25, 2.5], seriesuid="ball")
    >>> moved = refine_positions(scan, np.ones(ball.shape, bool), np.array([[22.5, 20.0, 20.0]]))
    >>> bool(np.linalg.norm(moved[0] - [20, 20, 20]) < 0.5)
    True
    """
    from scipy.ndimage import gaussian_filter

    from .io import world_to_index_zyx

    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    if max_shift_mm <= 0 or len(positions) == 0:
        return positions.copy()
    spacing_zyx = np.asarray(work.spacing, np.float64)[::-1]
    image = np.where(lungs, np.asarray(work.array, np.float32), np.float32(outside_hu))
    image = gaussian_filter(image, sigma=sigma_mm / spacing_zyx, mode="nearest", truncate=3.0)
    image = np.where(lungs, image, -np.inf)
    shape = np.array(image.shape)
    start = np.clip(np.rint(world_to_index_zyx(positions, work.origin, work.spacing, work.direction)), 0, shape - 1)
    start = start.astype(np.int64)
    steps = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], np.int64)
    here = start.copy()
    for _ in range(int(math.ceil(max_shift_mm / spacing_zyx.min())) + 1):
        nxt = here[:, None, :] + steps[None]
        inside = ((nxt >= 0) & (nxt < shape)).all(axis=2)
        nxt = np.clip(nxt, 0, shape - 1)
        value = image[nxt[..., 0], nxt[..., 1], nxt[..., 2]]
        reach = np.sqrt((((nxt - start[:, None, :]) * spacing_zyx) ** 2).sum(axis=2))
        value = np.where(inside & (reach <= max_shift_mm), value, -np.inf)
        best = np.argmax(value, axis=1)
        # Stay put unless a neighbour is strictly brighter (ties and plateaus
        # would otherwise wander).
        centre = value[:, len(steps) // 2]
        move = value[np.arange(len(here)), best] > np.where(np.isfinite(centre), centre, -np.inf)
        if not move.any():
            break
        here[move] = nxt[move, best[move]]
    refined = here.astype(np.float64)
    for axis in range(3):
        lo, hi = here.copy(), here.copy()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        ok = (lo[:, axis] >= 0) & (hi[:, axis] < shape[axis])
        lo, hi = np.clip(lo, 0, shape - 1), np.clip(hi, 0, shape - 1)
        v0 = image[here[:, 0], here[:, 1], here[:, 2]]
        vm = image[lo[:, 0], lo[:, 1], lo[:, 2]]
        vp = image[hi[:, 0], hi[:, 1], hi[:, 2]]
        curvature = vm - 2.0 * v0 + vp
        with np.errstate(invalid="ignore", divide="ignore"):
            offset = 0.5 * (vm - vp) / curvature
        ok &= np.isfinite(offset) & (curvature < 0)
        refined[:, axis] += np.where(ok, np.clip(offset, -0.5, 0.5), 0.0)
    return index_zyx_to_world(refined, work.origin, work.spacing, work.direction)


def score_clusters(clusters: Clusters) -> np.ndarray:
    """A nodule-likeness score in (0, 1) from size, roundness and intensity.

    Hand-set, not trained: a logistic function of

    * the equivalent diameter of the cluster volume (nodules of interest are
      >= 5 mm; vessel tips and branch points make small clusters),
    * the fraction of cap-shaped voxels (shape index >= 0.875) and the mean
      shape index (vessels are ridges, 0.75),
    * elongation (vessels are long along one axis).

    Examples
    --------
    >>> c = Clusters(center=np.zeros((2, 3)), n_voxels=np.array([500.0, 20.0]),
    ...              volume_mm3=np.array([500.0, 20.0]), mean_hu=np.array([-100.0, -300.0]),
    ...              mean_si=np.array([0.95, 0.75]), round_fraction=np.array([0.8, 0.1]),
    ...              elongation=np.array([1.2, 4.0]), extent_mm=np.array([10.0, 6.0]))
    >>> s = score_clusters(c)
    >>> bool(s[0] > s[1]), bool(((s > 0) & (s < 1)).all())
    (True, True)
    """
    diameter = np.cbrt(6.0 * np.maximum(clusters.volume_mm3, 1e-3) / np.pi)
    logit = (
        2.0 * np.log(diameter / 5.0)
        + 4.0 * (clusters.round_fraction - 0.4)
        + 4.0 * (clusters.mean_si - 0.8)
        - 1.0 * np.log(clusters.elongation)
    )
    return 1.0 / (1.0 + np.exp(-logit))


def find_clusters(scan: Scan, config: DetectorConfig | None = None, timings: dict | None = None):
    """Every mean-shift cluster of a scan with its statistics, unscored and unsorted.

    Parameters
    ----------
    scan : Scan
        CT scan in HU.
    config : DetectorConfig, optional
        Settings; the defaults when None.
    timings : dict, optional
        Filled with the seconds per stage up to "context".

    Returns
    -------
    clusters : Clusters
        Clusters with at least ``config.min_cluster_voxels`` voxels.
    n_points : int
        Voxels that went into mean shift.
    n_clusters : int
        Clusters before the size filter.
    """
    clusters, n_points, n_clusters, _ = _clusters_and_work(scan, config, timings)
    return clusters, n_points, n_clusters


def _clusters_and_work(scan: Scan, config: DetectorConfig | None, timings: dict | None):
    """:func:`find_clusters`, and the working-grid scan (the second-stage scorer reads it)."""
    config = config or DetectorConfig()
    timings = {} if timings is None else timings
    X, voxel_volume, work, lungs = voxel_features(scan, config, timings)
    t0 = time.perf_counter()
    centers, labels = mean_shift_clusters(X, config)
    timings["mean_shift"] = time.perf_counter() - t0
    bandwidth = np.array([config.bandwidth_mm] * 3 + [config.bandwidth_hu, config.bandwidth_si])
    if config.group_radius > 0:
        group = group_modes(centers, config)
        labels = np.where(labels >= 0, group[np.maximum(labels, 0)], -1)
        centers = None  # a group sits at the centroid of its voxels
    clusters = cluster_statistics(X, centers, labels, voxel_volume, bandwidth=bandwidth, core_mm=config.core_mm)
    n_clusters = len(clusters)
    clusters = clusters.take(clusters.n_voxels >= config.min_cluster_voxels)
    t1 = time.perf_counter()
    if config.refine_mm > 0:
        clusters.center = refine_positions(work, lungs, clusters.center, max_shift_mm=config.refine_mm)
    for name, values in context_features(work, lungs, clusters.center, config.device).items():
        setattr(clusters, name, values)
    timings["context"] = time.perf_counter() - t1
    return clusters, len(X), n_clusters, work


def suppress_near(
    center: np.ndarray,
    scores: np.ndarray,
    radius_mm: float,
    *,
    radius_per: np.ndarray | None = None,
) -> np.ndarray:
    """Indices best first, without those within the suppression radius of a better kept one.

    Parameters
    ----------
    center : ndarray of shape (n, 3)
        Candidate positions (mm).
    scores : ndarray of shape (n,)
        Higher is better.
    radius_mm : float
        Suppression radius; 0 keeps all.
    radius_per : ndarray of shape (n,), optional
        A radius per candidate, used instead of ``radius_mm`` when that
        candidate is kept (see :func:`suppression_radius`).

    Returns
    -------
    order : ndarray of int

    Examples
    --------
    >>> c = np.array([[0.0, 0, 0], [3.0, 0, 0], [10.0, 0, 0]])
    >>> suppress_near(c, np.array([0.5, 0.9, 0.1]), 5.0).tolist()
    [1, 2]
    >>> suppress_near(c, np.array([0.5, 0.9, 0.1]), 0.0).tolist()
    [1, 0, 2]
    >>> suppress_near(c, np.array([0.5, 0.9, 0.1]), 5.0, radius_per=np.array([5.0, 8.0, 5.0])).tolist()
    [1]
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    if radius_mm <= 0 or len(order) == 0:
        return order
    from scipy.spatial import cKDTree

    radius = np.full(len(order), float(radius_mm)) if radius_per is None else np.asarray(radius_per, np.float64)
    tree = cKDTree(np.asarray(center, np.float64))
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[tree.query_ball_point(center[i], radius[i])] = True
    return np.asarray(keep, np.int64)


def suppression_radius(clusters: Clusters, config: DetectorConfig) -> np.ndarray | None:
    """Per-candidate suppression radius: ``nms_large_mm`` inside large objects, else ``nms_mm``.

    A candidate whose 10 mm ball is more than ``nms_large_density`` filled
    with voxels of interest sits inside something large (a big nodule, which
    mean shift splits into tens of modes, or a vessel junction); 5 mm around
    it would leave its object's other modes to fill the list.

    Examples
    --------
    >>> c = Clusters(center=np.zeros((2, 3)), **{k: np.zeros(2) for k in ("n_voxels", "volume_mm3",
    ...     "mean_hu", "mean_si", "round_fraction", "elongation", "extent_mm")}, density_10mm=np.array([0.9, 0.1]))
    >>> suppression_radius(c, DetectorConfig(nms_mm=5.0, nms_large_mm=15.0, nms_large_density=0.5)).tolist()
    [15.0, 5.0]
    """
    if config.nms_large_mm <= config.nms_mm or clusters.density_10mm is None:
        return None
    large = np.asarray(clusters.density_10mm) > config.nms_large_density
    return np.where(large, config.nms_large_mm, config.nms_mm)


def detect_candidates(
    scan: Scan,
    config: DetectorConfig | None = None,
    *,
    scorer: Callable[[Clusters], np.ndarray] | None = None,
) -> Detection:
    """Nodule candidates of one scan, best first.

    Parameters
    ----------
    scan : Scan
        CT scan in HU (see :func:`~examples.nodule_candidates.io.read_scan`).
    config : DetectorConfig, optional
        Settings; the defaults when None.
    scorer : callable, optional
        Maps :class:`Clusters` to scores (higher is more nodule-like); by
        default the trained models shipped with the example
        (:func:`~examples.nodule_candidates.classifier.default_scorer`).  A
        scorer with a true ``uses_image`` attribute is called as
        ``scorer(clusters, work=<working-grid scan>, timings=<dict>)``
        (:class:`~examples.nodule_candidates.classifier.TwoStageScorer`).

    Returns
    -------
    detection : Detection
        Candidates (LUNA16 rows, ``value`` = score), their cluster statistics
        and the time spent per stage.

    Examples
    --------
    >>> from examples.nodule_candidates.phantom import make_phantom
    >>> ph = make_phantom((192, 192, 48), spacing_xyz=(1.7, 1.7, 2.8), seed=2, n_nodules=1)
    >>> det = detect_candidates(ph.scan, DetectorConfig(device="cpu"))  # doctest: +SKIP
    >>> det.candidates[0].seriesuid == ph.scan.seriesuid  # doctest: +SKIP
    True
    """
    config = config or DetectorConfig()
    if scorer is None:
        from .classifier import default_scorer

        scorer = default_scorer()
    timings: dict = {}
    clusters, n_points, n_clusters, work = _clusters_and_work(scan, config, timings)
    t1 = time.perf_counter()
    if getattr(scorer, "uses_image", False):
        # The two-stage scorer re-ranks the best clusters on image patches;
        # it books the patch features under "patches".
        scores = np.asarray(scorer(clusters, work=work, timings=timings), np.float64)
    else:
        scores = np.asarray(scorer(clusters), np.float64)
    radius = suppression_radius(clusters, config)
    order = suppress_near(clusters.center, scores, config.nms_mm, radius_per=radius)[: config.max_candidates]
    clusters = clusters.take(order)
    candidates = [
        Finding(scan.seriesuid, *map(float, clusters.center[i]), float(scores[k]))
        for i, k in enumerate(order)
    ]
    timings["scoring"] = time.perf_counter() - t1 - timings.get("patches", 0.0)
    return Detection(candidates, clusters, timings, n_points=n_points, n_clusters=n_clusters)
