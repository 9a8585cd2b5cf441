"""LUNA16 scoring of a candidates list: hit rule, FROC, CPM, per-type sensitivity.

The rules of the LUNA16 challenge (Setio et al., 2017):

* a candidate *hits* a nodule of its scan when its distance to the nodule
  center is below the nodule radius (``diameter_mm / 2``);
* a nodule counts once however many candidates hit it (with the best score
  among them); the other candidates that hit it are neither true nor false
  positives;
* candidates that hit an *excluded* finding (``annotations_excluded.csv``:
  findings that are not nodules >= 3 mm) are ignored too; every other
  candidate is a false positive;
* the FROC curve is sensitivity against false positives per scan as the
  score threshold goes down; the CPM is the mean sensitivity at 1/8, 1/4,
  1/2, 1, 2, 4 and 8 false positives per scan, read off the curve by linear
  interpolation between its operating points (from (0, 0), and flat after
  the last one) as the official script does with ``numpy.interp``.

``min_diameter_mm`` restricts the truth to nodules at least that large (the
smaller ones move to the excluded list, so hitting them is not an error),
which is how "sensitivity for nodules >= 5 mm" is measured here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import Finding

CPM_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Match:
    """Outcome of matching the candidates of a set of scans to the truth.

    Attributes
    ----------
    nodule_score : ndarray of shape (n_nodules,)
        Best score of a candidate hitting each nodule; NaN if none does.
    fp_scores : ndarray
        Scores of the false-positive candidates.
    n_ignored : int
        Candidates that hit an already-hit nodule's area with a lower score
        or an excluded finding.
    """

    nodule_score: np.ndarray
    fp_scores: np.ndarray
    n_ignored: int


@dataclass
class Evaluation:
    """A LUNA16-style evaluation.

    Attributes
    ----------
    n_scans, n_nodules, n_candidates : int
        Scans evaluated, nodules in the truth, candidates in those scans.
    sensitivity : float
        Fraction of the nodules hit by any candidate (the whole list).
    candidates_per_scan : float
    fps_per_scan : float
        False positives per scan with the whole list.
    froc_fps, froc_sensitivity, froc_thresholds : ndarray
        The FROC operating points, starting at (0, 0) (threshold +inf).
    cpm : float
        Mean sensitivity at ``CPM_FP_RATES`` false positives per scan.
    cpm_points : dict
        Sensitivity at each of those rates.
    per_type : dict
        ``type -> (hit, total)`` when the nodules carry a ``type``.
    per_size : dict
        ``"lo-hi mm" -> (hit, total)``.
    nodule_hit : ndarray of bool
        Per nodule (in ``nodules`` order), whether it was hit.
    nodules : list of Finding
        The truth that was scored.
    """

    n_scans: int
    n_nodules: int
    n_candidates: int
    sensitivity: float
    candidates_per_scan: float
    fps_per_scan: float
    froc_fps: np.ndarray
    froc_sensitivity: np.ndarray
    froc_thresholds: np.ndarray
    cpm: float
    cpm_points: dict
    per_type: dict = field(default_factory=dict)
    per_size: dict = field(default_factory=dict)
    nodule_hit: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    nodules: list = field(default_factory=list)

    def summary(self) -> str:
        """A few lines of text with the headline numbers."""
        lines = [
            f"scans {self.n_scans}, nodules {self.n_nodules}, candidates/scan {self.candidates_per_scan:.1f}",
            f"sensitivity {self.sensitivity:.3f} at {self.fps_per_scan:.1f} FP/scan; CPM {self.cpm:.3f}",
            "FROC: " + ", ".join(f"{k:g}: {v:.3f}" for k, v in self.cpm_points.items()),
        ]
        if self.per_type:
            lines.append(
                "per type: " + ", ".join(f"{t} {h}/{n}" for t, (h, n) in sorted(self.per_type.items()))
            )
        if self.per_size:
            lines.append("per size: " + ", ".join(f"{s} {h}/{n}" for s, (h, n) in self.per_size.items()))
        return "\n".join(lines)


def hits(candidate_xyz, nodule_xyz, diameters) -> np.ndarray:
    """LUNA16 hit matrix: ``[i, j]`` is True when candidate i is inside nodule j's radius.

    Parameters
    ----------
    candidate_xyz : array-like of shape (n, 3)
        Candidate positions (world mm).
    nodule_xyz : array-like of shape (m, 3)
        Nodule centers (world mm).
    diameters : array-like of shape (m,)
        Nodule diameters (mm).

    Returns
    -------
    hit : ndarray of bool, shape (n, m)

    Examples
    --------
    >>> hits([[0, 0, 4.9], [0, 0, 5.0]], [[0, 0, 0]], [10.0]).ravel().tolist()
    [True, False]
    """
    c = np.asarray(candidate_xyz, np.float64).reshape(-1, 3)
    n = np.asarray(nodule_xyz, np.float64).reshape(-1, 3)
    d = np.linalg.norm(c[:, None, :] - n[None, :, :], axis=2)
    return d < np.asarray(diameters, np.float64).reshape(1, -1) / 2


def match(
    candidates: Sequence[Finding], nodules: Sequence[Finding], excluded: Sequence[Finding] = ()
) -> Match:
    """Match candidates to nodules with the LUNA16 rule (all scans at once).

    Parameters
    ----------
    candidates : sequence of Finding
        ``value`` is the score.
    nodules : sequence of Finding
        The truth; ``value`` is the diameter.
    excluded : sequence of Finding, optional
        Findings whose hits are ignored (``value`` is the diameter).

    Returns
    -------
    match : Match

    Examples
    --------
    >>> nod = [Finding("s", 0, 0, 0, 10.0)]
    >>> cands = [Finding("s", 1, 0, 0, 0.9), Finding("s", 2, 0, 0, 0.95), Finding("s", 40, 0, 0, 0.5)]
    >>> m = match(cands, nod)
    >>> m.nodule_score.tolist(), m.fp_scores.tolist(), m.n_ignored
    ([0.95], [0.5], 1)
    """
    by_scan_nod: dict[str, list[int]] = defaultdict(list)
    for j, n in enumerate(nodules):
        by_scan_nod[n.seriesuid].append(j)
    by_scan_exc: dict[str, list[Finding]] = defaultdict(list)
    for e in excluded:
        by_scan_exc[e.seriesuid].append(e)
    by_scan_cand: dict[str, list[Finding]] = defaultdict(list)
    for c in candidates:
        by_scan_cand[c.seriesuid].append(c)

    nodule_score = np.full(len(nodules), np.nan)
    fp_scores: list[float] = []
    n_ignored = 0
    for uid, cands in by_scan_cand.items():
        xyz = np.array([c.world for c in cands]).reshape(-1, 3)
        score = np.array([c.value for c in cands], np.float64)
        idx = by_scan_nod.get(uid, [])
        hit_nod = (
            hits(xyz, [nodules[j].world for j in idx], [nodules[j].value for j in idx])
            if idx
            else np.zeros((len(cands), 0), bool)
        )
        exc = by_scan_exc.get(uid, [])
        hit_exc = (
            hits(xyz, [e.world for e in exc], [e.value for e in exc]).any(1)
            if exc
            else np.zeros(len(cands), bool)
        )
        for k, j in enumerate(idx):
            if hit_nod[:, k].any():
                nodule_score[j] = score[hit_nod[:, k]].max()
        is_fp = ~hit_nod.any(1) & ~hit_exc
        fp_scores.extend(score[is_fp].tolist())
        # Every hitting candidate but the best one per nodule is ignored; a
        # candidate that is the best for some nodule counts once.
        best = np.zeros(len(cands), bool)
        for k in range(hit_nod.shape[1]):
            if hit_nod[:, k].any():
                rows = np.nonzero(hit_nod[:, k])[0]
                best[rows[np.argmax(score[rows])]] = True
        n_ignored += int(((hit_nod.any(1) | hit_exc) & ~best).sum())
    return Match(nodule_score, np.asarray(fp_scores, np.float64), n_ignored)


def froc_curve(nodule_score: np.ndarray, fp_scores: np.ndarray, n_scans: int):
    """FROC operating points: one per distinct score, from the highest down.

    Parameters
    ----------
    nodule_score : ndarray of shape (n_nodules,)
        Best hitting score per nodule (NaN for a missed nodule).
    fp_scores : ndarray
        Scores of the false positives.
    n_scans : int
        Number of scans (false positives are counted per scan).

    Returns
    -------
    fps : ndarray
        False positives per scan at each operating point, starting with 0.
    sensitivity : ndarray
        Fraction of nodules hit at each operating point, starting with 0.
    thresholds : ndarray
        The score thresholds (a candidate is kept when its score >= the
        threshold), starting with +inf.

    Examples
    --------
    >>> fps, sens, thr = froc_curve(np.array([0.9, np.nan]), np.array([0.95, 0.5]), n_scans=2)
    >>> fps.tolist(), sens.tolist(), thr.tolist()
    ([0.0, 0.5, 0.5, 1.0], [0.0, 0.0, 0.5, 0.5], [inf, 0.95, 0.9, 0.5])
    """
    if n_scans < 1:
        raise ValueError(f"n_scans must be positive, got {n_scans}")
    n_nodules = len(nodule_score)
    tp = np.asarray(nodule_score, np.float64)
    tp = tp[np.isfinite(tp)]
    fp = np.asarray(fp_scores, np.float64)
    thresholds = np.unique(np.concatenate([tp, fp]))[::-1]
    tp_sorted, fp_sorted = np.sort(tp), np.sort(fp)
    # Counts of scores >= each threshold.
    n_tp = len(tp_sorted) - np.searchsorted(tp_sorted, thresholds, side="left")
    n_fp = len(fp_sorted) - np.searchsorted(fp_sorted, thresholds, side="left")
    fps = np.concatenate([[0.0], n_fp / n_scans])
    sens = np.concatenate([[0.0], n_tp / max(n_nodules, 1)])
    return fps, sens, np.concatenate([[np.inf], thresholds])


def sensitivity_at(fps: np.ndarray, sensitivity: np.ndarray, rates=CPM_FP_RATES) -> np.ndarray:
    """Sensitivity at given false-positive rates, linearly interpolated on the FROC.

    Where several operating points share one FP rate the highest sensitivity
    counts; beyond the last point the curve stays flat.

    Examples
    --------
    >>> sensitivity_at(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.5, 1.0]), [0.5, 1.5, 8]).tolist()
    [0.25, 0.75, 1.0]
    """
    fps = np.asarray(fps, np.float64)
    sensitivity = np.asarray(sensitivity, np.float64)
    unique, inverse = np.unique(fps, return_inverse=True)
    best = np.full(len(unique), -np.inf)
    np.maximum.at(best, inverse.reshape(-1), sensitivity)
    return np.interp(np.asarray(rates, np.float64), unique, best)


def cpm_score(fps: np.ndarray, sensitivity: np.ndarray) -> float:
    """LUNA16's Competition Performance Metric: mean sensitivity at 1/8 ... 8 FP/scan.

    Examples
    --------
    >>> round(cpm_score(np.array([0.0, 8.0]), np.array([0.0, 1.0])), 6)   # (1/8+...+8)/8/7
    0.283482
    """
    return float(np.mean(sensitivity_at(fps, sensitivity, CPM_FP_RATES)))


def evaluate(
    candidates: Sequence[Finding],
    nodules: Sequence[Finding],
    seriesuids: Sequence[str] | None = None,
    *,
    excluded: Sequence[Finding] = (),
    min_diameter_mm: float = 0.0,
    size_bins: Sequence[float] = (3, 5, 10, 20, 30.01),
) -> Evaluation:
    """Score a candidates list against the truth, LUNA16 style.

    Parameters
    ----------
    candidates : sequence of Finding
        Candidates (``value`` = score); those of scans not in ``seriesuids``
        are dropped.
    nodules : sequence of Finding
        Annotations (``value`` = diameter, optional ``extra["type"]``).
    seriesuids : sequence of str, optional
        The scans evaluated (scans without nodules count for FP/scan); by
        default the scans that appear in ``nodules`` or ``candidates``.
    excluded : sequence of Finding, optional
        Findings whose hits are neither true nor false positives.
    min_diameter_mm : float, default=0
        Nodules smaller than this are moved to ``excluded``.
    size_bins : sequence of float
        Edges of the diameter bins of ``per_size``.

    Returns
    -------
    evaluation : Evaluation

    Examples
    --------
    >>> nod = [Finding("a", 0, 0, 0, 10.0, {"type": "solid"}), Finding("b", 0, 0, 0, 6.0, {"type": "ground-glass"})]
    >>> cands = [Finding("a", 1, 0, 0, 0.9), Finding("a", 30, 0, 0, 0.8), Finding("b", 9, 0, 0, 0.7)]
    >>> ev = evaluate(cands, nod)
    >>> ev.sensitivity, ev.fps_per_scan, ev.per_type
    (0.5, 1.0, {'ground-glass': (0, 1), 'solid': (1, 1)})
    """
    if seriesuids is None:
        seriesuids = sorted({n.seriesuid for n in nodules} | {c.seriesuid for c in candidates})
    scans = set(seriesuids)
    if not scans:
        raise ValueError("no scans to evaluate")
    truth = [n for n in nodules if n.seriesuid in scans and n.value >= min_diameter_mm]
    ignored = [n for n in nodules if n.seriesuid in scans and n.value < min_diameter_mm]
    ignored += [e for e in excluded if e.seriesuid in scans]
    cands = [c for c in candidates if c.seriesuid in scans]
    m = match(cands, truth, ignored)
    fps, sens, thr = froc_curve(m.nodule_score, m.fp_scores, len(scans))
    points = sensitivity_at(fps, sens, CPM_FP_RATES)
    hit = np.isfinite(m.nodule_score)

    per_type: dict[str, tuple[int, int]] = {}
    kinds = [n.extra.get("type") for n in truth]
    if any(kinds):
        for kind in sorted({k for k in kinds if k}):
            sel = np.array([k == kind for k in kinds])
            per_type[kind] = (int(hit[sel].sum()), int(sel.sum()))
    per_size: dict[str, tuple[int, int]] = {}
    diam = np.array([n.value for n in truth])
    for lo, hi in zip(size_bins[:-1], size_bins[1:]):
        sel = (diam >= lo) & (diam < hi)
        if sel.any():
            per_size[f"{lo:g}-{hi:.0f} mm"] = (int(hit[sel].sum()), int(sel.sum()))
    return Evaluation(
        n_scans=len(scans),
        n_nodules=len(truth),
        n_candidates=len(cands),
        sensitivity=float(hit.mean()) if len(truth) else float("nan"),
        candidates_per_scan=len(cands) / len(scans),
        fps_per_scan=len(m.fp_scores) / len(scans),
        froc_fps=fps,
        froc_sensitivity=sens,
        froc_thresholds=thr,
        cpm=float(points.mean()),
        cpm_points={r: float(s) for r, s in zip(CPM_FP_RATES, points)},
        per_type=per_type,
        per_size=per_size,
        nodule_hit=hit,
        nodules=truth,
    )


def plot_froc(evaluations: dict[str, Evaluation], path: str | Path, title: str = "FROC") -> Path:
    """Save FROC curves (log FP/scan axis, CPM rates marked) as a PNG.

    Parameters
    ----------
    evaluations : dict
        Legend label -> :class:`Evaluation`.
    path : str or Path
        Output ``.png``.
    title : str
        Figure title.

    Returns
    -------
    path : Path

    Examples
    --------
    >>> import tempfile, os
    >>> ev = evaluate([Finding("a", 0, 0, 0, 0.9)], [Finding("a", 0, 0, 0, 8.0)])
    >>> plot_froc({"demo": ev}, os.path.join(tempfile.mkdtemp(), "froc.png")).suffix
    '.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for label, ev in evaluations.items():
        fps = np.maximum(ev.froc_fps, 1e-3)
        ax.step(fps, ev.froc_sensitivity, where="post", label=f"{label} (CPM {ev.cpm:.3f})")
        ax.plot(list(ev.cpm_points), list(ev.cpm_points.values()), "o", ms=4, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlim(1 / 16, max(16.0, max(ev.froc_fps.max() for ev in evaluations.values()) * 1.2))
    ax.set_ylim(0, 1.02)
    for rate in CPM_FP_RATES:
        ax.axvline(rate, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.grid(True, axis="y", color="0.9")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
