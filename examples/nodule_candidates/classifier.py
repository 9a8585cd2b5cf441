"""A trained nodule-likeness score for the mean-shift clusters.

The hand-set :func:`~examples.nodule_candidates.detect.score_clusters` ranks
a scan's ~2,000-9,000 clusters (most of them vessel pieces, branch points
and the rim of the lungs) by size and roundness alone, and on the phantoms
half of the 5-10 mm and most ground-glass nodules fell below the 100th
candidate.  Here a small gradient-boosted tree ensemble is trained on the
cluster statistics of :class:`~examples.nodule_candidates.detect.Clusters`
and the image context around each mode
(:func:`~examples.nodule_candidates.detect.context_features`: distance to
the lung boundary, Hessian eigenvalues at 2 and 4 mm, contrast against the
surroundings), :data:`FEATURES`, instead.

* **Training data.**  Phantoms with seeds that the evaluation set does not
  use (``python -m examples.nodule_candidates train``; the README lists the
  sets, seeds 100-105; the README's evaluation sets are seed 0 and
  seed 7).  A cluster is a
  positive when its position hits an annotated nodule by the LUNA16 rule, a
  negative otherwise; clusters on excluded findings (micronodules) are left
  out.
* **Weights.**  A 30 mm nodule has ~70 modes and a 6 mm one 1 or 2; every
  nodule gets the same total weight (``positive_weight``, shared by its
  clusters), so the model learns to find small nodules rather than to
  recognise the inside of large ones.  Ground-glass nodules weigh 3x
  (:data:`TYPE_WEIGHTS`, where the training set says the type): together
  with the image context that raised the cross-validated CPM on the
  training phantoms from 0.32 to 0.38 (README).
* **Second stage.**  The first stage ranks ~10,000 clusters per scan; the
  best :data:`RERANK_TOP_M` of them (before suppression) are re-scored by a
  second ensemble of the same kind (:class:`TwoStageScorer`,
  ``nodule_rerank.json``) on :data:`RERANK_FEATURES`: the first stage's
  features and log-odds plus image-patch features
  (:mod:`~examples.nodule_candidates.patches`: radial profiles, shell
  anisotropy, the thresholded component, local HU).  It is trained on the
  first stage's *out-of-fold* ranking of the training scans
  (:func:`out_of_fold_scores`, 5 folds by scan), which is what it meets on
  new scans.  In the cross-validation on the training phantoms this raised
  the sensitivity at 100 candidates per scan from 0.844 to 0.901 and the
  CPM from 0.387 to 0.708 when it was introduced (README).
* **Storage.**  The ensembles are written as plain JSON (split features,
  thresholds, leaf values; ``nodule_model.json`` next to this file, ~40 KB)
  and evaluated here with numpy, so scoring needs neither pickle nor a
  particular scikit-learn version, and is deterministic.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .detect import Clusters, DetectorConfig, find_clusters, score_clusters, working_scan
from .io import Finding, Scan, list_scans, read_annotations, read_scan
from .patches import PATCH_FEATURES, patch_features, patch_matrix

MODEL_PATH = Path(__file__).with_name("nodule_model.json")
#: The second-stage (re-ranking) model, see :class:`TwoStageScorer`.
RERANK_PATH = Path(__file__).with_name("nodule_rerank.json")
#: Clusters per scan (best first by the first stage, before suppression) that
#: the second stage re-scores.  In the cross-validation (README) the best
#: 1,500 held a hit on 234 of the 243 training nodules >= 5 mm (the best 1,000
#: on 227, the best 500 on 219); chosen from that, before any second-stage fit.
RERANK_TOP_M = 1500

FEATURES = (
    "log_diameter",
    "mean_si",
    "round_fraction",
    "log_elongation",
    "mean_hu",
    "hu_std",
    "mode_hu",
    "mode_si",
    "core_fraction",
    "log_extent",
    "density_3mm",
    "density_6mm",
    "density_10mm",
    "log_support",
    "core_si",
    "core_round",
    "wall_mm",
    "hessian_2mm_1",
    "hessian_2mm_2",
    "hessian_2mm_3",
    "hessian_4mm_1",
    "hessian_4mm_2",
    "hessian_4mm_3",
    "contrast_2mm",
    "contrast_4mm",
)


def cluster_features(clusters: Clusters) -> np.ndarray:
    """The classifier's input: one row of :data:`FEATURES` per cluster.

    Parameters
    ----------
    clusters : Clusters
        Statistics with the optional fields filled in (as
        :func:`~examples.nodule_candidates.detect.find_clusters` does).

    Returns
    -------
    features : ndarray of shape (n_clusters, len(FEATURES)), float64

    Examples
    --------
    >>> from examples.nodule_candidates.detect import cluster_statistics
    >>> X = np.array([[0, 0, 0, -100, 1.0], [1, 0, 0, -50, 0.8], [9, 9, 9, 0, 0.7]], np.float32)
    >>> c = cluster_statistics(X, X[[0, 2]], np.array([0, 0, 1]), 2.0, bandwidth=np.array([4, 4, 4, 150, 0.15]))
    >>> # the image context (detect.context_features; here made up)
    >>> c.wall_mm, c.contrast_2mm, c.contrast_4mm = np.full(2, 20.0), np.zeros(2), np.zeros(2)
    >>> c.hessian_2mm = c.hessian_4mm = np.zeros((2, 3))
    >>> cluster_features(c).shape
    (2, 25)
    """
    if clusters.support_mm3 is None:
        raise ValueError("clusters lack the mode/core/density statistics; compute them with bandwidth= set")
    if clusters.wall_mm is None:
        raise ValueError("clusters lack the image context; fill it in with detect.context_features")
    diameter = np.cbrt(6.0 * np.maximum(clusters.volume_mm3, 1e-3) / np.pi)
    columns = {
        "log_diameter": np.log(diameter),
        "mean_si": clusters.mean_si,
        "round_fraction": clusters.round_fraction,
        "log_elongation": np.log(clusters.elongation),
        "mean_hu": clusters.mean_hu,
        "hu_std": clusters.hu_std,
        "mode_hu": clusters.mode_hu,
        "mode_si": clusters.mode_si,
        "core_fraction": clusters.core_fraction,
        "log_extent": np.log(clusters.extent_mm + 0.5),
        "density_3mm": clusters.density_3mm,
        "density_6mm": clusters.density_6mm,
        "density_10mm": clusters.density_10mm,
        "log_support": np.log(clusters.support_mm3 + 1.0),
        "core_si": clusters.core_si,
        "core_round": clusters.core_round,
        "wall_mm": clusters.wall_mm,
        "contrast_2mm": clusters.contrast_2mm,
        "contrast_4mm": clusters.contrast_4mm,
    }
    for scale in ("2mm", "4mm"):
        eigenvalues = np.asarray(getattr(clusters, f"hessian_{scale}"), np.float64).reshape(-1, 3)
        for k in range(3):
            columns[f"hessian_{scale}_{k + 1}"] = eigenvalues[:, k]
    if len(clusters) == 0:
        return np.zeros((0, len(FEATURES)))
    F = np.column_stack([np.asarray(columns[name], np.float64) for name in FEATURES])
    return np.nan_to_num(F, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class TreeEnsemble:
    """A binary gradient-boosted tree ensemble, evaluated with numpy.

    ``score = 1 / (1 + exp(-(init + learning_rate * sum of the trees' leaf values)))``;
    a node sends a row left when ``feature <= threshold``, with the feature
    first rounded to float32 when ``float32_inputs`` (as
    ``GradientBoostingClassifier``'s trees do; ``HistGradientBoostingClassifier``
    compares float64).

    Attributes
    ----------
    features : list of str
        Names of the input columns.
    init : float
        Raw (log-odds) prediction before the trees.
    learning_rate : float
    trees : list of dict
        Per tree, equal-length lists ``feature``, ``threshold``, ``left``,
        ``right``, ``value`` (``left == -1`` marks a leaf).
    meta : dict
        How the model was trained (seeds, sizes, parameters).
    float32_inputs : bool
        Round the inputs to float32 before comparing (see above).

    Examples
    --------
    >>> stump = {"feature": [0, -1, -1], "threshold": [0.5, 0, 0], "left": [1, -1, -1],
    ...          "right": [2, -1, -1], "value": [0, -1.0, 1.0]}
    >>> model = TreeEnsemble(["a"], init=0.0, learning_rate=1.0, trees=[stump])
    >>> model.decision_function(np.array([[0.0], [1.0]])).tolist()
    [-1.0, 1.0]
    """

    features: list
    init: float
    learning_rate: float
    trees: list
    meta: dict | None = None
    float32_inputs: bool = True

    def decision_function(self, F: np.ndarray) -> np.ndarray:
        """Raw log-odds of each row of ``F`` (columns in ``self.features`` order)."""
        F = np.asarray(F, np.float32 if self.float32_inputs else np.float64).astype(np.float64)
        raw = np.full(len(F), float(self.init))
        rows = np.arange(len(F))
        for tree in self.trees:
            feature = np.asarray(tree["feature"], np.int64)
            threshold = np.asarray(tree["threshold"], np.float64)
            left = np.asarray(tree["left"], np.int64)
            right = np.asarray(tree["right"], np.int64)
            value = np.asarray(tree["value"], np.float64)
            node = np.zeros(len(F), np.int64)
            while True:
                inner = left[node] >= 0
                if not inner.any():
                    break
                go_left = F[rows, np.maximum(feature[node], 0)] <= threshold[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            raw += self.learning_rate * value[node]
        return raw

    def score(self, clusters: Clusters) -> np.ndarray:
        """Nodule-likeness in (0, 1) of every cluster."""
        if len(clusters) == 0:
            return np.zeros(0)
        if list(self.features) != list(FEATURES):
            raise ValueError(f"model was trained on features {self.features}, this code computes {list(FEATURES)}")
        return 1.0 / (1.0 + np.exp(-self.decision_function(cluster_features(clusters))))

    __call__ = score

    @classmethod
    def from_sklearn(cls, model, features: Sequence[str], check: np.ndarray | None = None, meta=None) -> "TreeEnsemble":
        """Export a fitted binary ``GradientBoostingClassifier`` or ``HistGradientBoostingClassifier``.

        ``check`` rows (if given) are used to read off the initial raw
        prediction and to verify that the export agrees with scikit-learn.
        """
        trees = []
        if hasattr(model, "_predictors"):  # HistGradientBoostingClassifier
            if getattr(model, "is_categorical_", None) is not None and np.any(model.is_categorical_):
                raise ValueError("categorical splits cannot be exported")
            for (predictor,) in model._predictors:
                nodes = predictor.nodes
                leaf = nodes["is_leaf"].astype(bool)
                trees.append(
                    {
                        "feature": np.where(leaf, -1, nodes["feature_idx"].astype(np.int64)).tolist(),
                        "threshold": np.where(leaf, 0.0, nodes["num_threshold"]).tolist(),
                        "left": np.where(leaf, -1, nodes["left"].astype(np.int64)).tolist(),
                        "right": np.where(leaf, -1, nodes["right"].astype(np.int64)).tolist(),
                        "value": np.where(leaf, nodes["value"], 0.0).tolist(),
                    }
                )
            # Leaf values already include the learning rate; inputs are float64.
            out = cls(list(features), 0.0, 1.0, trees, meta, float32_inputs=False)
        else:
            for estimator in model.estimators_[:, 0]:
                t = estimator.tree_
                leaf = t.children_left < 0
                trees.append(
                    {
                        "feature": np.where(leaf, -1, t.feature).tolist(),
                        "threshold": np.where(leaf, 0.0, t.threshold).tolist(),
                        "left": t.children_left.tolist(),
                        "right": t.children_right.tolist(),
                        "value": np.where(leaf, t.value[:, 0, 0], 0.0).tolist(),
                    }
                )
            out = cls(list(features), 0.0, float(model.learning_rate), trees, meta)
        if check is not None and len(check):
            reference = model.decision_function(check)
            offset = reference - out.decision_function(check)
            out.init = float(np.median(offset))
            if not np.allclose(offset, out.init, atol=1e-6):
                raise RuntimeError("exported trees disagree with scikit-learn")
        return out

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (leaf values rounded to 7 significant digits, thresholds exact).

        Thresholds are kept exact: rounded, they would send inputs that lie
        between a threshold and its rounding down the other branch.
        """
        def compact(values):
            return [float(f"{v:.7g}") for v in values]

        trees = [{**t, "threshold": [float(v) for v in t["threshold"]], "value": compact(t["value"])} for t in self.trees]
        data = {"features": self.features, "init": self.init, "learning_rate": self.learning_rate,
                "float32_inputs": self.float32_inputs, "meta": self.meta or {}, "trees": trees}  # fmt: skip
        path = Path(path)
        path.write_text(json.dumps(data, separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TreeEnsemble":
        """Read a model written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        return cls(data["features"], float(data["init"]), float(data["learning_rate"]), data["trees"], data.get("meta"),
                   bool(data.get("float32_inputs", True)))  # fmt: skip


#: Columns of the second stage: the first stage's features, the patch
#: features and the first stage's log-odds.
RERANK_FEATURES = (*FEATURES, *PATCH_FEATURES, "stage1_logit")


def rerank_matrix(clusters: Clusters, patch: dict, stage1_logit: np.ndarray) -> np.ndarray:
    """Rows of :data:`RERANK_FEATURES` for ``clusters`` (their patch features and first-stage log-odds)."""
    return np.hstack([cluster_features(clusters), patch_matrix(patch), np.asarray(stage1_logit, np.float64)[:, None]])


@dataclass
class TwoStageScorer:
    """First-stage trees on every cluster, second-stage trees on the best ``top_m``.

    The first stage (:data:`FEATURES`) ranks a scan's ~10,000 clusters; the
    best ``top_m`` of them (before suppression) get
    :func:`~examples.nodule_candidates.patches.patch_features` of the image
    around them and are re-scored by the second stage
    (:data:`RERANK_FEATURES`).  Their score is the second stage's
    probability; every other cluster gets its first-stage probability times
    the lowest of those, so it ranks below all re-scored ones in first-stage
    order.

    Attributes
    ----------
    first, second : TreeEnsemble
    top_m : int
    uses_image : bool
        True: :func:`~examples.nodule_candidates.detect.detect_candidates`
        passes the working-grid scan.

    Examples
    --------
    >>> scorer = default_scorer()
    >>> isinstance(scorer, TwoStageScorer), scorer.top_m
    (True, 1500)
    """

    first: TreeEnsemble
    second: TreeEnsemble
    top_m: int = RERANK_TOP_M
    uses_image = True

    def score(self, clusters: Clusters, work: Scan | None = None, timings: dict | None = None) -> np.ndarray:
        """Scores in (0, 1) of every cluster; ``work`` is the working-grid scan the clusters came from."""
        if work is None:
            raise ValueError("the two-stage scorer needs the working-grid scan (work=...)")
        if list(self.second.features) != list(RERANK_FEATURES):
            raise ValueError(
                f"second stage was trained on {self.second.features}, this code computes {list(RERANK_FEATURES)}"
            )
        n = len(clusters)
        if n == 0:
            return np.zeros(0)
        raw1 = self.first.decision_function(cluster_features(clusters))
        top = np.argsort(-raw1, kind="stable")[: self.top_m]
        t0 = time.perf_counter()
        patch = patch_features(work, clusters.center[top])
        if timings is not None:
            timings["patches"] = time.perf_counter() - t0
        raw2 = self.second.decision_function(rerank_matrix(clusters.take(top), patch, raw1[top]))
        return combine_stages(raw1, top, raw2)

    __call__ = score


def combine_stages(raw1: np.ndarray, top: np.ndarray, raw2: np.ndarray) -> np.ndarray:
    """Scores of all clusters from the first stage's log-odds and the second stage's on ``top``.

    The re-scored clusters get the second stage's probability; the others
    their first-stage probability times the lowest of those, so they rank
    below all re-scored ones, in first-stage order.  Log-odds are clipped
    to +-30 so that no probability rounds to 0 or 1 (a zero minimum would
    collapse the others into one tie).

    Examples
    --------
    >>> combine_stages(np.array([2.0, 0.0, -1.0]), np.array([1]), np.array([3.0])).round(3).tolist()
    [0.839, 0.953, 0.256]
    """
    p2 = 1.0 / (1.0 + np.exp(-np.clip(raw2, -30.0, 30.0)))
    scores = (1.0 / (1.0 + np.exp(-np.clip(raw1, -30.0, 30.0)))) * (p2.min() * (1.0 - 1e-9))
    scores[top] = p2
    return scores


def default_scorer() -> Callable[..., np.ndarray]:
    """The shipped models: :class:`TwoStageScorer` from ``nodule_model.json`` and ``nodule_rerank.json``.

    Falls back to the first stage alone when ``nodule_rerank.json`` is
    missing, and to the hand-set score when both are.

    Examples
    --------
    >>> callable(default_scorer())
    True
    """
    if MODEL_PATH.is_file() and RERANK_PATH.is_file():
        second = TreeEnsemble.load(RERANK_PATH)
        top_m = int((second.meta or {}).get("top_m", RERANK_TOP_M))
        return TwoStageScorer(TreeEnsemble.load(MODEL_PATH), second, top_m)
    if MODEL_PATH.is_file():
        warnings.warn(f"{RERANK_PATH.name} not found; scoring with the first stage only", stacklevel=2)
        return TreeEnsemble.load(MODEL_PATH)
    warnings.warn(f"{MODEL_PATH.name} not found; using the hand-set score_clusters", stacklevel=2)
    return score_clusters


#: Extra weight of a nodule by its ``type`` (phantoms' ``nodule_types.csv``);
#: chosen by cross-validation on the training phantoms (see the README).
TYPE_WEIGHTS = {"ground-glass": 3.0}


def label_clusters(
    clusters: Clusters,
    nodules: Sequence[Finding],
    excluded: Sequence[Finding] = (),
    positive_weight: float = 50.0,
    type_weights: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Training labels and weights of one scan's clusters.

    Parameters
    ----------
    clusters : Clusters
        The scan's clusters.
    nodules : sequence of Finding
        Annotated nodules of this scan (``value`` = diameter in mm).
    excluded : sequence of Finding
        Excluded findings; clusters hitting them get weight 0.
    positive_weight : float, default=50
        Total weight of each nodule, shared equally by the clusters hitting it
        (negatives weigh 1 each).
    type_weights : dict, optional
        Factor on ``positive_weight`` by the nodule's ``extra["type"]``
        (missing types: 1).  Ground-glass nodules are rare and faint, and
        with equal weight the scorer gave them up.

    Returns
    -------
    y : ndarray of int, shape (n,)
        1 where the cluster position hits a nodule (LUNA16 rule).
    weight : ndarray of shape (n,)

    Examples
    --------
    >>> c = Clusters(center=np.array([[0.0, 0, 0], [1, 0, 0], [20, 0, 0], [40, 0, 0]]),
    ...              **{k: np.zeros(4) for k in ("n_voxels", "volume_mm3", "mean_hu", "mean_si",
    ...                                          "round_fraction", "elongation", "extent_mm")})
    >>> y, w = label_clusters(c, [Finding("s", 0, 0, 0, 6.0)], [Finding("s", 40, 0, 0, 2.0)], 10.0)
    >>> y.tolist(), w.tolist()
    ([1, 1, 0, 0], [5.0, 5.0, 1.0, 0.0])
    >>> ggn = Finding("s", 0, 0, 0, 6.0, {"type": "ground-glass"})
    >>> label_clusters(c, [ggn], [], 10.0, {"ground-glass": 3.0})[1].tolist()
    [15.0, 15.0, 1.0, 1.0]
    """
    type_weights = type_weights or {}
    n = len(clusters)
    y = np.zeros(n, np.int64)
    weight = np.ones(n)
    for nodule in nodules:
        hit = np.linalg.norm(clusters.center - nodule.world, axis=1) < nodule.value / 2
        y[hit] = 1
        if hit.any():
            factor = float(type_weights.get(nodule.extra.get("type", ""), 1.0))
            weight[hit] = factor * positive_weight / hit.sum()
    for finding in excluded:
        weight[(np.linalg.norm(clusters.center - finding.world, axis=1) < finding.value / 2) & (y == 0)] = 0.0
    return y, weight


def _scan_rows(path: str, mine: list, excl: list, config: DetectorConfig) -> dict:
    """One scan's rows of :func:`training_table` (``nodule`` numbered within the scan)."""
    import torch

    t0 = time.perf_counter()
    if _in_worker():
        # Workers share the cores: one thread each.
        torch.set_num_threads(1)
    scan = read_scan(path)
    clusters, _, _ = find_clusters(scan, config)
    y, w = label_clusters(clusters, mine, excl, type_weights=TYPE_WEIGHTS)
    # Which nodule each positive hits and its type factor: the second
    # stage shares a nodule's weight among its hits in the top M only.
    nodule = np.full(len(y), -1)
    factor = np.ones(len(y))
    for k, nod in enumerate(mine):
        hit = np.linalg.norm(clusters.center - nod.world, axis=1) < nod.value / 2
        nodule[hit] = k
        factor[hit] = float(TYPE_WEIGHTS.get(nod.extra.get("type", ""), 1.0))
    return {"F": cluster_features(clusters), "y": y, "w": w,
            "center": np.asarray(clusters.center, np.float64).reshape(-1, 3), "nodule": nodule, "factor": factor,
            "seriesuid": scan.seriesuid, "seconds": time.perf_counter() - t0}  # fmt: skip


def _in_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


def training_table(folders: Sequence[str | Path], config: DetectorConfig | None = None, progress=None,
                   jobs: int = 1):  # fmt: skip
    """Features, labels, weights and scan index of every cluster of the phantom folders.

    Each folder is a phantom set (``write_phantom_set``): ``.mhd`` scans with
    ``annotations.csv`` and ``annotations_excluded.csv``; where it also has
    ``nodule_types.csv`` (the phantoms' annotations with the nodule types),
    that is read instead, and nodules are weighted by :data:`TYPE_WEIGHTS`.
    ``jobs`` > 1 detects that many scans at once in worker processes (one
    torch thread each); the table is the same.

    Returns
    -------
    table : dict
        Per cluster: ``F`` (:data:`FEATURES`), ``y``, ``w`` (see
        :func:`label_clusters`), ``scan`` (index into ``paths``), ``center``
        (world mm), ``nodule`` (a running index of the nodule it hits, -1
        for none) and ``factor`` (that nodule's type weight); and ``paths``,
        the scans in order (:func:`rerank_table` reads them again), and
        ``nodules`` and ``excluded``, their annotations.
    """
    config = config or DetectorConfig()
    work = []
    for folder in map(Path, folders):
        typed = folder / "nodule_types.csv"
        nodules = read_annotations(typed if typed.is_file() else folder / "annotations.csv")
        excluded = read_annotations(folder / "annotations_excluded.csv")
        for path in list_scans(folder):
            uid = path.stem
            work.append((str(path), [n for n in nodules if n.seriesuid == uid],
                         [e for e in excluded if e.seriesuid == uid]))  # fmt: skip

    def report(rows):
        if progress is not None:
            progress(f"{rows['seriesuid']}: {len(rows['y'])} clusters, {int(rows['y'].sum())} on nodules, "
                     f"{rows['seconds']:.1f} s")  # fmt: skip
        return rows

    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_scan_rows, path, mine, excl, config) for path, mine, excl in work]
            per_scan = [report(f.result()) for f in futures]
    else:
        per_scan = [report(_scan_rows(path, mine, excl, config)) for path, mine, excl in work]
    table = {"F": [], "y": [], "w": [], "scan": [], "center": [], "nodule": [], "factor": []}
    n_nodules = 0
    for k, ((_, mine, _), rows) in enumerate(zip(work, per_scan)):
        for key in ("F", "y", "w", "center", "factor"):
            table[key].append(rows[key])
        table["nodule"].append(np.where(rows["nodule"] >= 0, rows["nodule"] + n_nodules, -1))
        table["scan"].append(np.full(len(rows["y"]), k))
        n_nodules += len(mine)
    return {**{key: np.concatenate(v) for key, v in table.items()}, "paths": [path for path, _, _ in work],
            "nodules": [n for _, mine, _ in work for n in mine], "excluded": [e for _, _, excl in work for e in excl]}


#: Histogram gradient boosting (scikit-learn's ``HistGradientBoostingClassifier``)
#: for both stages: 200 trees of at most 15 leaves, no early stopping, so
#: that a fit is deterministic.  In the cross-validation on the training
#: phantoms it ranked as well as the earlier ``GradientBoostingClassifier``
#: (100 trees of depth 3) at 100 candidates per scan, with a higher CPM
#: (0.775 against 0.711 on the 70 scans of the previous round), and fits
#: about 8 times faster (README).
GB_PARAMS = {"max_iter": 200, "learning_rate": 0.1, "max_leaf_nodes": 15, "early_stopping": False,
             "random_state": 0}  # fmt: skip


def _boosted_trees(F: np.ndarray, y: np.ndarray, w: np.ndarray):
    """A fitted :data:`GB_PARAMS` ``HistGradientBoostingClassifier``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(**GB_PARAMS).fit(F, y, sample_weight=w)


def _negative_subsample(y: np.ndarray, w: np.ndarray, neg_keep: float, seed: int):
    """Rows to fit on (every positive, a random ``neg_keep`` of the negatives) and all rows' weights."""
    rng = np.random.default_rng(seed)
    keep = (y == 1) | (rng.random(len(y)) < neg_keep)
    return keep, np.where(y == 1, w, w / neg_keep)


def fit_model(F: np.ndarray, y: np.ndarray, w: np.ndarray, meta: dict | None = None,
              neg_keep: float = 0.25, seed: int = 0) -> TreeEnsemble:  # fmt: skip
    """Fit the first stage and export it.

    :data:`GB_PARAMS` gradient boosting (deterministic: fixed
    ``random_state``) on every positive and a random ``neg_keep`` of the
    negatives (weight ``1 / neg_keep``): exactly as the folds of
    :func:`out_of_fold_scores` are fitted, so that the second stage, trained
    on those out-of-fold log-odds, meets log-odds of the same scale.
    """
    keep, weight = _negative_subsample(y, w, neg_keep, seed)
    model = _boosted_trees(F[keep], y[keep], weight[keep])
    meta = {**(meta or {}), "sklearn_model": "HistGradientBoostingClassifier", "sklearn_params": GB_PARAMS,
            "neg_keep": neg_keep, "n_clusters": int(len(y)), "n_positive": int(y.sum())}  # fmt: skip
    return TreeEnsemble.from_sklearn(model, FEATURES, check=F[:: max(1, len(F) // 2000)], meta=meta)


def out_of_fold_scores(table: dict, folds: int = 5, neg_keep: float = 0.25, seed: int = 0) -> np.ndarray:
    """First-stage log-odds of every training cluster from a model that did not see its scan.

    Scan ``k`` is in fold ``k mod folds``; each fold's model is
    :data:`GB_PARAMS` fitted on the other folds with a random ``neg_keep``
    of their negatives (weight ``1 / neg_keep``), as in the README's
    cross-validation.  The second stage is trained on these scores: on its
    own training scans the first stage ranks nodules far better than on new
    ones, and the second stage has to learn the latter.

    Returns
    -------
    raw : ndarray of shape (n_clusters,)
    """
    F, y, w, scan = table["F"], table["y"], table["w"], table["scan"]
    raw = np.zeros(len(y))
    fold = scan % folds
    sample, weight = _negative_subsample(y, w, neg_keep, seed)
    for f in range(folds):
        rows = sample & (fold != f)
        model = _boosted_trees(F[rows], y[rows], weight[rows])
        raw[fold == f] = model.decision_function(F[fold == f])
    return raw


def rerank_table(table: dict, stage1_raw: np.ndarray, top_m: int = RERANK_TOP_M,
                 positive_weight: float = 50.0, working_mm: float | None = None, progress=None) -> dict:
    """Second-stage training rows: the best ``top_m`` clusters of every scan by ``stage1_raw``.

    Each scan is read again for :func:`~examples.nodule_candidates.patches.patch_features`.
    Weights as in :func:`label_clusters`, among the selected rows: each
    nodule ``positive_weight`` times its type factor, shared by its hits;
    excluded findings 0; negatives 1.
    """
    working_mm = DetectorConfig().working_mm if working_mm is None else working_mm
    rows = {"F": [], "y": [], "w": [], "scan": []}
    for k, path in enumerate(table["paths"]):
        t0 = time.perf_counter()
        index = np.nonzero(table["scan"] == k)[0]
        top = index[np.argsort(-stage1_raw[index], kind="stable")[:top_m]]
        work = working_scan(read_scan(path), working_mm)
        patch = patch_features(work, table["center"][top])
        F = np.hstack([table["F"][top], patch_matrix(patch), stage1_raw[top][:, None]])
        y = table["y"][top]
        w = np.where((table["w"][top] == 0) & (y == 0), 0.0, 1.0)
        for nodule in np.unique(table["nodule"][top]):
            if nodule < 0:
                continue
            hit = table["nodule"][top] == nodule
            w[hit] = table["factor"][top][hit] * positive_weight / hit.sum()
        for key, value in (("F", F), ("y", y), ("w", w), ("scan", np.full(len(y), k))):
            rows[key].append(value)
        if progress is not None:
            seconds = time.perf_counter() - t0
            progress(f"{Path(path).stem}: {len(top)} re-ranked, {int(y.sum())} on nodules, {seconds:.1f} s")
    return {key: np.concatenate(v) for key, v in rows.items()}


def fit_reranker(F: np.ndarray, y: np.ndarray, w: np.ndarray, meta: dict | None = None,
                 top_m: int = RERANK_TOP_M) -> TreeEnsemble:
    """Fit the second stage (:data:`GB_PARAMS` on :data:`RERANK_FEATURES`) and export it."""
    model = _boosted_trees(F, y, w)
    meta = {**(meta or {}), "top_m": int(top_m), "sklearn_model": "HistGradientBoostingClassifier",
            "sklearn_params": GB_PARAMS, "n_rows": int(len(y)), "n_positive": int(y.sum())}  # fmt: skip
    return TreeEnsemble.from_sklearn(model, RERANK_FEATURES, check=F[:: max(1, len(F) // 2000)], meta=meta)


def cross_validate(table: dict, stage1_raw: np.ndarray, rows: dict, config: DetectorConfig | None = None,
                   folds: int = 5) -> dict:  # fmt: skip
    """Held-out candidates of every training scan, scored LUNA16 style.

    ``stage1_raw`` are the out-of-fold first-stage log-odds
    (:func:`out_of_fold_scores`) and ``rows`` the second stage's training
    rows built from them (:func:`rerank_table`).  For each fold (scan ``k``
    in fold ``k mod folds``, as for the first stage) a second stage is
    fitted on the other folds' rows and re-scores the held-out scans' top
    clusters; then, as in :func:`~examples.nodule_candidates.detect.detect_candidates`,
    scores are combined (:func:`combine_stages`), near duplicates
    suppressed and the best ``config.max_candidates`` kept.

    Returns
    -------
    evaluations : dict
        ``"all nodules"`` and ``"nodules >= 5 mm"``:
        :class:`~examples.nodule_candidates.evaluate.Evaluation` of the
        held-out candidates.
    """
    from .detect import suppress_near
    from .evaluate import evaluate

    config = config or DetectorConfig()
    raw2 = np.zeros(len(rows["y"]))
    fold = rows["scan"] % folds
    for f in range(folds):
        model = _boosted_trees(rows["F"][fold != f], rows["y"][fold != f], rows["w"][fold != f])
        raw2[fold == f] = model.decision_function(rows["F"][fold == f])
    density = table["F"][:, FEATURES.index("density_10mm")]
    candidates, series = [], []
    for k, path in enumerate(table["paths"]):
        index = np.nonzero(table["scan"] == k)[0]
        # The same top M, in the same order, as rerank_table took.
        local_top = np.argsort(-stage1_raw[index], kind="stable")[: np.count_nonzero(rows["scan"] == k)]
        scores = combine_stages(stage1_raw[index], local_top, raw2[rows["scan"] == k])
        radius = None
        if config.nms_large_mm > config.nms_mm:
            radius = np.where(density[index] > config.nms_large_density, config.nms_large_mm, config.nms_mm)
        center = table["center"][index]
        order = suppress_near(center, scores, config.nms_mm, radius_per=radius)[: config.max_candidates]
        uid = Path(path).stem
        series.append(uid)
        candidates += [Finding(uid, *map(float, center[i]), float(scores[i])) for i in order]
    return {
        "all nodules": evaluate(candidates, table["nodules"], series, excluded=table["excluded"]),
        "nodules >= 5 mm": evaluate(candidates, table["nodules"], series, excluded=table["excluded"],
                                    min_diameter_mm=5.0),  # fmt: skip
    }
