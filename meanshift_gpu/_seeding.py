"""Bin seeding: one seed per occupied grid cell (as scikit-learn's get_bin_seeds)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._validation import as_tensor, check_points


def bin_seeds(
    points: torch.Tensor, bin_size: float, min_bin_freq: float = 1, weights: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Centers of the grid cells (side ``bin_size``) that hold enough points.

    Points are rounded to the nearest multiple of ``bin_size`` (half to even,
    as numpy).  A cell's frequency is its (weighted) number of points.  Returns
    ``None`` when binning does not reduce the seed count (as many seeds as
    points, or as the total weight), so that the caller falls back to the
    points themselves, as scikit-learn does.
    """
    cells, inverse = torch.unique(torch.round(points / bin_size), dim=0, return_inverse=True)
    if weights is None:
        freq = torch.bincount(inverse, minlength=cells.shape[0]).to(points.dtype)
    else:
        freq = torch.zeros(cells.shape[0], dtype=points.dtype, device=points.device)
        freq.index_add_(0, inverse, weights)
    selected = cells[freq >= min_bin_freq]
    # sklearn falls back when there are as many seeds as points.  With weights
    # the "number of points" is the total weight, so that integer weights act
    # exactly as repeated rows (a weight-2 point alone in its cell is two
    # points binned into one seed, not a failed binning).
    n_points = points.shape[0] if weights is None else float(weights.sum())
    if selected.shape[0] == n_points:
        return None
    return selected * bin_size


def get_bin_seeds(X, bin_size: float, min_bin_freq: int = 1):
    """Find seeds for mean shift by binning the data onto a grid.

    Same contract as :func:`sklearn.cluster.get_bin_seeds`: points are rounded
    onto a grid whose lines are ``bin_size`` apart and every cell holding at
    least ``min_bin_freq`` points becomes a seed.  If every point is alone in
    its cell (or ``bin_size`` is 0) binning gives no reduction: a warning is
    issued and ``X`` itself is returned.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Input points.
    bin_size : float
        Grid spacing; normally the bandwidth.
    min_bin_freq : int, default=1
        Minimum number of points in a cell for it to become a seed.

    Returns
    -------
    bin_seeds : ndarray or torch.Tensor of shape (n_seeds, n_features)
        Seed positions, of the same kind (numpy or torch) as ``X``.  Unlike
        scikit-learn (which returns float32) the seeds keep ``X``'s float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 1.0], [1.4, 1.4], [1.8, 1.2], [2.0, 1.0], [2.1, 1.1], [0.0, 0.0]])
    >>> sorted(map(tuple, get_bin_seeds(X, 1, 1).tolist()))
    [(0.0, 0.0), (1.0, 1.0), (2.0, 1.0)]
    """
    if bin_size == 0:
        return X
    if not np.isfinite(bin_size) or bin_size < 0:
        raise ValueError(f"bin_size must be a non-negative finite number, got {bin_size!r}")
    points = check_points(X, "X")
    tensor = as_tensor(points, points.device if isinstance(points, torch.Tensor) else torch.device("cpu"))
    seeds = bin_seeds(tensor, float(bin_size), min_bin_freq)
    if seeds is None:
        warnings.warn(
            f"Binning data failed with provided bin_size={bin_size:f}, using data points as seeds."
        )
        return X
    if isinstance(X, torch.Tensor):
        return seeds
    return seeds.cpu().numpy()
