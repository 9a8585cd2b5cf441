"""The compiled CPU loops (the ``meanshift_gpu._neighbors._native`` C extension), called through ctypes.

The extension is built when the package is installed (``setup.py``), so a
fit never compiles code: the first fit in a fresh process runs as fast as
the next one.  ctypes releases the GIL for every call, and the row-sum step
spreads its groups of seeds over threads inside the extension.

Where the extension was not built (no C compiler at install time) or cannot
load, :func:`unavailable` says why, and the callers use their torch versions,
which give the same results (the row sums bit for bit; the merge and the
labels make the same decisions).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

__all__ = ["unavailable", "split_groups", "rowsum_accumulate", "keep_separated_modes",
           "nearest_on_grid", "RowSumArgs", "MERGE_CELL_SIDE"]

# Merge cells are wider than 1, so a pair whose rounded distance is 1 is never two cells apart.
MERGE_CELL_SIDE = 1.25


class RowSumArgs(ctypes.Structure):
    """The row-sum step's arrays and constants, in ``_native.c``'s ``RowSumArgs`` layout."""

    _fields_ = [
        *[(name, ctypes.c_int64) for name in ("d", "m", "n_rows", "longest_row", "n_points")],
        ("margin", ctypes.c_double),
        ("shared_radius", ctypes.c_double),
        ("edge", ctypes.c_double),
        *[(name, ctypes.c_void_p) for name in (
            "row_keys", "row_bounds", "first", "coords", "sums", "prefix", "origin", "strides", "cell_lo",
            "cell_hi", "q", "seeds", "group_starts", "acc")],
    ]


@functools.cache
def _library():
    """The loaded extension, or the exception that kept it from loading."""
    try:
        from . import _native
    except ImportError as exc:
        return exc
    try:
        lib = ctypes.CDLL(_native.__file__)
    except OSError as exc:
        return exc
    lib.rowsum_accumulate.argtypes = [ctypes.POINTER(RowSumArgs), ctypes.c_int, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64]
    lib.rowsum_accumulate.restype = ctypes.c_int
    lib.rowsum_split_groups.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    lib.rowsum_split_groups.restype = ctypes.c_int64
    for suffix in ("f32", "f64"):
        keep = getattr(lib, f"keep_separated_modes_{suffix}")
        keep.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_double,
                         ctypes.c_void_p]
        keep.restype = ctypes.c_int
        nearest = getattr(lib, f"nearest_on_grid_{suffix}")
        nearest.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                            ctypes.c_double, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        nearest.restype = ctypes.c_int
    return lib


def unavailable() -> str | None:
    """None when the compiled loops can run, else a sentence saying why not.

    Examples
    --------
    >>> reason = unavailable()
    >>> reason is None or "C extension" in reason
    True
    """
    lib = _library()
    if isinstance(lib, Exception):
        return (f"the C extension meanshift_gpu._neighbors._native is not usable ({type(lib).__name__}: {lib}); "
                "reinstall with a C compiler present (pip install -e .)")
    return None


def _lib():
    lib = _library()
    if isinstance(lib, Exception):
        raise RuntimeError(unavailable())
    return lib


def _pointer(array: np.ndarray) -> int:
    return array.ctypes.data


def split_groups(keys: np.ndarray, codes: np.ndarray, top_bit: int, max_size: int) -> np.ndarray:
    """Starts (and the end) of groups of at most ``max_size`` seeds, cut along a Z-order curve.

    ``keys`` (own row cells) and ``codes`` (Morton codes) are int64, sorted
    by (key, code).  A run of equal keys is halved at the highest bit where
    its codes differ, recursively, until the pieces are small: each piece is
    a box of the Z-order's implicit k-d tree, so groups stay compact.

    Examples
    --------
    >>> split_groups(np.array([0, 0, 0, 5]), np.array([0, 1, 2, 0]), 1, 2).tolist()
    [0, 2, 3, 4]
    """
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    starts = np.empty(keys.shape[0] + 1, dtype=np.int64)
    count = _lib().rowsum_split_groups(_pointer(keys), _pointer(codes), keys.shape[0], int(top_bit), int(max_size),
                                       _pointer(starts))
    return starts[:count]


def rowsum_accumulate(args: RowSumArgs, is_double: bool, pieces: np.ndarray, n_threads: int) -> None:
    """Run the row-sum step over the groups ``pieces`` delimits (see ``_native.c``), into ``args.acc``."""
    pieces = np.ascontiguousarray(pieces, dtype=np.int64)
    status = _lib().rowsum_accumulate(ctypes.byref(args), int(is_double), _pointer(pieces), pieces.shape[0] - 1,
                                      int(n_threads))
    if status:
        raise MemoryError("the compiled row-sum step ran out of memory for its scratch rows")


def _real_suffix(array: np.ndarray) -> str:
    if array.dtype == np.float64:
        return "f64"
    if array.dtype == np.float32:
        return "f32"
    raise TypeError(f"the compiled loops take float32 or float64, got {array.dtype}")


def keep_separated_modes(candidates: np.ndarray, within: float = 1.0) -> np.ndarray:
    """Which of ``candidates`` (n, d <= 3, in merge order) scikit-learn's merge keeps, as a boolean mask.

    Each candidate is kept unless a kept one lies within distance 1 (the
    dense formula, in the candidates' dtype, compared with ``within``: 1 or
    the flat window's edge).  Kept modes are more than 1
    apart, so a hash-grid cell holds few of them: each candidate looks into
    its own and the adjacent cells only.

    Examples
    --------
    >>> keep_separated_modes(np.array([[0.0, 0.0], [0.5, 0.0], [2.0, 0.0]])).tolist()
    [True, False, True]
    """
    candidates = np.ascontiguousarray(candidates)
    n, d = candidates.shape
    kept = np.zeros(n, dtype=np.uint8)
    status = getattr(_lib(), f"keep_separated_modes_{_real_suffix(candidates)}")(
        _pointer(candidates), n, d, MERGE_CELL_SIDE, float(within), _pointer(kept))
    if status:
        raise MemoryError(f"no memory for the merge's hash grid of {n} candidates")
    return kept.astype(bool)


def nearest_on_grid(points: np.ndarray, centers: np.ndarray, side: float, max_ring: int):
    """Index of, and squared distance to, the nearest of ``centers`` for every point (d <= 3).

    Centers are hashed into cells of ``side``; each point searches rings of
    cells around its own until no farther center can be as close, and past
    ``max_ring`` rings compares with every center.  Distances are the dense
    formula's in the data's dtype; ties go to the lowest center index.

    Examples
    --------
    >>> index, dist2 = nearest_on_grid(np.array([[0.1, 0.0], [2.9, 0.0]]), np.array([[0.0, 0.0], [3.0, 0.0]]), 1.0, 4)
    >>> index.tolist()
    [0, 1]
    """
    points = np.ascontiguousarray(points)
    centers = np.ascontiguousarray(centers, dtype=points.dtype)
    n, d = points.shape
    index = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=points.dtype)
    status = getattr(_lib(), f"nearest_on_grid_{_real_suffix(points)}")(
        _pointer(points), n, _pointer(centers), centers.shape[0], d, float(side), int(max_ring), _pointer(index),
        _pointer(dist))
    if status:
        raise MemoryError(f"no memory for the labels' hash grid of {centers.shape[0]} centers")
    return index, dist
