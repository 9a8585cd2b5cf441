"""Tests of the lung-nodule candidate example (examples/nodule_candidates).

Small volumes only: the whole file runs in well under a minute on 2 cores.
CPU only: the detector runs with ``DetectorConfig(device="cpu")`` / ``--device
cpu``; the feature and scoring helpers work on CPU tensors and numpy.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("SimpleITK")
pytest.importorskip("scipy")

from examples.nodule_candidates import io as nio  # noqa: E402
from examples.nodule_candidates.__main__ import main  # noqa: E402
from examples.nodule_candidates.detect import (  # noqa: E402
    DetectorConfig,
    detect_candidates,
    mean_shift_clusters,
    working_scan,
)
from examples.nodule_candidates.evaluate import CPM_FP_RATES, evaluate, froc_curve, match  # noqa: E402
from examples.nodule_candidates.lung import segment_lungs  # noqa: E402
from examples.nodule_candidates.phantom import make_phantom  # noqa: E402
from examples.nodule_candidates.shape_index import shape_features  # noqa: E402

F = nio.Finding


# ----------------------------------------------------------------- shape index
def _grid_mm(shape_zyx, spacing_xyz):
    """World-like mm coordinates (x, y, z) of voxel centers, centred on the volume."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape_zyx, spacing_xyz[::-1])]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return x, y, z


def _surface_si(volume, spacing_xyz, sigma, shell):
    feats = shape_features(volume, spacing_xyz, sigma)
    si = feats.shape_index.numpy()
    return si[shell & np.isfinite(si)]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.0)])
def test_shape_index_of_a_bright_ball_is_one(spacing):
    x, y, z = _grid_mm((25 if spacing[2] > 1 else 41, 41, 41), spacing)
    r = np.sqrt(x**2 + y**2 + z**2)
    ball = np.where(r <= 7.0, 40.0, -850.0)
    si = _surface_si(ball, spacing, 1.5, np.abs(r - 7.0) < 1.5)
    assert si.size > 100
    assert np.median(si) > 0.95
    assert np.mean(si > 0.85) > 0.9


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.0)])
def test_shape_index_of_a_tube_is_three_quarters(spacing):
    # A tube along a diagonal in the x-z plane, so anisotropic slices matter.
    x, y, z = _grid_mm((31 if spacing[2] > 1 else 51, 41, 41), spacing)
    axis = np.array([1.0, 0.0, 1.0]) / np.sqrt(2)
    along = x * axis[0] + z * axis[2]
    d = np.sqrt(x**2 + y**2 + z**2 - along**2)
    tube = np.where(d <= 3.0, 40.0, -850.0)
    # Away from the volume's faces, where the tube is cut.
    inner = (np.abs(along) < 8.0) & (np.abs(d - 3.0) < 1.0)
    si = _surface_si(tube, spacing, 1.2, inner)
    assert si.size > 50
    assert 0.70 < np.median(si) < 0.80
    assert np.mean(si > 0.9) < 0.1  # not mistaken for a blob


def test_shape_index_of_a_dark_hole_is_zero():
    x, y, z = _grid_mm((31, 31, 31), (1.0, 1.0, 1.0))
    r = np.sqrt(x**2 + y**2 + z**2)
    hole = np.where(r <= 6.0, -850.0, 40.0)
    si = _surface_si(hole, (1, 1, 1), 1.5, np.abs(r - 6.0) < 1.0)
    assert np.median(si) < 0.05


# ----------------------------------------------------------------- geometry / io
def test_world_voxel_round_trip_anisotropic_and_rotated():
    rng = np.random.default_rng(0)
    origin = np.array([-187.3, -210.9, -330.25])
    spacing = np.array([0.68, 0.68, 2.5])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    for direction in (np.eye(3), q):
        world = rng.uniform(-150, 150, (20, 3))
        vox = nio.world_to_voxel(world, origin, spacing, direction)
        np.testing.assert_allclose(nio.voxel_to_world(vox, origin, spacing, direction), world, atol=1e-9)
        zyx = nio.world_to_index_zyx(world, origin, spacing, direction)
        np.testing.assert_allclose(zyx, vox[:, ::-1])
        np.testing.assert_allclose(nio.index_zyx_to_world(zyx, origin, spacing, direction), world, atol=1e-9)
    # LUNA16's formula for the identity direction, by hand.
    np.testing.assert_allclose(
        nio.world_to_voxel([[-187.3 + 0.68 * 10, -210.9 + 0.68 * 20, -330.25 + 2.5 * 3]], origin, spacing),
        [[10, 20, 3]],
    )


def test_luna_scan_round_trip_and_simpleitk_geometry(tmp_path):
    import SimpleITK as sitk

    array = np.full((6, 7, 8), -1000, np.int16)
    array[4, 2, 5] = 300  # z=4, y=2, x=5
    scan = nio.Scan(array, origin=[-100.5, 20.0, -300.0], spacing=[0.7, 0.8, 2.5], seriesuid="1.2.3")
    path = nio.write_scan(scan, tmp_path)
    assert path.name == "1.2.3.mhd" and (tmp_path / "1.2.3.raw").is_file()
    header = dict(line.split(" = ", 1) for line in path.read_text().splitlines())
    np.testing.assert_allclose([float(v) for v in header["ElementSpacing"].split()], [0.7, 0.8, 2.5])
    np.testing.assert_allclose([float(v) for v in header["Offset"].split()], [-100.5, 20, -300])
    assert header["ElementType"] == "MET_SHORT" and header["DimSize"] == "8 7 6"
    back = nio.read_scan(path)
    assert back.seriesuid == "1.2.3" and back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, [0.7, 0.8, 2.5])
    # Our world position of array[4, 2, 5] is SimpleITK's physical point of index (5, 2, 4).
    world = nio.index_zyx_to_world([4, 2, 5], back.origin, back.spacing, back.direction)
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(world, image.TransformIndexToPhysicalPoint((5, 2, 4)))
    k, j, i = np.rint(nio.world_to_index_zyx(world, back.origin, back.spacing)).astype(int)
    assert back.array[k, j, i] == 300


def test_annotations_and_candidates_round_trip(tmp_path):
    rows = [F("s1", -20.25, 31.5, -110.0, 8.5, {"type": "solid"}), F("s2", 1, 2, 3, 4.0, {"type": "ground-glass"})]
    path = nio.write_annotations(tmp_path / "annotations.csv", rows, extra=("type",))
    assert path.read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,diameter_mm,type"
    back = nio.read_annotations(path)
    assert [(r.seriesuid, r.x, r.y, r.z, r.value, r.extra["type"]) for r in back] == [
        ("s1", -20.25, 31.5, -110.0, 8.5, "solid"),
        ("s2", 1.0, 2.0, 3.0, 4.0, "ground-glass"),
    ]
    cands = nio.write_candidates(tmp_path / "c.csv", [F("s1", 0.5, 0, 0, 0.125)])
    assert cands.read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,probability"
    assert nio.read_candidates(cands)[0].value == 0.125
    (tmp_path / "bad.csv").write_text("seriesuid,coordX\ns,1\n")
    with pytest.raises(ValueError, match="lacks the column"):
        nio.read_annotations(tmp_path / "bad.csv")


def test_working_scan_keeps_world_positions():
    array = np.full((3, 12, 12), -1000.0, np.float32)
    array[1, 4:6, 6:8] = 1000.0  # exactly one 2x2 in-plane block
    scan = nio.Scan(array, origin=[10.0, -5.0, 7.0], spacing=[0.6, 0.6, 2.0], seriesuid="w")
    work = working_scan(scan, 1.25)
    assert work.array.shape == (3, 6, 6)
    k, j, i = np.unravel_index(np.argmax(work.array), work.array.shape)
    assert work.array[k, j, i] == 1000.0
    fine = scan.voxel_to_world([[6.5, 4.5, 1.0]])  # center of the bright block
    np.testing.assert_allclose(work.voxel_to_world([[i, j, k]]), fine)


# ----------------------------------------------------------------- scoring
def _hand_case():
    nodules = [
        F("a", 0, 0, 0, 10.0, {"type": "solid"}),
        F("b", 0, 0, 0, 6.0, {"type": "ground-glass"}),
        F("a", 100, 0, 0, 8.0, {"type": "solid"}),  # never hit
    ]
    excluded = [F("b", 50, 0, 0, 4.0)]
    candidates = [
        F("a", 1, 0, 0, 0.9),  # hits nodule 0
        F("a", 0, 4, 0, 0.6),  # hits nodule 0 again: ignored
        F("a", 30, 0, 0, 0.8),  # FP
        F("b", 0, 2.9, 0, 0.7),  # 2.9 < 3: hits nodule 1
        F("b", 0, 3.0, 0, 0.95),  # exactly on the radius: not a hit, FP
        F("b", 50, 1, 0, 0.99),  # hits an excluded finding: ignored
        F("b", 200, 0, 0, 0.5),  # FP
    ]
    return nodules, excluded, candidates


def test_hit_rule_by_hand():
    nodules, excluded, candidates = _hand_case()
    m = match(candidates, nodules, excluded)
    np.testing.assert_allclose(m.nodule_score, [0.9, 0.7, np.nan])
    assert sorted(m.fp_scores.tolist()) == [0.5, 0.8, 0.95]
    assert m.n_ignored == 2


def test_froc_and_cpm_by_hand():
    nodules, excluded, candidates = _hand_case()
    ev = evaluate(candidates, nodules, ["a", "b"], excluded=excluded)
    # Ranked (ignored ones out): 0.95 FP, 0.9 TP, 0.8 FP, 0.7 TP, 0.5 FP; 3 nodules, 2 scans.
    np.testing.assert_allclose(ev.froc_fps, [0, 0.5, 0.5, 1.0, 1.0, 1.5])
    np.testing.assert_allclose(ev.froc_sensitivity, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # Best sensitivity per FP rate: (0, 0), (0.5, 1/3), (1, 2/3), (1.5, 2/3); linear in between.
    expected = {0.125: 1 / 12, 0.25: 1 / 6, 0.5: 1 / 3, 1.0: 2 / 3, 2.0: 2 / 3, 4.0: 2 / 3, 8.0: 2 / 3}
    assert list(ev.cpm_points) == list(CPM_FP_RATES)
    np.testing.assert_allclose(list(ev.cpm_points.values()), list(expected.values()))
    np.testing.assert_allclose(ev.cpm, 39 / 84)
    assert ev.sensitivity == pytest.approx(2 / 3)
    assert ev.fps_per_scan == 1.5 and ev.candidates_per_scan == 3.5
    assert ev.per_type == {"ground-glass": (1, 1), "solid": (1, 2)}
    # Nodules under 7 mm leave the truth; hitting them is then no error.
    ev7 = evaluate(candidates, nodules, ["a", "b"], excluded=excluded, min_diameter_mm=7.0)
    assert ev7.n_nodules == 2 and ev7.sensitivity == 0.5 and ev7.fps_per_scan == 1.5


def test_froc_counts_scans_without_nodules():
    fps, sens, _ = froc_curve(np.array([0.5]), np.array([0.9, 0.8]), n_scans=4)
    np.testing.assert_allclose(fps, [0, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(sens, [0, 0, 0, 1])


# ----------------------------------------------------------------- pipeline
def test_tiled_mean_shift_matches_one_fit():
    rng = np.random.default_rng(1)
    centers = np.array([[0, 0, 0], [30, 5, 0], [60, 60, 10], [62, 60, 10]], float)
    parts = []
    for c, si in zip(centers, (0.95, 0.95, 0.95, 0.75)):
        parts.append(np.column_stack([rng.normal(c, 1.2, (150, 3)), rng.normal(-200, 30, 150), rng.normal(si, 0.02, 150)]))
    X = np.vstack(parts).astype(np.float32)
    one_c, one_l = mean_shift_clusters(X, DetectorConfig(device="cpu", tile_mm=None, min_bin_freq=1))
    tiled_c, tiled_l = mean_shift_clusters(X, DetectorConfig(device="cpu", tile_mm=20.0, min_bin_freq=1))
    assert len(one_c) == len(tiled_c) == 4  # the round and the tube-like blob at the same place stay apart
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(one_l, tiled_l) > 0.99
    d = np.linalg.norm(one_c[:, None, :3] - tiled_c[None, :, :3], axis=2)
    assert d.min(1).max() < 1.0


def test_phantom_nodules_are_where_the_annotations_say(tmp_path):
    ph = make_phantom(
        (192, 192, 48), spacing_xyz=(1.7, 1.7, 2.8), seed=4, n_nodules=3, diameter_range=(10, 14),
        type_weights=(1, 0, 0), noise_hu=20,
    )  # fmt: skip
    assert len(ph.nodules) == 3
    for n in ph.nodules:
        k, j, i = np.rint(ph.scan.world_to_voxel(n.world)[::-1]).astype(int)
        assert ph.scan.array[k, j, i] > -300  # solid: 0 to +80 HU plus noise
    lungs = segment_lungs(ph.scan.array, ph.scan.spacing)
    assert 0.05 < lungs.mean() < 0.5
    for n in ph.nodules:  # juxtapleural ones too
        k, j, i = np.rint(ph.scan.world_to_voxel(n.world)[::-1]).astype(int)
        assert lungs[k, j, i]


def test_end_to_end_tiny_phantom_finds_its_nodules(tmp_path):
    ph = make_phantom(
        (192, 192, 48), spacing_xyz=(1.7, 1.7, 2.8), seed=7, n_nodules=3, diameter_range=(9, 14), type_weights=(1, 0, 0),
        attachment_weights=(1, 0, 0), noise_hu=25, n_distractors=1,
    )  # fmt: skip
    path = nio.write_scan(ph.scan, tmp_path)
    det = detect_candidates(nio.read_scan(path), DetectorConfig(device="cpu"))
    assert 0 < len(det.candidates) <= 100
    assert set(det.timings) >= {"lungs", "shape_index", "mean_shift"}
    truth = [F(ph.scan.seriesuid, *n.world, n.diameter_mm) for n in ph.nodules]
    ev = evaluate(det.candidates, truth)
    assert ev.sensitivity == 1.0
    # The nodules are among the best-scored candidates, not just somewhere in the list.
    ranks = []
    for n in truth:
        d = np.array([np.linalg.norm(c.world - n.world) for c in det.candidates])
        ranks.append(int(np.nonzero(d < n.value / 2)[0][0]))
    assert max(ranks) < 10


def test_cli_demo_writes_candidates_timings_and_plot(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "1", "--shape", "96", "96", "48", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "-- all nodules" in out and "-- nodules >= 5 mm" in out and "CPM" in out
    rows = nio.read_candidates(tmp_path / "candidates.csv")
    series = nio.read_series_list(tmp_path / "phantoms" / "seriesuids.csv")
    assert 0 < len(rows) <= 100 and {r.seriesuid for r in rows} == set(series)
    assert (tmp_path / "timings.csv").stat().st_size > 0 and (tmp_path / "froc.png").stat().st_size > 1000


def test_cli_evaluate_and_plot(tmp_path, capsys):
    nodules, excluded, candidates = _hand_case()
    ann = nio.write_annotations(tmp_path / "ann.csv", nodules, extra=("type",))
    exc = nio.write_annotations(tmp_path / "exc.csv", excluded)
    cands = nio.write_candidates(tmp_path / "c.csv", candidates)
    plot = tmp_path / "froc.png"
    assert main(["evaluate", str(cands), str(ann), "--excluded", str(exc), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "CPM 0.464" in out and "ground-glass 1/1" in out
    assert plot.stat().st_size > 1000


# ----------------------------------------------------------------- phantom geometry, trained scorer
def test_phantom_lungs_stay_inside_the_body():
    # The lungs used to be limited only at their extreme x and y, so their
    # back and front corners cut through the (elliptic) fat layer and, in
    # thin patients, the skin: seed 5 at this size had no lung mask at all.
    from examples.nodule_candidates.phantom import _Anatomy, _Grid, _inside_scale, default_spacing

    assert _inside_scale(0.0, 0.0, 2.0, 1.0, 1.0, 1.0) == pytest.approx(0.5, abs=1e-6)
    t = np.linspace(0, 2 * np.pi, 360)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        grid = _Grid((192, 192, 96), default_spacing((192, 192, 96), rng))
        a = _Anatomy.draw(grid.fov, rng)
        x = a.lung_cx + a.lung_a * np.cos(t)
        y = a.lung_cy + a.lung_b * np.sin(t)
        # (1e-3: the outline is sampled; before the fix this was 1.02-1.08)
        assert np.max((x / (a.body_a - a.fat)) ** 2 + (y / (a.body_b - a.fat)) ** 2) <= 1.0 + 1e-3
    ph = make_phantom((192, 192, 96), seed=5)
    lungs = segment_lungs(ph.scan.array, ph.scan.spacing)
    assert 0.05 < lungs.mean() < 0.3


def test_tree_ensemble_export_matches_sklearn(tmp_path):
    from sklearn.ensemble import GradientBoostingClassifier

    from examples.nodule_candidates.classifier import TreeEnsemble

    rng = np.random.default_rng(0)
    F = rng.normal(size=(400, 3))
    y = (F[:, 0] + 0.5 * F[:, 1] ** 2 + rng.normal(0, 0.3, 400) > 0.5).astype(int)
    gb = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)
    gb.fit(F, y, sample_weight=rng.uniform(0.5, 2, 400))
    model = TreeEnsemble.from_sklearn(gb, ["a", "b", "c"], check=F)
    G = rng.normal(size=(300, 3))
    np.testing.assert_allclose(model.decision_function(G), gb.decision_function(G), atol=1e-5)
    back = TreeEnsemble.load(model.save(tmp_path / "m.json"))
    np.testing.assert_allclose(back.decision_function(G), gb.decision_function(G), atol=1e-4)


def test_hist_tree_ensemble_export_matches_sklearn(tmp_path):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from examples.nodule_candidates.classifier import TreeEnsemble

    rng = np.random.default_rng(1)
    F = rng.normal(size=(2000, 4))
    y = (F[:, 0] + 0.5 * F[:, 1] ** 2 - F[:, 3] + rng.normal(0, 0.3, 2000) > 0.5).astype(int)
    hist = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15, early_stopping=False, random_state=0)
    hist.fit(F, y, sample_weight=rng.uniform(0.5, 2, 2000))
    model = TreeEnsemble.from_sklearn(hist, ["a", "b", "c", "d"], check=F)
    assert not model.float32_inputs and model.learning_rate == 1.0
    # Rows between the training values, where float32 rounding would cross thresholds.
    G = np.vstack([rng.normal(size=(500, 4)), F[:200] + 1e-9])
    np.testing.assert_allclose(model.decision_function(G), hist.decision_function(G), atol=1e-9)
    back = TreeEnsemble.load(model.save(tmp_path / "m.json"))
    assert not back.float32_inputs
    np.testing.assert_allclose(back.decision_function(G), hist.decision_function(G), atol=1e-4)


def test_refine_positions_moves_off_centre_modes_onto_small_nodules():
    from examples.nodule_candidates.detect import refine_positions

    # A 6 mm nodule (radius 3) on the working grid's anisotropic voxels,
    # touching a bright wall outside the lung mask.
    spacing = np.array([1.25, 1.25, 2.5])
    shape_zyx = (24, 48, 48)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    world = np.stack([xx * spacing[0], yy * spacing[1], zz * spacing[2]], axis=-1)
    centre = np.array([30.0, 30.0, 30.0])
    array = np.full(shape_zyx, -850.0, np.float32)
    array[np.linalg.norm(world - centre, axis=-1) <= 3.0] = 20.0
    array[:, :, 29:] = 40.0  # wall from x = 36.25 mm: 3.25 mm from the nodule's centre
    lungs = np.ones(shape_zyx, bool)
    lungs[:, :, 29:] = False
    scan = nio.Scan(array, [0.0, 0.0, 0.0], spacing, seriesuid="t")
    starts = centre + np.array([[2.8, 0, 0], [0, 2.5, 0], [0, 0, -2.6], [1.5, 1.5, 1.5], [0, 0, 0]])
    moved = refine_positions(scan, lungs, starts)
    assert np.linalg.norm(moved - centre, axis=1).max() < 1.2
    # Never further than the allowed shift, never out of the lungs.
    far = refine_positions(scan, lungs, centre[None] + [[-8.0, 0, 0]], max_shift_mm=2.0)
    assert np.linalg.norm(far[0] - (centre + [-8.0, 0, 0])) <= 2.0 + 0.5 * spacing.max()
    assert np.array_equal(refine_positions(scan, lungs, starts, max_shift_mm=0), starts)


def test_shipped_scorer_loads_and_scores_deterministically():
    from examples.nodule_candidates.classifier import FEATURES, MODEL_PATH, TreeEnsemble, TwoStageScorer, default_scorer
    from examples.nodule_candidates.detect import cluster_statistics

    # 200 trees of <= 15 leaves with exact (17-digit) thresholds: ~170 KB.
    assert MODEL_PATH.is_file() and MODEL_PATH.stat().st_size < 250_000
    scorer = default_scorer()
    assert isinstance(scorer, TwoStageScorer)
    model = scorer.first
    assert isinstance(model, TreeEnsemble) and list(model.features) == list(FEATURES)
    # A round, dense 8 mm blob against a thin line of the same brightness.
    rng = np.random.default_rng(0)
    g = np.arange(-4, 5) * 1.0
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    ball = np.column_stack([xx.ravel(), yy.ravel(), zz.ravel()])[np.sqrt(xx**2 + yy**2 + zz**2).ravel() <= 4]
    line = np.column_stack([np.arange(-15, 16.0), np.zeros(31), np.zeros(31)]) + [40, 0, 0]
    X = np.vstack([
        np.column_stack([ball, rng.normal(-200, 20, len(ball)), rng.uniform(0.88, 1.0, len(ball))]),
        np.column_stack([line, rng.normal(-200, 20, len(line)), rng.normal(0.75, 0.03, len(line))]),
    ]).astype(np.float32)  # fmt: skip
    labels = np.r_[np.zeros(len(ball), int), np.ones(len(line), int)]
    modes = np.array([[0, 0, 0, -200, 0.95], [40, 0, 0, -200, 0.75]])
    c = cluster_statistics(X, modes, labels, 1.0, bandwidth=np.array([4, 4, 4, 150, 0.15]))
    assert c.density_3mm[0] > 0.8 and c.density_3mm[1] < 0.3
    # Image context as context_features reads it: the blob curves down along
    # all three axes, the vessel along two; both far from the chest wall.
    c.wall_mm = np.array([20.0, 20.0])
    c.hessian_2mm = np.array([[-200.0, -180.0, -150.0], [-150.0, -120.0, 0.0]])
    c.hessian_4mm = np.array([[-250.0, -230.0, -200.0], [-90.0, -70.0, 0.0]])
    c.contrast_2mm = np.array([500.0, 250.0])
    c.contrast_4mm = np.array([450.0, 150.0])
    s1, s2 = model(c), model(c)
    np.testing.assert_array_equal(s1, s2)
    assert ((s1 > 0) & (s1 < 1)).all() and s1[0] > s1[1]


def test_context_features_tell_a_blob_from_a_vessel_and_measure_the_wall():
    from examples.nodule_candidates.detect import context_features

    # 1 mm voxels: a bright 8 mm ball and a 3 mm-radius tube along x, in -850 HU "lung".
    z, y, x = np.mgrid[0:40, 0:48, 0:64].astype(np.float64)
    volume = np.full(x.shape, -850.0)
    volume[(x - 16) ** 2 + (y - 24) ** 2 + (z - 20) ** 2 <= 16] = 40.0
    volume[((y - 24) ** 2 + (z - 20) ** 2 <= 9) & (x >= 36)] = 40.0
    scan = nio.Scan(volume.astype(np.int16), [0, 0, 0], [1.0, 1.0, 1.0], seriesuid="ctx")
    lungs = np.zeros(volume.shape, bool)
    lungs[2:-2, 2:-2, 2:-2] = True
    f = context_features(scan, lungs, np.array([[16.0, 24, 20], [50.0, 24, 20], [16.0, 24, 4]]))
    ball, tube = f["hessian_2mm"][0], f["hessian_2mm"][1]
    assert (ball < 0).all()  # curves down along all three axes
    assert tube[0] < 0 and tube[1] < 0 and abs(tube[2]) < 0.1 * abs(tube[0])  # flat along the vessel
    assert f["contrast_2mm"][0] > 300 and f["contrast_4mm"][0] > f["contrast_4mm"][1] - 50
    # Mask from index 2 to 37 in z: the point at z = 4 is 3 voxels from outside (index 1).
    assert f["wall_mm"][2] == pytest.approx(3.0) and f["wall_mm"][0] > 10


def test_large_object_suppression_radius():
    from examples.nodule_candidates.detect import Clusters, suppress_near, suppression_radius

    # Three modes inside one large nodule and a small nodule 12 mm from the best of them.
    center = np.array([[0.0, 0, 0], [6.0, 0, 0], [0, 7.0, 0], [0, -12.0, 0]])
    zeros = {k: np.zeros(4) for k in ("n_voxels", "volume_mm3", "mean_hu", "mean_si", "round_fraction", "elongation",
                                      "extent_mm")}  # fmt: skip
    c = Clusters(center=center, **zeros, density_10mm=np.array([0.9, 0.8, 0.85, 0.2]))
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    radius = suppression_radius(c, DetectorConfig(nms_mm=5.0, nms_large_mm=10.0))
    assert suppress_near(center, scores, 5.0).tolist() == [0, 1, 2, 3]
    assert suppress_near(center, scores, 5.0, radius_per=radius).tolist() == [0, 3]
    assert suppression_radius(c, DetectorConfig(nms_large_mm=0.0)) is None


# ------------------------------------------------------------- second stage
def _blob_tube_wall_scan():
    """1 x 1 x 2 mm voxels in -850 HU lung: an 8 mm ball, a 4 mm-wide tube along x and a wall (x >= 100)."""
    z, y, x = np.mgrid[0:30, 0:64, 0:128].astype(np.float64)
    zmm = 2.0 * z
    volume = np.full(x.shape, -850.0)
    volume[(x - 20) ** 2 + (y - 32) ** 2 + (zmm - 30) ** 2 <= 16] = 40.0
    volume[((y - 32) ** 2 + (zmm - 30) ** 2 <= 4) & (x >= 45) & (x < 85)] = 40.0
    volume[x >= 100] = 40.0
    return nio.Scan(volume.astype(np.int16), [0, 0, 0], [1.0, 1.0, 2.0], seriesuid="patch")


def test_patch_features_tell_a_ball_from_a_vessel_and_the_wall():
    from examples.nodule_candidates.patches import PATCH_FEATURES, patch_features, patch_matrix

    scan = _blob_tube_wall_scan()
    f = patch_features(scan, np.array([[20.0, 32, 30], [65.0, 32, 30], [100.0, 32, 30], [20.0, 10, 30]]))
    assert set(f) == set(PATCH_FEATURES) and patch_matrix(f).shape == (4, len(PATCH_FEATURES))
    ball, tube, wall, air = 0, 1, 2, 3
    # The ball: bright centre, profile down to the background by 6 mm, half-way radius near its 4 mm radius.
    assert f["profile_0mm"][ball] > 500 and abs(f["profile_8mm"][ball]) < 20
    assert 3.0 < f["half_radius_mm"][ball] < 5.0
    assert f["bright_6mm"][ball] == 0 and f["bright_8mm"][ball] == 0
    # ... and its component is round, 8 mm across and stays inside the cube.
    assert f["component_roundness"][ball] > 0.8 and f["component_on_faces"][ball] == 0
    assert 6.5 < np.exp(f["component_log_diameter"][ball]) < 9.5
    # The tube: a few bright directions on every shell (its axis), a structure running through.
    assert 0 < f["bright_8mm"][tube] < 0.15 and f["through_8mm"][tube] > 0.02
    assert f["through_8mm"][ball] == pytest.approx(0, abs=1e-3)
    assert f["component_on_faces"][tube] > 0 and f["component_roundness"][tube] < 0.4
    # At the wall's face about half of every shell is bright.
    assert 0.3 < f["bright_6mm"][wall] < 0.7
    # Plain lung: no structure; no component (the centre is below the threshold).
    assert f["component_log_diameter"][air] == 0 and f["bright_6mm"][air] == 0


def test_patch_features_are_deterministic_and_empty_safe():
    from examples.nodule_candidates.patches import PATCH_FEATURES, patch_features

    scan = _blob_tube_wall_scan()
    pos = np.array([[20.0, 32, 30], [65.0, 32, 30]])
    a, b = patch_features(scan, pos), patch_features(scan, pos)
    for name in PATCH_FEATURES:
        np.testing.assert_array_equal(a[name], b[name])
    assert all(len(v) == 0 for v in patch_features(scan, np.zeros((0, 3))).values())


def test_reranker_json_round_trip(tmp_path):
    from examples.nodule_candidates.classifier import RERANK_FEATURES, TreeEnsemble, fit_reranker

    rng = np.random.default_rng(1)
    F = rng.normal(size=(300, len(RERANK_FEATURES)))
    y = (F[:, 0] + F[:, -1] > 0.8).astype(int)
    model = fit_reranker(F, y, np.ones(300), {"note": "test"}, top_m=7)
    back = TreeEnsemble.load(model.save(tmp_path / "r.json"))
    assert back.meta["top_m"] == 7 and list(back.features) == list(RERANK_FEATURES)
    G = rng.normal(size=(50, len(RERANK_FEATURES)))
    np.testing.assert_allclose(back.decision_function(G), model.decision_function(G), atol=1e-4)


def test_two_stage_scorer_rescoring_only_the_best_m(tmp_path):
    from examples.nodule_candidates.classifier import RERANK_FEATURES, TreeEnsemble, TwoStageScorer, default_scorer
    from examples.nodule_candidates.detect import Clusters

    shipped = default_scorer()
    assert list(shipped.second.features) == list(RERANK_FEATURES) and shipped.top_m == shipped.second.meta["top_m"]
    # First stage: score = the cluster's mean HU; second: a stump on the patch centre HU
    # (bright centres win), so the re-scored two can swap, the third stays below both.
    first = TreeEnsemble(["mean_hu"], 0.0, 1.0, [{"feature": [-1], "threshold": [0.0], "left": [-1], "right": [-1],
                                                   "value": [0.0]}])  # fmt: skip
    first.decision_function = lambda F: np.asarray([0.3, 0.2, 0.1])  # stands in for the 25-feature trees
    k = RERANK_FEATURES.index("centre_hu")
    stump = {"feature": [k, -1, -1], "threshold": [-400.0, 0, 0], "left": [1, -1, -1], "right": [2, -1, -1],
             "value": [0, -2.0, 2.0]}
    second = TreeEnsemble(list(RERANK_FEATURES), 0.0, 1.0, [stump])
    scan = _blob_tube_wall_scan()
    # cluster 0 in plain lung, cluster 1 on the ball, cluster 2 on the tube
    center = np.array([[20.0, 10, 30], [20.0, 32, 30], [65.0, 32, 30]])
    c = Clusters(center=center, **{k: np.ones(3) for k in ("n_voxels", "volume_mm3", "mean_hu", "mean_si",
                 "round_fraction", "elongation", "extent_mm", "mode_hu", "mode_si", "hu_std", "core_fraction",
                 "core_si", "core_round", "density_3mm", "density_6mm", "density_10mm", "support_mm3", "wall_mm",
                 "contrast_2mm", "contrast_4mm")},
                 hessian_2mm=np.zeros((3, 3)), hessian_4mm=np.zeros((3, 3)))  # fmt: skip
    timings = {}
    s = TwoStageScorer(first, second, top_m=2)(c, work=scan, timings=timings)
    assert s[1] > s[0] > s[2] > 0 and "patches" in timings
    np.testing.assert_array_equal(s, TwoStageScorer(first, second, top_m=2)(c, work=scan))
    with pytest.raises(ValueError):
        TwoStageScorer(first, second, top_m=2)(c)


def test_cli_train_with_cross_validation_on_tiny_phantoms(tmp_path, capsys):
    from examples.nodule_candidates.classifier import FEATURES, TreeEnsemble, training_table

    data = tmp_path / "ph"
    assert main(["make-phantoms", str(data), "--n", "5", "--shape", "128", "128", "40", "--seed", "11"]) == 0
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    argv = ["train", str(data), "--out", str(first), "--rerank-out", str(second), "--cv", "--jobs", "2", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cross-validation (5 folds by scan), nodules >= 5 mm" in out and "CPM" in out
    model, rerank = TreeEnsemble.load(first), TreeEnsemble.load(second)
    assert list(model.features) == list(FEATURES) and not model.float32_inputs
    assert model.meta["n_scans"] == 5 and rerank.meta["top_m"] > 0
    # Worker processes build the same table as one process (on two of the scans).
    pair = tmp_path / "pair"
    pair.mkdir()
    scans = sorted(data.glob("*.mhd"))[:2]
    for path in [*scans, *(p.with_suffix(".raw") for p in scans)]:
        shutil.copy(path, pair)
    for name in ("nodule_types.csv", "annotations.csv", "annotations_excluded.csv"):
        shutil.copy(data / name, pair)
    one = training_table([pair], DetectorConfig(device="cpu"))
    two = training_table([pair], DetectorConfig(device="cpu"), jobs=2)
    for key in ("F", "y", "w", "scan", "center", "nodule", "factor"):
        np.testing.assert_array_equal(one[key], two[key])
    assert len(one["nodules"]) > 0 and one["paths"] == two["paths"]


def test_cli_detect_reports_and_skips_bad_scans_and_writes_the_others(tmp_path, capsys):
    """Device: CPU.  A truncated .raw, a header naming a missing .raw, a garbage and a 2-D
    header are each reported in one line and skipped; the good scan's candidates are written."""
    ph = make_phantom((96, 96, 48), spacing_xyz=(1.7, 1.7, 2.8), seed=3, n_nodules=1, diameter_range=(9, 12))
    scans = tmp_path / "scans"
    good = nio.write_scan(ph.scan, scans)
    truncated = nio.write_scan(nio.Scan(ph.scan.array[:8], ph.scan.origin, ph.scan.spacing, seriesuid="truncated"),
                               scans)
    raw = truncated.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    missing = nio.write_scan(nio.Scan(ph.scan.array[:4], ph.scan.origin, ph.scan.spacing, seriesuid="missing"), scans)
    missing.with_suffix(".raw").unlink()
    (scans / "garbage.mhd").write_text("this is not a header\n")
    flat = good.read_text().replace("NDims = 3", "NDims = 2").replace(
        f"DimSize = {' '.join(map(str, ph.scan.array.shape[::-1]))}", "DimSize = 96 96")
    (scans / "flat.mhd").write_text(flat)
    out = tmp_path / "candidates.csv"
    assert main(["detect", str(scans), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "skipped truncated.mhd: " in err and "is truncated: 1000 bytes" in err
    assert "skipped missing.mhd: " in err and "which does not exist beside it" in err
    assert "skipped garbage.mhd: " in err and "not a MetaImage header" in err
    assert "skipped flat.mhd: " in err and "2-D; a CT scan must be 3-D" in err
    assert "4 of 5 scans skipped" in err
    found = nio.read_candidates(out)
    assert found and {c.seriesuid for c in found} == {ph.scan.seriesuid}
