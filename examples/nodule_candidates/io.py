"""LUNA16 file formats: scans (.mhd + .raw), annotations and candidate lists.

Coordinates follow ITK, which LUNA16 uses: a *world* point is in millimetres,
``(x, y, z)``; a *voxel index* ``(i, j, k)`` is along x, y, z and maps to the
world by ``world = origin + direction @ (spacing * index)``.  SimpleITK hands
the pixel array over in the opposite order, ``array[k, j, i]`` (z, y, x), so
every function here says which order it takes; the ``*_zyx`` helpers are the
ones to index numpy arrays with.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


@dataclass
class Scan:
    """A CT volume with its geometry.

    Attributes
    ----------
    array : ndarray of shape (nz, ny, nx)
        Hounsfield units, indexed ``[z, y, x]`` as SimpleITK returns them.
    origin : ndarray of shape (3,)
        World position (mm, x/y/z order) of voxel ``(0, 0, 0)``.
    spacing : ndarray of shape (3,)
        Voxel size in mm along x, y, z.
    direction : ndarray of shape (3, 3)
        Direction cosines (columns are the world directions of the x, y, z
        index axes); the identity for LUNA16.
    seriesuid : str
        Identifier (the file stem in LUNA16).

    Examples
    --------
    >>> import numpy as np
    >>> scan = Scan(np.zeros((4, 5, 6), np.int16), origin=[-10, -20, -30],
    ...             spacing=[0.5, 0.5, 2.0], seriesuid="demo")
    >>> scan.shape_xyz
    (6, 5, 4)
    """

    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    seriesuid: str = ""

    def __post_init__(self) -> None:
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if self.array.ndim != 3:
            raise ValueError(f"a scan array must be 3-D (z, y, x), got shape {self.array.shape}")
        if not np.all(self.spacing > 0):
            raise ValueError(f"spacing must be positive in every axis, got {self.spacing.tolist()}")

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along x, y, z."""
        return tuple(int(n) for n in self.array.shape[::-1])

    def world_to_voxel(self, world_xyz) -> np.ndarray:
        """Continuous voxel indices (x, y, z order) of world points; see :func:`world_to_voxel`."""
        return world_to_voxel(world_xyz, self.origin, self.spacing, self.direction)

    def voxel_to_world(self, voxel_xyz) -> np.ndarray:
        """World points (mm) of voxel indices in x, y, z order; see :func:`voxel_to_world`."""
        return voxel_to_world(voxel_xyz, self.origin, self.spacing, self.direction)


def _points(values, name: str) -> np.ndarray:
    points = np.asarray(values, dtype=np.float64)
    if points.shape[-1:] != (3,):
        raise ValueError(f"{name} must have 3 coordinates in its last axis, got shape {points.shape}")
    return points


def world_to_voxel(world_xyz, origin, spacing, direction=None) -> np.ndarray:
    """Continuous voxel index (x, y, z order) of world points in mm.

    ``index = direction^T (world - origin) / spacing``; with the identity
    direction of LUNA16 this is LUNA16's ``(world - origin) / spacing``.

    Parameters
    ----------
    world_xyz : array-like of shape (..., 3)
        World coordinates in mm, x, y, z.
    origin, spacing : array-like of shape (3,)
        Scan geometry in x, y, z order (as in the ``.mhd`` header).
    direction : array-like of shape (3, 3), optional
        Direction cosine matrix; identity when None.

    Returns
    -------
    voxel_xyz : ndarray of shape (..., 3)
        Fractional indices along x, y, z.  Reverse the last axis (or use
        :func:`world_to_index_zyx`) to index a SimpleITK array.

    Examples
    --------
    >>> world_to_voxel([0.0, 0.0, 0.0], origin=[-100, -50, -200], spacing=[0.5, 0.5, 2.5])
    array([200., 100.,  80.])
    """
    world = _points(world_xyz, "world_xyz")
    rotation = np.eye(3) if direction is None else np.asarray(direction, np.float64).reshape(3, 3)
    return ((world - np.asarray(origin, np.float64)) @ rotation) / np.asarray(spacing, np.float64)


def voxel_to_world(voxel_xyz, origin, spacing, direction=None) -> np.ndarray:
    """World coordinates (mm) of voxel indices given in x, y, z order.

    Parameters
    ----------
    voxel_xyz : array-like of shape (..., 3)
        Voxel indices (may be fractional) along x, y, z.
    origin, spacing : array-like of shape (3,)
        Scan geometry in x, y, z order.
    direction : array-like of shape (3, 3), optional
        Direction cosine matrix; identity when None.

    Returns
    -------
    world_xyz : ndarray of shape (..., 3)

    Examples
    --------
    >>> voxel_to_world([200, 100, 80], origin=[-100, -50, -200], spacing=[0.5, 0.5, 2.5])
    array([0., 0., 0.])
    """
    voxel = _points(voxel_xyz, "voxel_xyz")
    rotation = np.eye(3) if direction is None else np.asarray(direction, np.float64).reshape(3, 3)
    return (voxel * np.asarray(spacing, np.float64)) @ rotation.T + np.asarray(origin, np.float64)


def world_to_index_zyx(world_xyz, origin, spacing, direction=None) -> np.ndarray:
    """Continuous array indices in the SimpleITK / numpy order (z, y, x).

    Examples
    --------
    >>> world_to_index_zyx([0.0, 0.0, 0.0], origin=[-100, -50, -200], spacing=[0.5, 0.5, 2.5])
    array([ 80., 100., 200.])
    """
    return world_to_voxel(world_xyz, origin, spacing, direction)[..., ::-1].copy()


def index_zyx_to_world(index_zyx, origin, spacing, direction=None) -> np.ndarray:
    """World coordinates (mm, x/y/z) of numpy array indices given as (z, y, x).

    Examples
    --------
    >>> index_zyx_to_world([80, 100, 200], origin=[-100, -50, -200], spacing=[0.5, 0.5, 2.5])
    array([0., 0., 0.])
    """
    index = _points(index_zyx, "index_zyx")
    return voxel_to_world(index[..., ::-1], origin, spacing, direction)


# --------------------------------------------------------------------- scans
def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading and writing .mhd scans needs SimpleITK: pip install SimpleITK "
            "(or pip install 'meanshift-gpu[examples]')"
        ) from exc
    return sitk


_ELEMENT_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
                  "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8}


def _header_problem(path: Path) -> str | None:
    """What is wrong with a ``.mhd`` header or its data file, in one line, or None.

    Checked before SimpleITK reads the scan, whose messages for a missing or
    truncated ``.raw`` do not say which (a truncated file is reported as
    missing).  Headers this does not understand are left to SimpleITK.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    if "NDims" not in fields or "DimSize" not in fields:
        return f"{path} is not a MetaImage header (no NDims / DimSize lines)"
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
    except ValueError:
        return f"{path}: DimSize {fields['DimSize']!r} is not a list of integers"
    if len(dims) != 3:
        return f"{path} is {len(dims)}-D; a CT scan must be 3-D"
    data_file = fields.get("ElementDataFile", "")
    if not data_file or data_file.upper() in ("LOCAL", "LIST") or data_file.startswith("%"):
        return None
    raw = path.parent / data_file
    if not raw.is_file():
        return f"{path} names its data file {data_file!r}, which does not exist beside it"
    element = _ELEMENT_BYTES.get(fields.get("ElementType", ""))
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if element is not None and not compressed:
        expected = element * int(np.prod(dims)) * int(fields.get("ElementNumberOfChannels", "1"))
        size = raw.stat().st_size
        if size < expected:
            return (f"{raw} is truncated: {size} bytes, but {path.name} describes "
                    f"{' x '.join(map(str, dims))} {fields['ElementType']} = {expected} bytes")
    return None


def read_scan(path: str | Path) -> Scan:
    """Read a LUNA16 scan (``.mhd`` header + ``.raw`` data) with SimpleITK.

    Parameters
    ----------
    path : str or Path
        The ``.mhd`` file.  Its stem is the series UID, as in LUNA16.

    Returns
    -------
    scan : Scan
        HU array in (z, y, x) order plus origin, spacing and direction.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> scan = Scan(np.arange(24, dtype=np.int16).reshape(2, 3, 4), [1, 2, 3], [0.7, 0.7, 2.5], seriesuid="s")
    >>> path = write_scan(scan, folder)
    >>> back = read_scan(path)
    >>> bool((back.array == scan.array).all()), back.spacing.tolist()
    (True, [0.7, 0.7, 2.5])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scan at {path}: expected a .mhd header with its .raw file beside it")
    problem = _header_problem(path)
    if problem is not None:
        raise ValueError(problem)
    sitk = _sitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK's multi-line ITK exception text
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"{path} cannot be read as a scan: {lines[-1] if lines else 'unknown error'}") from exc
    if image.GetDimension() != 3:
        raise ValueError(f"{path} is {image.GetDimension()}-D; a CT scan must be 3-D")
    return Scan(
        array=sitk.GetArrayFromImage(image),
        origin=np.array(image.GetOrigin()),
        spacing=np.array(image.GetSpacing()),
        direction=np.array(image.GetDirection()).reshape(3, 3),
        seriesuid=path.stem,
    )


def write_scan(scan: Scan, folder: str | Path) -> Path:
    """Write a scan as ``<folder>/<seriesuid>.mhd`` + ``.raw`` (int16, uncompressed, as LUNA16).

    Parameters
    ----------
    scan : Scan
        The volume; its array is rounded and clipped to int16.
    folder : str or Path
        Destination folder (created if missing).

    Returns
    -------
    path : Path
        The ``.mhd`` file written.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> scan = Scan(np.zeros((2, 3, 4), np.int16), [0, 0, 0], [1, 1, 1], seriesuid="blank")
    >>> write_scan(scan, tempfile.mkdtemp()).name
    'blank.mhd'
    """
    if not scan.seriesuid:
        raise ValueError("the scan needs a seriesuid: it names the file")
    sitk = _sitk()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = scan.array
    if array.dtype != np.int16:
        array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(tuple(float(v) for v in scan.origin))
    image.SetSpacing(tuple(float(v) for v in scan.spacing))
    image.SetDirection(tuple(float(v) for v in scan.direction.ravel()))
    path = folder / f"{scan.seriesuid}.mhd"
    sitk.WriteImage(image, str(path), False)  # LUNA16 ships uncompressed .raw
    return path


def list_scans(folder: str | Path) -> list[Path]:
    """The ``.mhd`` files of a folder (LUNA16 subsets are flat folders), sorted.

    Examples
    --------
    >>> import tempfile
    >>> list_scans(tempfile.mkdtemp())
    []
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of .mhd scans")
    return sorted(folder.glob("*.mhd"))


# --------------------------------------------------------------------- tables
@dataclass
class Finding:
    """One row of ``annotations.csv`` (a nodule) or of a candidates file.

    ``value`` is ``diameter_mm`` for annotations and ``probability`` for
    candidates; ``extra`` keeps any other columns (e.g. a nodule type).

    Examples
    --------
    >>> Finding("s1", -20.5, 31.0, -110.0, 8.0).world
    array([ -20.5,   31. , -110. ])
    """

    seriesuid: str
    x: float
    y: float
    z: float
    value: float
    extra: dict = field(default_factory=dict)

    @property
    def world(self) -> np.ndarray:
        """World position (mm, x/y/z)."""
        return np.array([self.x, self.y, self.z], dtype=np.float64)


def _read_table(path: str | Path, value_column: str) -> list[Finding]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        needed = ("seriesuid", "coordX", "coordY", "coordZ", value_column)
        missing = [c for c in needed if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {missing}; a LUNA16 table has the header "
                f"{','.join(needed)}"
            )
        rows = []
        for line_no, row in enumerate(reader, start=2):
            try:
                values = [float(row[c]) for c in needed[1:]]
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line_no}: not a number in {row}") from exc
            extra = {k: v for k, v in row.items() if k not in needed}
            rows.append(Finding(row["seriesuid"], *values, extra=extra))
    return rows


def _write_table(path: str | Path, rows: Iterable[Finding], value_column: str, extra: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", value_column, *extra])
        for row in rows:
            writer.writerow(
                [row.seriesuid, f"{row.x:.4f}", f"{row.y:.4f}", f"{row.z:.4f}", f"{row.value:.6g}"]
                + [row.extra.get(k, "") for k in extra]
            )
    return path


def read_annotations(path: str | Path) -> list[Finding]:
    """Read a LUNA16 ``annotations.csv`` (seriesuid, coordX, coordY, coordZ, diameter_mm).

    Extra columns (such as ``type``) are kept in :attr:`Finding.extra`.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "annotations.csv")
    >>> _ = write_annotations(path, [Finding("s1", 1.0, 2.0, 3.0, 6.5)])
    >>> read_annotations(path)[0].value
    6.5
    """
    return _read_table(path, "diameter_mm")


def write_annotations(path: str | Path, rows: Iterable[Finding], extra: Sequence[str] = ()) -> Path:
    """Write a LUNA16 ``annotations.csv``; ``extra`` names additional columns taken from ``Finding.extra``.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> write_annotations(path, [Finding("s1", 0, 0, 0, 5.0)]).name
    'a.csv'
    """
    return _write_table(path, rows, "diameter_mm", extra)


def read_candidates(path: str | Path) -> list[Finding]:
    """Read a LUNA16 candidates / submission CSV (seriesuid, coordX, coordY, coordZ, probability).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.csv")
    >>> _ = write_candidates(path, [Finding("s1", 1.0, 2.0, 3.0, 0.25)])
    >>> read_candidates(path)[0].value
    0.25
    """
    return _read_table(path, "probability")


def write_candidates(path: str | Path, rows: Iterable[Finding], extra: Sequence[str] = ()) -> Path:
    """Write a LUNA16 candidates CSV; ``extra`` names additional columns from ``Finding.extra``.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.csv")
    >>> write_candidates(path, [Finding("s1", 0, 0, 0, 0.9)]).name
    'c.csv'
    """
    return _write_table(path, rows, "probability", extra)


def read_series_list(path: str | Path) -> list[str]:
    """Read a one-column list of series UIDs (header ``seriesuid``).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "series.csv")
    >>> _ = write_series_list(path, ["a", "b"])
    >>> read_series_list(path)
    ['a', 'b']
    """
    with Path(path).open(newline="") as handle:
        rows = [line for line in csv.reader(handle) if line]
    if rows and rows[0][0] == "seriesuid":
        rows = rows[1:]
    return [r[0] for r in rows]


def write_series_list(path: str | Path, uids: Iterable[str]) -> Path:
    """Write a one-column list of series UIDs.

    Examples
    --------
    >>> import tempfile, os
    >>> write_series_list(os.path.join(tempfile.mkdtemp(), "s.csv"), ["x"]).name
    's.csv'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid"])
        for uid in uids:
            writer.writerow([uid])
    return path
