"""meanshift_gpu: fast, scikit-learn compatible mean-shift clustering.

Public API
----------
MeanShift
    The estimator, a drop-in for :class:`sklearn.cluster.MeanShift`.
mean_shift
    Functional interface.
estimate_bandwidth
    scikit-learn's bandwidth rule, computed in tiles with torch.
get_bin_seeds
    Grid seeding, as in scikit-learn.
feature_bandwidths
    Per-feature bandwidths from per-group values (features in mixed units).
tiled_mean_shift
    Mean shift on spatial tiles with halos, the tiles' modes merged.
resolve_device
    The torch device that ``MeanShift(device=...)`` computes on.
"""

from ._bandwidth.estimate import estimate_bandwidth
from ._estimator import MeanShift, mean_shift
from ._bandwidth.estimate import feature_bandwidths
from ._seeding import get_bin_seeds
from ._devices import resolve_device
from ._tiling import tiled_mean_shift

__version__ = "0.1.0"

__all__ = ["MeanShift", "estimate_bandwidth", "get_bin_seeds", "mean_shift", "__version__"]
__all__ += ["feature_bandwidths"]
__all__ += ["tiled_mean_shift", "resolve_device"]
