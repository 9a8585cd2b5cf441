"""Bandwidths: scikit-learn's estimate (``estimate.py``), the rules of thumb and the
stability rule (``rules.py``), and per-point bandwidths (``adaptive.py``).

:func:`meanshift_gpu._spec.resolve_bandwidth` picks among them for both estimators.
"""
