"""Lung segmentation: threshold, connected components and morphology.

1. Air-like voxels (below ``air_hu``) are labelled in 3-D; components that
   touch the side or front/back borders of the volume are the air around
   the patient and are dropped.
2. The lungs are the largest remaining components (anything at least
   ``min_fraction`` of the largest, so two separate lungs or one joined
   pair; the trachea is far smaller).
3. Vessels and nodules are holes in the air mask: each lung is *closed*
   with a ball of ``closing_mm`` (on a coarse isotropic grid, with distance
   transforms, so it costs little), which also fills the dent that a nodule
   touching the chest wall makes in the lung surface: juxtapleural nodules
   stay inside the mask.  Remaining holes are filled slice by slice, but
   only holes smaller than a disc of radius ``max_hole_mm``: an axial slice
   through the diaphragm dome shows the liver as a large hole ringed by lung,
   and filling it would put the whole upper abdomen into the mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _close_ball(mask: np.ndarray, radius_mm: float, spacing_zyx) -> np.ndarray:
    """Binary closing by a ball, via two Euclidean distance transforms (in mm)."""
    pad = int(np.ceil(radius_mm / min(spacing_zyx))) + 1
    padded = np.pad(mask, pad)
    dilated = ndimage.distance_transform_edt(~padded, sampling=spacing_zyx) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing_zyx) > radius_mm
    return closed[pad:-pad, pad:-pad, pad:-pad] | mask


def segment_lungs(
    array: np.ndarray,
    spacing_xyz,
    *,
    air_hu: float = -400.0,
    closing_mm: float = 15.0,
    coarse_mm: float = 2.5,
    min_fraction: float = 0.1,
    max_hole_mm: float = 20.0,
) -> np.ndarray:
    """Boolean lung mask of a CT volume, nodules touching the chest wall included.

    Parameters
    ----------
    array : ndarray of shape (nz, ny, nx)
        HU volume in (z, y, x) order.
    spacing_xyz : array-like of shape (3,)
        Voxel size in mm (x, y, z).
    air_hu : float, default=-400
        Voxels below this are air-like (parenchyma is about -850 HU).
    closing_mm : float, default=15
        Radius of the closing ball; at least the radius of the largest
        juxtapleural nodule to be kept (LUNA16 nodules are at most ~30 mm).
    coarse_mm : float, default=2.5
        Grid on which the closing runs.
    min_fraction : float, default=0.1
        Components at least this fraction of the largest one are lung.
    max_hole_mm : float, default=20
        In-slice holes up to the area of a disc of this radius are filled
        (vessels, large nodules); larger ones (the diaphragm dome, the heart)
        are not.

    Returns
    -------
    mask : ndarray of bool, shape like ``array``

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.full((20, 40, 40), 40, np.int16)
    >>> vol[:, :2] = -1000                    # air outside the body
    >>> vol[4:16, 10:30, 10:30] = -850        # a lung
    >>> vol[8:12, 18:22, 18:22] = 40          # a nodule inside it
    >>> mask = segment_lungs(vol, [1, 1, 1], closing_mm=3, coarse_mm=1)
    >>> bool(mask[10, 20, 20]), bool(mask[10, 1, 20]), bool(mask[2, 20, 20])
    (True, False, False)
    """
    if array.ndim != 3:
        raise ValueError(f"array must be 3-D (z, y, x), got shape {array.shape}")
    spacing_zyx = np.asarray(spacing_xyz, float).reshape(3)[::-1]
    air = array < air_hu
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    touching = np.unique(
        np.concatenate(
            [labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
        )
    )
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[touching] = 0
    if sizes.max() == 0:
        return np.zeros_like(air)
    keep = np.nonzero(sizes >= min_fraction * sizes.max())[0]

    # Coarse isotropic grid for the closing: block indices of each voxel.
    factors = np.maximum(1, np.round(coarse_mm / spacing_zyx)).astype(int)
    mask = np.zeros_like(air)
    for lab in keep:
        component = labels == lab
        # A coarse cell is lung when most of its voxels are.
        sums = np.add.reduceat(
            np.add.reduceat(
                np.add.reduceat(component.astype(np.int32), np.arange(0, array.shape[0], factors[0]), 0),
                np.arange(0, array.shape[1], factors[1]), 1,
            ),
            np.arange(0, array.shape[2], factors[2]), 2,
        )  # fmt: skip
        cells = np.prod(factors)
        coarse = sums * 2 >= cells
        closed = _close_ball(coarse, closing_mm, spacing_zyx * factors) & ~coarse
        # Back to the fine grid: the cells the closing added.
        added = closed[
            (np.arange(array.shape[0]) // factors[0])[:, None, None],
            (np.arange(array.shape[1]) // factors[1])[None, :, None],
            (np.arange(array.shape[2]) // factors[2])[None, None, :],
        ]
        mask |= component | added
    return _fill_small_holes(mask, spacing_zyx, max_hole_mm)


def _fill_small_holes(mask: np.ndarray, spacing_zyx, max_hole_mm: float) -> np.ndarray:
    """Fill the in-slice holes of ``mask`` whose area is below ``pi * max_hole_mm**2``."""
    holes = np.zeros_like(mask)
    for k in range(mask.shape[0]):
        holes[k] = ndimage.binary_fill_holes(mask[k]) & ~mask[k]
    if not holes.any():
        return mask
    # In-plane connectivity only: a hole is a 2-D region of one slice.
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(holes, structure=structure)
    area = np.bincount(labels.ravel(), minlength=n + 1) * float(spacing_zyx[1] * spacing_zyx[2])
    small = area <= np.pi * max_hole_mm**2
    small[0] = False
    return mask | small[labels]
