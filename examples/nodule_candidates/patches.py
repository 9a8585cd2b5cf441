"""Image-patch features of candidates for the second-stage (re-ranking) scorer.

The first-stage scorer (:mod:`~examples.nodule_candidates.classifier`) sees
a cluster's voxels of interest and a few filter responses at its mode.  The
nodules it loses are small and faint (5-10 mm ground glass) or touch a
vessel or the chest wall, and rank 100th-1500th among vessel pieces and
noise.  These features look at the image around each of the few hundred
best candidates instead, the way a radiologist scrolls through a nodule:

* **Radial profile**: the image (lightly smoothed, ``PROFILE_SIGMA_MM``) on
  spherical shells of radius :data:`RADII_MM` around the candidate, sampled
  along :data:`N_DIRECTIONS` directions; per shell the mean minus the
  background (the median of the outermost shell), so a blob shows a profile
  that falls to the background at its radius and a vessel or the wall one
  that does not.
* **Shell anisotropy**: per shell, the fraction of directions brighter than
  half-way between the centre and the background.  A nodule has none beyond
  its radius, a vessel a few (two lobes, along its axis), the chest wall
  about half.  ``through_*`` is the mean of ``min(excess(u), excess(-u))``
  over antipodal pairs: high where a structure runs through the candidate
  (a vessel), low where it ends there (a nodule on a vessel's side).
* **Thresholded component**: the connected component of the voxels above the
  same half-way threshold that holds the candidate, inside a
  ``COMPONENT_RADIUS_MM`` cube: its equivalent diameter, roundness
  (smallest over largest spread), how much of it lies on the cube's faces
  (a vessel or the wall leaves the cube, a nodule does not) and how much of
  its bounding ball it fills.
* **Local HU statistics** of the unsmoothed image within 3 mm (mean and
  spread: ground glass is faint but textured; noise blobs are neither).

Everything is computed on the working grid of the detector (mm
coordinates, anisotropic voxels allowed) with numpy/scipy only, and is
deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from .io import Scan, world_to_index_zyx

#: Shell radii (mm) of the radial profile; the last one is the background.
RADII_MM = (0.0, 1.5, 3.0, 4.5, 6.0, 8.0, 10.0, 13.0)
#: Directions per shell (half of them the antipodes of the other half).
N_DIRECTIONS = 64
#: Gaussian smoothing (mm) of the image the shells are sampled from.
PROFILE_SIGMA_MM = 1.0
#: Half side (mm) of the cube in which the thresholded component is traced.
COMPONENT_RADIUS_MM = 12.0

_SHELLS = (3.0, 4.5, 6.0, 8.0, 10.0)

PATCH_FEATURES = (
    *(f"profile_{r:g}mm" for r in RADII_MM[:-1]),
    "centre_hu",
    "background_hu",
    "background_q90",
    "half_radius_mm",
    *(f"bright_{r:g}mm" for r in _SHELLS),
    *(f"through_{r:g}mm" for r in _SHELLS),
    "shell_std_6mm",
    "component_log_diameter",
    "component_roundness",
    "component_on_faces",
    "component_fill",
    "raw_mean_3mm",
    "raw_std_3mm",
)


def sphere_directions(n: int = N_DIRECTIONS) -> np.ndarray:
    """``n`` unit vectors (x, y, z) spread over the sphere, in antipodal pairs.

    The first ``n // 2`` are a Fibonacci spiral over the upper hemisphere,
    the rest their negatives, so ``u[k + n // 2] == -u[k]``.

    Examples
    --------
    >>> u = sphere_directions(8)
    >>> np.allclose(np.linalg.norm(u, axis=1), 1), np.allclose(u[:4], -u[4:])
    (True, True)
    """
    half = n // 2
    k = np.arange(half) + 0.5
    z = 1.0 - k / half  # upper hemisphere, z in (0, 1)
    r = np.sqrt(1.0 - z**2)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    up = np.column_stack([r * np.cos(phi), r * np.sin(phi), z])
    return np.concatenate([up, -up])


def _smooth(volume: np.ndarray, spacing_xyz: np.ndarray, sigma_mm: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(volume, sigma=[sigma_mm / s for s in spacing_xyz[::-1]], mode="nearest", truncate=3.0)


def patch_features(work: Scan, positions: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`PATCH_FEATURES` of candidates at ``positions`` (world mm, x, y, z).

    Parameters
    ----------
    work : Scan
        The working-grid scan (HU), as the detector's
        :func:`~examples.nodule_candidates.detect.working_scan` makes it.
    positions : ndarray of shape (n, 3)
        Candidate positions, world mm.

    Returns
    -------
    features : dict of str to ndarray of shape (n,)
        One entry per name in :data:`PATCH_FEATURES`.

    Examples
    --------
    >>> from examples.nodule_candidates.phantom import make_phantom
    >>> ph = make_phantom((96, 96, 48), seed=1, n_nodules=1, diameter_range=(10, 12))  # a 12 mm one
    >>> f = patch_features(ph.scan, ph.nodules[0].world[None])
    >>> bool(f["profile_0mm"][0] > 300), bool(4.0 < f["half_radius_mm"][0] < 8.0)
    (True, True)
    """
    from scipy.ndimage import label, map_coordinates

    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    n = len(positions)
    out = {name: np.zeros(n) for name in PATCH_FEATURES}
    if n == 0:
        return out
    spacing = np.asarray(work.spacing, np.float64)
    raw = np.asarray(work.array, np.float32)
    smooth = _smooth(raw, spacing, PROFILE_SIGMA_MM)
    centre_zyx = world_to_index_zyx(positions, work.origin, spacing, work.direction)
    directions = sphere_directions()
    half = len(directions) // 2
    # Offsets in voxels (z, y, x) of direction u at 1 mm: the inverse of the
    # direction cosines turns world mm into index steps.
    step_xyz = np.linalg.solve(work.direction, directions.T).T / spacing
    step_zyx = step_xyz[:, ::-1]

    def sample(volume, points_zyx, order=1):
        return map_coordinates(volume, points_zyx.reshape(-1, 3).T, order=order, mode="nearest").reshape(
            points_zyx.shape[:-1]
        )

    radii = np.asarray(RADII_MM)
    # shells[i, r, d]: smoothed HU of candidate i at radius r along direction d
    points = centre_zyx[:, None, None, :] + radii[None, :, None, None] * step_zyx[None, None, :, :]
    shells = sample(smooth, points)
    background = np.median(shells[:, -1], axis=1)
    centre = shells[:, 0, 0]
    out["centre_hu"] = centre
    out["background_hu"] = background
    out["background_q90"] = np.quantile(shells[:, -1], 0.9, axis=1) - background
    mean = shells.mean(axis=2)
    for k, r in enumerate(RADII_MM[:-1]):
        out[f"profile_{r:g}mm"] = mean[:, k] - background
    # Half-way threshold between the centre and the surroundings, with the
    # contrast taken as at least 100 HU (threshold >= 50 HU above the
    # background), so that noise in plain lung is not traced as a structure.
    contrast = np.maximum(centre - background, 100.0)
    threshold = background + 0.5 * contrast
    relative = (mean - background[:, None]) / contrast[:, None]
    below = relative < 0.5
    below[:, -1] = True
    first = np.argmax(below, axis=1)
    lo = np.maximum(first - 1, 0)
    r0, r1 = radii[lo], radii[first]
    v0 = relative[np.arange(n), lo]
    v1 = relative[np.arange(n), first]
    frac = np.clip((v0 - 0.5) / np.maximum(v0 - v1, 1e-6), 0.0, 1.0)
    out["half_radius_mm"] = np.where(first == 0, 0.0, r0 + frac * (r1 - r0))
    excess = (shells - background[:, None, None]) / contrast[:, None, None]
    for r in _SHELLS:
        k = int(np.argmin(np.abs(radii - r)))
        out[f"bright_{r:g}mm"] = (excess[:, k] > 0.5).mean(axis=1)
        out[f"through_{r:g}mm"] = np.minimum(excess[:, k, :half], excess[:, k, half:]).mean(axis=1)
    k6 = int(np.argmin(np.abs(radii - 6.0)))
    out["shell_std_6mm"] = shells[:, k6].std(axis=1) / contrast
    # Raw HU within 3 mm: the centre and the 1.5 and 3 mm shells.
    inner = centre_zyx[:, None, None, :] + radii[None, :3, None, None] * step_zyx[None, None, :, :]
    raw_inner = sample(raw, inner).reshape(n, -1)
    out["raw_mean_3mm"] = raw_inner.mean(axis=1)
    out["raw_std_3mm"] = raw_inner.std(axis=1)
    # Thresholded component in a cube around each candidate.
    reach = np.ceil(COMPONENT_RADIUS_MM / spacing[::-1]).astype(int)
    shape = np.array(smooth.shape)
    voxel_mm = spacing[::-1]
    voxel_volume = float(np.prod(spacing))
    nearest = np.clip(np.rint(centre_zyx).astype(int), 0, shape - 1)
    for i in range(n):
        lo_i = np.maximum(nearest[i] - reach, 0)
        hi_i = np.minimum(nearest[i] + reach + 1, shape)
        cube = smooth[lo_i[0] : hi_i[0], lo_i[1] : hi_i[1], lo_i[2] : hi_i[2]] > threshold[i]
        seed = tuple(nearest[i] - lo_i)
        if not cube[seed]:
            # The mode can sit a voxel off the bright part: take the brightest
            # voxel of its 3 x 3 x 3 neighbourhood as the seed.
            a = [max(0, s - 1) for s in seed]
            nb = smooth[lo_i[0] + a[0] : lo_i[0] + seed[0] + 2, lo_i[1] + a[1] : lo_i[1] + seed[1] + 2,
                        lo_i[2] + a[2] : lo_i[2] + seed[2] + 2]  # fmt: skip
            j = np.unravel_index(int(np.argmax(nb)), nb.shape)
            seed = tuple(a[d] + j[d] for d in range(3))
            if not cube[seed]:
                continue
        labels, _ = label(cube)
        comp = labels == labels[seed]
        idx = np.argwhere(comp)
        count = len(idx)
        mm = idx * voxel_mm
        out["component_log_diameter"][i] = math.log(np.cbrt(6.0 * count * voxel_volume / math.pi))
        spread = np.linalg.eigvalsh(np.cov(mm.T)) if count > 3 else np.ones(3)
        out["component_roundness"][i] = math.sqrt(max(spread[0], 1e-6) / max(spread[-1], 1e-6))
        faces = (
            (idx == 0).any(axis=1)
            | (idx == np.array(cube.shape) - 1).any(axis=1)
        )
        out["component_on_faces"][i] = faces.sum() / count
        radius = np.sqrt(((mm - mm.mean(axis=0)) ** 2).sum(axis=1).max()) + 0.5 * voxel_mm.min()
        out["component_fill"][i] = count * voxel_volume / (4.0 / 3.0 * math.pi * radius**3)
    return out


def patch_matrix(features: dict[str, np.ndarray]) -> np.ndarray:
    """Columns of :data:`PATCH_FEATURES` as a float64 matrix (NaN and inf set to 0)."""
    F = np.column_stack([np.asarray(features[name], np.float64) for name in PATCH_FEATURES])
    return np.nan_to_num(F, nan=0.0, posinf=0.0, neginf=0.0)
