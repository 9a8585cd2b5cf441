"""Lung-nodule candidate generation with 5-D mean shift, scored like LUNA16."""


def benchmark_points(scale: str = "quick"):
    """The pipeline's clustering problem, for ``python -m benchmarks``.

    Builds a phantom (no download), extracts the 5-D voxel features the
    detector clusters and divides each feature by its bandwidth, so one
    bandwidth (1.0) stands for the detector's per-feature bandwidths.

    Parameters
    ----------
    scale : {"quick", "full"}
        "quick": a 192 x 192 x 96 phantom; "full": 384 x 384 x 192.

    Returns
    -------
    X : ndarray of shape (n_voxels, 5)
        Scaled features (x, y, z, HU, shape index).
    y : None
        No per-voxel truth.
    bandwidth : float
        1.0 (the features are already scaled).

    Examples
    --------
    >>> X, y, bandwidth = benchmark_points("quick")  # doctest: +SKIP
    """
    import numpy as np

    from .detect import DetectorConfig, voxel_features
    from .phantom import make_phantom

    shape = (192, 192, 96) if scale == "quick" else (384, 384, 192)
    phantom = make_phantom(shape, seed=0)
    config = DetectorConfig()
    X, _, _, _ = voxel_features(phantom.scan, config)
    bandwidth = np.array(
        [config.bandwidth_mm] * 3 + [config.bandwidth_hu, config.bandwidth_si], dtype=np.float64
    )
    return (X / bandwidth).astype(np.float32), None, 1.0
