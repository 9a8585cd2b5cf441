"""scikit-learn's estimator contract (``parametrize_with_checks``) on MeanShift.

Every check that scikit-learn runs on its own estimators runs here, on the
default estimator and on several non-default settings (other kernels, the
blurring algorithm, ``cluster_all=False``, tiny tiles and few iterations).
No check is marked as an expected failure.

Settings deliberately not run through the checks, with the reason:

- ``bin_seeding=True``: the checks fit 15 uniform points in 30 dimensions;
  there the centers of the occupied grid cells are farther than one
  bandwidth from every point, so *scikit-learn's own* MeanShift raises "No
  point was within bandwidth" too (we reproduce that error).  The check
  cannot apply to this setting; bin seeding is covered by the parity tests.
- Per-feature (array or dict) bandwidths: the checks change ``n_features``
  between calls, which a fixed per-feature array cannot follow.
- The bandwidth rules ("auto", "scott", "adaptive", ...) belong to their own
  test files; "auto" alone would take several seconds here.

Checks skipped by scikit-learn itself (pandas not installed,
``SCIPY_ARRAY_API`` unset) are reported as skipped, not hidden.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from meanshift_gpu import MeanShift

ESTIMATORS = [
    MeanShift(),
    MeanShift(kernel="gaussian"),
    MeanShift(kernel="epanechnikov", cluster_all=False),
    MeanShift(algorithm="blurring"),
    MeanShift(algorithm="blurring", kernel="gaussian"),
    # Tiny tiles, few iterations, explicit device and backend.
    MeanShift(device="cpu", backend="torch", batch_size=3, max_iter=5),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
