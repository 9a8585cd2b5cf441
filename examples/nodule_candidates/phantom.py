"""Synthetic chest CT scans with known nodules, written in the LUNA16 format.

Real LUNA16 scans cannot be downloaded here, so this module draws chest CTs
with the ingredients that make nodule candidate detection hard:

* a body (soft tissue about +40 HU under a fat layer about -90 HU), spine and
  ribs (bone), air outside (-1000 HU) and a trachea with main bronchi;
* two lungs (parenchyma about -850 HU, denser towards the back, with slow
  random variations) with a domed diaphragm and a tapering apex;
* two branching vessel trees per lung (+40 HU blood) grown from the hilum into
  the lung, with radii shrinking by Murray's law towards the periphery: bright
  tubes with bright branch points and tips, the main source of false
  candidates;
* solid (0 to +80 HU), part-solid (ground-glass shell with a solid core) and
  ground-glass (about -650 HU) nodules of 3-30 mm (log-normal sizes around the
  LIDC median of 8.6 mm), isolated, touching a vessel (juxtavascular) or the
  chest wall (juxtapleural);
* calcified granulomas (+300 to +900 HU) as distractors, and micronodules
  under 3 mm that LUNA16 lists as "excluded" findings;
* a Gaussian point-spread function (in-plane, plus the slice profile) and
  spatially correlated noise of 20-60 HU, on an anisotropic grid.

The anatomy is drawn in millimetres from analytic shapes, so a seed gives the
same patient at any grid size.  ``write_phantom_set`` saves ``.mhd/.raw``
scans plus ``annotations.csv``, ``annotations_excluded.csv``, a side file
``nodule_types.csv`` (type and attachment of every nodule) and
``seriesuids.csv``, so the real-data path and the phantom path share all code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from .io import Finding, Scan, write_annotations, write_scan, write_series_list

NODULE_TYPES = ("solid", "part-solid", "ground-glass")
ATTACHMENTS = ("isolated", "juxtavascular", "juxtapleural")
AIR_HU = -1000.0
FAT_HU = -90.0
SOFT_TISSUE_HU = 40.0
BLOOD_HU = 40.0
BONE_HU = 600.0
PARENCHYMA_HU = -850.0


@dataclass
class PhantomNodule:
    """A nodule (or distractor) drawn in a phantom.

    Attributes
    ----------
    world : ndarray of shape (3,)
        Center in world mm (x, y, z).
    diameter_mm : float
        Volume-equivalent diameter.
    kind : str
        "solid", "part-solid", "ground-glass", "calcified" or "micronodule".
    attachment : str
        "isolated", "juxtavascular" or "juxtapleural".
    hu : float
        Intensity of the (solid part of the) lesion.
    """

    world: np.ndarray
    diameter_mm: float
    kind: str
    attachment: str
    hu: float


@dataclass
class Phantom:
    """A synthetic scan and what was drawn in it.

    Attributes
    ----------
    scan : Scan
        The CT volume (int16 HU) and its geometry.
    nodules : list of PhantomNodule
        Annotated nodules (3-30 mm), the truth for ``annotations.csv``.
    excluded : list of PhantomNodule
        Micronodules under 3 mm (LUNA16's excluded findings).
    distractors : list of PhantomNodule
        Calcified granulomas: bright and round, but not annotated.
    noise_hu : float
        Standard deviation of the added noise.
    """

    scan: Scan
    nodules: list[PhantomNodule]
    excluded: list[PhantomNodule] = field(default_factory=list)
    distractors: list[PhantomNodule] = field(default_factory=list)
    noise_hu: float = 0.0


# ----------------------------------------------------------------- anatomy
@dataclass
class _Anatomy:
    """Analytic chest in local mm (origin at the volume center, x right, y back, z up)."""

    fov: np.ndarray  # mm, x y z
    body_a: float
    body_b: float
    fat: float
    lung_cx: float
    lung_cy: float
    lung_a: float
    lung_b: float
    lung_z0: float  # diaphragm base
    lung_z1: float  # apex
    dome: float
    spine_y: float
    spine_r: float
    rib_z: np.ndarray
    waves: np.ndarray  # (n, 5): kx ky kz phase amplitude

    @classmethod
    def draw(cls, fov: np.ndarray, rng: np.random.Generator) -> "_Anatomy":
        fx, fz = fov[0], fov[2]
        body_a = 0.44 * fx * rng.uniform(0.95, 1.02)
        body_b = 0.31 * fx * rng.uniform(0.92, 1.05)
        fat = 0.035 * fx * rng.uniform(0.6, 1.4)
        lung_a = 0.155 * fx * rng.uniform(0.95, 1.05)
        lung_b = 0.235 * fx * rng.uniform(0.95, 1.03)
        height = min(0.86 * fz, 270.0) * rng.uniform(0.93, 1.0)
        lung_z0 = -0.5 * height + rng.uniform(-0.03, 0.03) * fz
        # Keep a chest wall (muscle, ribs) of ~3% of the width between the
        # lungs and the fat layer: a lung that reached the skin would open
        # into the air outside the patient.
        wall = 0.03 * fx
        lung_cx, lung_cy = 0.215 * fx, -0.01 * fx
        lung_a = min(lung_a, body_a - fat - wall - lung_cx)
        lung_b = min(lung_b, body_b - fat - wall - abs(lung_cy))
        # The two limits above only keep the lung's extreme x and y inside
        # the wall; the body is an ellipse, so the lung's back and front
        # corners still cut into the fat, and in thin patients through the
        # skin: the lungs then joined the air outside and no lung mask was
        # found.  Shrink the lung (the least that does it) until its whole
        # outline is inside the fat layer.
        shrink = _inside_scale(lung_cx, lung_cy, lung_a, lung_b, body_a - fat, body_b - fat)
        lung_a, lung_b = lung_a * shrink, lung_b * shrink
        n_waves = 8
        wavelength = rng.uniform(25.0, 70.0, n_waves)
        direction = rng.normal(size=(n_waves, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        k = direction * (2 * np.pi / wavelength)[:, None]
        waves = np.column_stack([k, rng.uniform(0, 2 * np.pi, n_waves), rng.uniform(3, 8, n_waves)])
        return cls(
            fov=fov,
            body_a=body_a,
            body_b=body_b,
            fat=fat,
            lung_cx=lung_cx,
            lung_cy=lung_cy,
            lung_a=lung_a,
            lung_b=lung_b,
            lung_z0=lung_z0,
            lung_z1=lung_z0 + height,
            dome=0.22 * height,
            spine_y=body_b - fat - 0.07 * fx,
            spine_r=0.045 * fx,
            rib_z=np.arange(lung_z0 + rng.uniform(0, 20), lung_z0 + height, 24.0),
            waves=waves,
        )

    def lung_level(self, X, Y, z: float) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance-like levels (negative inside) of the right and left lung at height z."""
        levels = []
        height = self.lung_z1 - self.lung_z0
        for side in (-1.0, 1.0):
            # Apex: the cross-section shrinks over the top 35% of the lung.
            top = self.lung_z0 + 0.65 * height
            scale = 1.0
            if z > top:
                scale = math.sqrt(max(0.0, 1.0 - ((z - top) / (self.lung_z1 - top)) ** 2))
            scale = max(scale, 1e-3)
            u = (X - side * self.lung_cx) / (self.lung_a * scale)
            v = (Y - self.lung_cy) / (self.lung_b * scale)
            rho = np.sqrt(u * u + v * v)
            radial = (rho - 1.0) * min(self.lung_a, self.lung_b) * scale
            # Diaphragm: a dome rising under the lung's center.
            floor = self.lung_z0 + self.dome * np.clip(1.0 - rho * rho, 0.0, 1.0)
            below = floor - z
            levels.append(np.maximum(radial, below))
        return levels[0], levels[1]

    def parenchyma(self, X, Y, z: float) -> np.ndarray:
        """Parenchyma HU: -850, denser at the back (gravity), with slow random waves."""
        value = PARENCHYMA_HU - 25.0 + 50.0 * np.clip((Y - self.lung_cy) / self.lung_b * 0.5 + 0.5, 0, 1)
        for kx, ky, kz, phase, amp in self.waves:
            value = value + amp * np.cos(kx * X + ky * Y + kz * z + phase)
        return value


def _inside_scale(cx: float, cy: float, a: float, b: float, outer_a: float, outer_b: float) -> float:
    """Largest ``s <= 1`` such that the ellipse ``(cx, cy, s a, s b)`` lies inside ``(0, 0, outer_a, outer_b)``.

    Examples
    --------
    >>> round(_inside_scale(0.0, 0.0, 2.0, 1.0, 1.0, 1.0), 3)
    0.5
    >>> _inside_scale(0.0, 0.0, 1.0, 1.0, 2.0, 2.0)
    1.0
    """
    t = np.linspace(0.0, 2.0 * np.pi, 720, endpoint=False)

    def reach(s: float) -> float:
        x, y = cx + s * a * np.cos(t), cy + s * b * np.sin(t)
        return float(np.max((x / outer_a) ** 2 + (y / outer_b) ** 2))

    if reach(1.0) <= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection: reach() grows with s while the center is inside
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if reach(mid) <= 1.0 else (lo, mid)
    return lo


def _soft(level: np.ndarray, width: float) -> np.ndarray:
    """Occupancy from a level (mm, negative inside), anti-aliased over ``width`` mm."""
    return np.clip(0.5 - level / width, 0.0, 1.0)


def _ellipse_level(X, Y, cx, cy, a, b) -> np.ndarray:
    u, v = (X - cx) / a, (Y - cy) / b
    return (np.sqrt(u * u + v * v) - 1.0) * min(a, b)


class _Grid:
    """Voxel centers in local mm along each axis, and box look-ups."""

    def __init__(self, shape_xyz, spacing_xyz):
        self.shape = np.asarray(shape_xyz, int)
        self.spacing = np.asarray(spacing_xyz, float)
        self.fov = self.shape * self.spacing
        self.axes = [
            (np.arange(n) + 0.5) * s - f / 2 for n, s, f in zip(self.shape, self.spacing, self.fov)
        ]

    def box(self, lo, hi):
        """Index slices (z, y, x order) of the voxels whose centers lie in [lo, hi] (mm, x/y/z)."""
        slices = []
        for axis in (2, 1, 0):
            start = int(np.floor((lo[axis] + self.fov[axis] / 2) / self.spacing[axis] - 0.5))
            stop = int(np.ceil((hi[axis] + self.fov[axis] / 2) / self.spacing[axis] - 0.5)) + 1
            start, stop = max(0, start), min(int(self.shape[axis]), stop)
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)

    def coords(self, box):
        """Broadcastable local mm coordinates (x, y, z) of a box."""
        z = self.axes[2][box[0]][:, None, None]
        y = self.axes[1][box[1]][None, :, None]
        x = self.axes[0][box[2]][None, None, :]
        return x, y, z


def _paint(volume, box, alpha, value, mode: str) -> None:
    region = volume[box]
    blended = region + (np.float32(value) - region) * alpha
    if mode == "max":
        np.maximum(region, blended, out=region)
    else:
        region[...] = blended


def _capsule(grid, volume, p0, p1, radius, value, *, clip=None, mode="over") -> None:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    pad = radius + 2 * grid.spacing.max()
    box = grid.box(np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad)
    if box is None:
        return
    x, y, z = grid.coords(box)
    d = p1 - p0
    length2 = max(float(d @ d), 1e-12)
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / length2, 0, 1)
    dist = np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)
    alpha = _soft(dist - radius, grid.spacing.min()).astype(np.float32)
    if clip is not None:
        alpha *= clip[box]
    _paint(volume, box, alpha, value, mode)


def _ellipsoid(grid, volume, center, axes, rotation, value, *, mode="over") -> None:
    center = np.asarray(center, float)
    pad = max(axes) + 2 * grid.spacing.max()
    box = grid.box(center - pad, center + pad)
    if box is None:
        return
    x, y, z = grid.coords(box)
    rel = [x - center[0], y - center[1], z - center[2]]
    # Coordinates along the ellipsoid's own axes (columns of rotation).
    q2 = 0.0
    for k in range(3):
        along = rel[0] * rotation[0, k] + rel[1] * rotation[1, k] + rel[2] * rotation[2, k]
        q2 = q2 + (along / axes[k]) ** 2
    level = (np.sqrt(q2) - 1.0) * float(np.mean(axes))
    alpha = _soft(level, grid.spacing.min()).astype(np.float32)
    _paint(volume, box, alpha, value, mode)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------- vessels
@dataclass
class _Segment:
    p0: np.ndarray
    p1: np.ndarray
    radius: float


def _grow_tree(root, targets, root_radius, rng, min_radius=0.35) -> list[_Segment]:
    """Grow a vessel tree from ``root`` that reaches every target point.

    Each node splits its targets in two halves across their main axis and
    sends one branch towards each half, so the tree fills the lung; a branch
    that feeds ``n`` of the ``N`` targets has radius ``r0 (n / N)^(1/3)``
    (Murray's law with equal flows), so vessels thin towards the periphery.
    """
    total = len(targets)
    segments: list[_Segment] = []
    stack = [(np.asarray(root, float), targets)]
    while stack:
        start, points = stack.pop()
        radius = root_radius * (len(points) / total) ** (1 / 3)
        if len(points) <= 1 or radius < min_radius:
            end = points.mean(0)
            segments.append(_Segment(start, end, max(radius, min_radius)))
            continue
        centroid = points.mean(0)
        end = start + (centroid - start) * rng.uniform(0.35, 0.6)
        segments.append(_Segment(start, end, radius))
        centred = points - centroid
        axis = np.linalg.svd(centred[: min(len(centred), 256)], full_matrices=False)[2][0]
        side = centred @ axis >= np.median(centred @ axis)
        if side.all() or not side.any():
            side = np.arange(len(points)) % 2 == 0
        stack.append((end, points[side]))
        stack.append((end, points[~side]))
    return segments


# ----------------------------------------------------------------- phantom
def default_spacing(shape_xyz: Sequence[int], rng: np.random.Generator | None = None) -> np.ndarray:
    """An adult-sized field of view (~340 mm wide, ~300 mm long) at this grid size, clipped to CT ranges.

    Examples
    --------
    >>> default_spacing((512, 512, 200)).round(3).tolist()
    [0.664, 0.664, 1.5]
    """
    # Small test grids get coarse voxels rather than a child-sized chest (in
    # which the bronchi, drawn at fixed mm offsets, would reach the lungs).
    inplane = float(np.clip(340.0 / shape_xyz[0], 0.55, 3.5))
    slices = float(np.clip(300.0 / shape_xyz[2], 0.6, 5.0))
    if rng is not None:
        inplane = float(np.clip(inplane * rng.uniform(0.93, 1.05), 0.5, 3.6))
        slices = float(np.clip(slices * rng.uniform(0.9, 1.0), 0.6, 5.0))
    return np.array([inplane, inplane, slices])


def make_phantom(
    shape_xyz: Sequence[int] = (256, 256, 128),
    *,
    spacing_xyz: Sequence[float] | None = None,
    seed: int = 0,
    n_nodules: int | None = None,
    diameter_range: tuple[float, float] = (3.0, 30.0),
    noise_hu: float | None = None,
    type_weights: Sequence[float] = (0.7, 0.15, 0.15),
    attachment_weights: Sequence[float] = (0.55, 0.25, 0.2),
    n_distractors: int | None = None,
    seriesuid: str | None = None,
) -> Phantom:
    """Draw one synthetic chest CT with nodules.

    Parameters
    ----------
    shape_xyz : sequence of 3 ints, default=(256, 256, 128)
        Voxels along x, y, z (the array is stored z, y, x).
    spacing_xyz : sequence of 3 floats, optional
        Voxel size in mm; by default an adult field of view at this size
        (see :func:`default_spacing`), jittered per seed.
    seed : int, default=0
        Seed of everything random; the same seed gives the same scan.
    n_nodules : int, optional
        Number of annotated nodules; by default 2 + Poisson(2), at most 8.
    diameter_range : (float, float), default=(3.0, 30.0)
        Nodule diameters are log-normal around 8.6 mm, clipped to this range.
    noise_hu : float, optional
        Noise standard deviation; by default uniform in 20-60 HU.
    type_weights : sequence of 3 floats, default=(0.7, 0.15, 0.15)
        Probabilities of solid, part-solid and ground-glass nodules.
    attachment_weights : sequence of 3 floats, default=(0.55, 0.25, 0.2)
        Probabilities of isolated, juxtavascular and juxtapleural nodules.
    n_distractors : int, optional
        Calcified granulomas; by default 1-3.
    seriesuid : str, optional
        Series UID; by default derived from the seed.

    Returns
    -------
    phantom : Phantom

    Examples
    --------
    >>> ph = make_phantom((64, 64, 32), seed=1, n_nodules=1, diameter_range=(10, 12))
    >>> ph.scan.array.shape, ph.scan.array.dtype.name, len(ph.nodules)
    ((32, 64, 64), 'int16', 1)
    """
    shape_xyz = tuple(int(n) for n in shape_xyz)
    if len(shape_xyz) != 3 or min(shape_xyz) < 16:
        raise ValueError(f"shape_xyz must be 3 sizes of at least 16 voxels, got {shape_xyz}")
    lo_d, hi_d = (float(v) for v in diameter_range)
    if not 0 < lo_d <= hi_d:
        raise ValueError(f"diameter_range must be (low, high) with 0 < low <= high, got {diameter_range}")
    rng = np.random.default_rng(seed)
    spacing = default_spacing(shape_xyz, rng) if spacing_xyz is None else np.asarray(spacing_xyz, float)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing_xyz must be 3 positive sizes in mm, got {spacing_xyz}")
    grid = _Grid(shape_xyz, spacing)
    anatomy = _Anatomy.draw(grid.fov, rng)
    noise_hu = float(rng.uniform(20, 60)) if noise_hu is None else float(noise_hu)
    uid = seriesuid or f"1.3.6.1.4.1.14519.5.2.1.6279.9999.{seed}"
    nx, ny, nz = shape_xyz

    # --- anatomy, slice by slice (the analytic shapes are cheap in 2-D) ---
    volume = np.empty((nz, ny, nx), np.float32)
    lung_occ = np.empty((nz, ny, nx), np.float32)
    X = grid.axes[0][None, :]
    Y = grid.axes[1][:, None]
    aa = spacing[:2].min()
    for k, z in enumerate(grid.axes[2]):
        outer = _soft(_ellipse_level(X, Y, 0, 0, anatomy.body_a, anatomy.body_b), aa)
        inner_a, inner_b = anatomy.body_a - anatomy.fat, anatomy.body_b - anatomy.fat
        inner = _soft(_ellipse_level(X, Y, 0, 0, inner_a, inner_b), aa)
        value = AIR_HU + (FAT_HU - AIR_HU) * outer + (SOFT_TISSUE_HU - FAT_HU) * inner
        spine = _soft(_ellipse_level(X, Y, 0, anatomy.spine_y, anatomy.spine_r, anatomy.spine_r), aa)
        value += (BONE_HU - 250 - value) * spine
        near_rib = np.abs(anatomy.rib_z - z).min() if anatomy.rib_z.size else np.inf
        if near_rib < 6.0:
            ring_out = _ellipse_level(X, Y, 0, 0, inner_a - 5, inner_b - 5)
            ring_in = _ellipse_level(X, Y, 0, 0, inner_a - 13, inner_b - 13)
            lateral = np.abs(np.arctan2(X, -Y)) > np.radians(35)  # not over the sternum
            rib = _soft(np.maximum(ring_out, -ring_in), aa) * lateral * min(1.0, (6.0 - near_rib) / 2)
            value += (BONE_HU - value) * rib
        right, left = anatomy.lung_level(X, Y, z)
        occ = _soft(np.minimum(right, left), aa)
        value += (anatomy.parenchyma(X, Y, z) - value) * occ
        volume[k] = value
        lung_occ[k] = occ

    # --- a coarse (2 mm) lung map to plan vessels and nodules ---
    coarse = 2.0
    cgrid = [np.arange(-f / 2 + coarse / 2, f / 2, coarse) for f in grid.fov]
    cX, cY = cgrid[0][None, :], cgrid[1][:, None]
    label = np.zeros((len(cgrid[2]), len(cgrid[1]), len(cgrid[0])), np.int8)
    for k, z in enumerate(cgrid[2]):
        right, left = anatomy.lung_level(cX, cY, z)
        label[k][right < 0] = 1
        label[k][left < 0] = 2
    depth = ndimage.distance_transform_edt(label > 0, sampling=coarse)

    def coarse_points(mask):
        kk, jj, ii = np.nonzero(mask)
        return np.column_stack([cgrid[0][ii], cgrid[1][jj], cgrid[2][kk]])

    def depth_at(p):
        idx = [int(np.clip(round((p[a] + grid.fov[a] / 2) / coarse - 0.5), 0, len(cgrid[a]) - 1)) for a in (2, 1, 0)]
        return depth[idx[0], idx[1], idx[2]]

    # --- airways: trachea and main bronchi, stopping short of the lungs ---
    carina = np.array([0.0, anatomy.lung_cy - 0.15 * anatomy.lung_b, anatomy.lung_z0 + 0.62 * (anatomy.lung_z1 - anatomy.lung_z0)])
    _capsule(grid, volume, carina, carina + [0, 0, grid.fov[2]], 8.0, AIR_HU)
    hilum_z = carina[2] - 20.0
    hila = []
    for side in (-1.0, 1.0):
        inner_edge = side * (anatomy.lung_cx - anatomy.lung_a)
        hilum = np.array([inner_edge + side * 4.0, anatomy.lung_cy, hilum_z])
        hila.append(hilum)
        _capsule(grid, volume, carina, hilum - [side * 18.0, 0, 0], 5.5, AIR_HU)

    # --- vessel trees (artery and vein per lung), painted inside the lungs ---
    segments: list[_Segment] = []
    for lung_label, hilum in zip((1, 2), hila):
        points = coarse_points((label == lung_label) & (depth > 3.0))
        for offset in (np.array([0, -6.0, 4.0]), np.array([0, 8.0, -8.0])):
            take = rng.choice(len(points), size=min(len(points), 768), replace=False)
            targets = points[take] + rng.uniform(-1, 1, (len(take), 3))
            segments += _grow_tree(hilum + offset, targets, rng.uniform(4.5, 6.0), rng)
    for seg in segments:
        _capsule(grid, volume, seg.p0, seg.p1, seg.radius, BLOOD_HU, clip=lung_occ)

    # --- nodules ---
    lung_points = coarse_points(label > 0)
    lung_depth = depth[label > 0]
    placed: list[tuple[np.ndarray, float]] = []

    def free(center, radius):
        return all(np.linalg.norm(center - c) > radius + r + 3.0 for c, r in placed)

    def place(radius, attachment):
        for _ in range(400):
            if attachment == "juxtapleural":
                band = np.abs(lung_depth - radius * rng.uniform(0.45, 0.85)) < 1.2
                outer = np.abs(lung_points[:, 0]) > anatomy.lung_cx - 0.2 * anatomy.lung_a
                options = np.nonzero(band & outer)[0]
                if not len(options):
                    continue
                center = lung_points[rng.choice(options)] + rng.uniform(-0.5, 0.5, 3)
            elif attachment == "juxtavascular":
                pool = [s for s in segments if 0.7 <= s.radius <= 3.0]
                seg = pool[rng.integers(len(pool))]
                axis = seg.p1 - seg.p0
                axis /= max(np.linalg.norm(axis), 1e-9)
                normal = np.cross(axis, rng.normal(size=3))
                normal /= max(np.linalg.norm(normal), 1e-9)
                point = seg.p0 + rng.uniform(0.2, 0.8) * (seg.p1 - seg.p0)
                center = point + normal * (radius + seg.radius) * rng.uniform(0.6, 0.9)
                if depth_at(center) < radius + 2.0:
                    continue
            else:
                options = np.nonzero(lung_depth > radius + 4.0)[0]
                if not len(options):
                    return None
                center = lung_points[rng.choice(options)] + rng.uniform(-1, 1, 3)
            if free(center, radius):
                placed.append((center, radius))
                return center
        return None

    if n_nodules is None:
        n_nodules = int(min(8, 2 + rng.poisson(2.0)))
    type_p = np.asarray(type_weights, float) / np.sum(type_weights)
    attach_p = np.asarray(attachment_weights, float) / np.sum(attachment_weights)
    origin = -grid.fov / 2 + grid.spacing / 2  # local mm of voxel 0 ...
    world_origin = np.array([rng.uniform(-200, -150), rng.uniform(-220, -150), rng.uniform(-350, -150)])
    to_world = lambda local: np.asarray(local) - origin + world_origin  # noqa: E731

    nodules: list[PhantomNodule] = []
    for _ in range(n_nodules):
        diameter = float(np.clip(np.exp(rng.normal(np.log(8.6), 0.55)), lo_d, hi_d))
        kind = NODULE_TYPES[rng.choice(3, p=type_p)]
        attachment = ATTACHMENTS[rng.choice(3, p=attach_p)]
        center = place(diameter / 2, attachment)
        if center is None:
            center = place(diameter / 2, "isolated")
            attachment = "isolated"
        if center is None:
            continue
        axes = diameter / 2 * rng.uniform(0.85, 1.15, 3)
        axes *= (diameter / 2) / np.cbrt(np.prod(axes))  # keep the volume-equivalent diameter
        rotation = _random_rotation(rng)
        if kind == "solid":
            hu = float(rng.uniform(0, 80))
            _ellipsoid(grid, volume, center, axes, rotation, hu)
        elif kind == "ground-glass":
            hu = float(rng.uniform(-700, -580))
            _ellipsoid(grid, volume, center, axes, rotation, hu, mode="max")
        else:
            hu = float(rng.uniform(-50, 50))
            _ellipsoid(grid, volume, center, axes, rotation, float(rng.uniform(-680, -560)), mode="max")
            _ellipsoid(grid, volume, center, axes * rng.uniform(0.35, 0.6), rotation, hu)
        nodules.append(PhantomNodule(to_world(center), diameter, kind, attachment, hu))

    distractors: list[PhantomNodule] = []
    for _ in range(int(rng.integers(1, 4)) if n_distractors is None else n_distractors):
        diameter = float(rng.uniform(2.5, 6.0))
        center = place(diameter / 2, "isolated")
        if center is None:
            continue
        hu = float(rng.uniform(300, 900))
        _ellipsoid(grid, volume, center, np.full(3, diameter / 2), np.eye(3), hu)
        distractors.append(PhantomNodule(to_world(center), diameter, "calcified", "isolated", hu))

    excluded: list[PhantomNodule] = []
    for _ in range(int(rng.integers(0, 3))):
        diameter = float(rng.uniform(1.5, 2.8))
        center = place(diameter / 2, "isolated")
        if center is None:
            continue
        hu = float(rng.uniform(0, 60))
        _ellipsoid(grid, volume, center, np.full(3, diameter / 2), np.eye(3), hu)
        excluded.append(PhantomNodule(to_world(center), diameter, "micronodule", "isolated", hu))
    del lung_occ

    # --- scanner: point-spread blur, then correlated noise ---
    psf_mm = np.array([max(0.5, 0.5 * spacing[0]), max(0.5, 0.5 * spacing[1]), 0.45 * spacing[2]])
    ndimage.gaussian_filter(volume, sigma=(psf_mm / spacing)[::-1], output=volume, truncate=3.0)
    noise = rng.standard_normal(volume.shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma=(0.5, 0.9, 0.9), output=noise, truncate=3.0)
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    volume += noise
    del noise
    array = np.clip(np.rint(volume), -1024, 3071).astype(np.int16)
    scan = Scan(array, origin=world_origin, spacing=spacing, seriesuid=uid)
    return Phantom(scan, nodules, excluded, distractors, noise_hu)


def write_phantom_set(
    out: str | Path,
    n_scans: int,
    *,
    shape_xyz: Sequence[int] = (256, 256, 128),
    seed: int = 0,
    progress=None,
    **options,
) -> Path:
    """Write ``n_scans`` phantoms and their LUNA16 tables into ``out``.

    Files written: ``<seriesuid>.mhd/.raw`` per scan, ``annotations.csv``
    (the LUNA16 columns), ``annotations_excluded.csv`` (micronodules),
    ``nodule_types.csv`` (annotations plus ``type`` and ``attachment``
    columns), ``distractors.csv`` (calcified granulomas, not annotated) and
    ``seriesuids.csv``.

    Parameters
    ----------
    out : str or Path
        Destination folder (created if missing).
    n_scans : int
        Number of scans; scan ``i`` uses seed ``seed * 1000 + i``.
    shape_xyz : sequence of 3 ints, default=(256, 256, 128)
        Grid size of every scan.
    seed : int, default=0
        Seed of the set.
    progress : callable, optional
        Called as ``progress(i, phantom)`` after each scan is written.
    **options
        Further :func:`make_phantom` arguments.

    Returns
    -------
    out : Path

    Examples
    --------
    >>> import tempfile
    >>> folder = write_phantom_set(tempfile.mkdtemp(), 1, shape_xyz=(48, 48, 24), n_nodules=1)
    >>> sorted(p.name for p in folder.glob("*.csv"))
    ['annotations.csv', 'annotations_excluded.csv', 'distractors.csv', 'nodule_types.csv', 'seriesuids.csv']
    """
    if n_scans < 1:
        raise ValueError(f"n_scans must be at least 1, got {n_scans}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    annotations, excluded, distractors, uids = [], [], [], []
    for i in range(n_scans):
        phantom = make_phantom(shape_xyz, seed=seed * 1000 + i, seriesuid=f"1.3.6.1.4.1.14519.5.2.1.6279.9999.{seed}.{i}", **options)
        write_scan(phantom.scan, out)
        uid = phantom.scan.seriesuid
        uids.append(uid)
        for n in phantom.nodules:
            annotations.append(Finding(uid, *n.world, n.diameter_mm, {"type": n.kind, "attachment": n.attachment}))
        excluded += [Finding(uid, *n.world, n.diameter_mm) for n in phantom.excluded]
        distractors += [Finding(uid, *n.world, n.diameter_mm) for n in phantom.distractors]
        if progress is not None:
            progress(i, phantom)
    write_annotations(out / "annotations.csv", annotations)
    write_annotations(out / "annotations_excluded.csv", excluded)
    write_annotations(out / "nodule_types.csv", annotations, extra=("type", "attachment"))
    write_annotations(out / "distractors.csv", distractors)
    write_series_list(out / "seriesuids.csv", uids)
    return out
