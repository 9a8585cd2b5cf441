"""Smoke tests of the example scripts in ``examples/`` (issue 8).

Every example runs through its ``main(argv)`` at the reduced ``--small`` size
with its figure written to ``tmp_path``, and the test checks the outcome the
example exists to show (mean shift recovers the number of groups, detections
match the truth, the segmentation agrees with scikit-learn), not just that it
ran.  Full-size runs are marked ``slow``.

The examples need matplotlib, pillow and scipy (the ``examples`` extra).

Device: each example runs as a user runs it, on its own default
(``device="auto"``: CUDA when present, else the CPU), so the checks are
outcomes that hold on either (group counts, recall, ARI), never exact values.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("scipy")
torch = pytest.importorskip("torch")

from examples import (  # noqa: E402  (after the optional-dependency skips)
    image_segmentation,
    lesson1_cnn_features,
    lesson5_collab_embeddings,
    lesson7_heatmap_localization,
    lesson11_blobs,
)
from examples._common import match_points  # noqa: E402

pytestmark = pytest.mark.examples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train the tiny example networks on one thread.

    With so little work per operation, two OpenMP threads gain nothing, and on
    a busy CI machine (other test processes on the same 2 cores) their spin
    waits made a training step up to 40x slower.  The setting is restored.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_png(path: str | None, *, min_side: int = 100) -> None:
    """``path`` exists and is a readable, non-trivial PNG."""
    assert path is not None
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 0
    with PIL.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side


# ----------------------------------------------------------------- helpers
def test_match_points_one_to_one():
    truth = np.array([[0.0, 0.0], [10.0, 0.0]])
    # Two detections near the first object, one far from both.
    found = np.array([[0.5, 0.0], [0.0, 0.6], [30.0, 30.0]])
    matched, found_truth = match_points(found, truth, max_distance=2.0)
    assert matched == 1  # one detection per object, however many are near it
    assert found_truth.tolist() == [True, False]
    assert match_points(np.zeros((0, 2)), truth, 2.0)[0] == 0


def test_rgb_to_lab_known_colours():
    # Published CIE L*a*b* (D65) values of the sRGB primaries and mid grey.
    rgb = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    expected = np.array(
        [[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86], [53.39, 0.0, 0.0]]
    )
    np.testing.assert_allclose(image_segmentation.rgb_to_lab(rgb), expected, atol=0.05)


# ----------------------------------------------------------------- lesson 11
def test_lesson11_blobs_small(tmp_path):
    result = lesson11_blobs.main(["--small", "--out", str(tmp_path)])
    assert result["n_true_clusters"] == 6
    # Mean shift finds the 6 groups without k, with either kernel and as the lesson's blurring.
    assert result["n_clusters_flat"] == 6
    assert result["n_clusters_gaussian"] == 6
    assert result["n_clusters_blurring"] == 6
    ari = result["ari"]
    for name in ("MeanShift flat", "MeanShift gaussian", "MeanShift blurring (5 passes)"):
        assert ari[name] >= 0.95, (name, ari)
    # ...and beats k-means given a wrong k.
    best_kmeans = max(score for name, score in ari.items() if name.startswith("k-means"))
    assert best_kmeans < min(ari["MeanShift flat"], ari["MeanShift gaussian"])
    # The per-point and batched loops compute the same blurring steps.
    assert result["loops_max_difference"] < 1e-3
    assert set(result["timings"]) == {"per-point loop", "batched torch loop", "meanshift_gpu blurring"}
    assert all(t > 0 for t in result["timings"].values())
    assert_png(result["figure"])


def test_lesson11_blobs_figure_optional(tmp_path):
    result = lesson11_blobs.main(["--small", "--no-figure", "--out", str(tmp_path / "out"), "--clusters", "3", "--per-cluster", "60"])
    assert result["figure"] is None
    assert not (tmp_path / "out").exists()
    assert result["n_clusters_flat"] == 3


# ----------------------------------------------------------------- lesson 1
def test_lesson1_cnn_features_small(tmp_path):
    result = lesson1_cnn_features.main(["--small", "--out", str(tmp_path)])
    # The network learned the digits, so its features separate them...
    assert result["test_accuracy"] >= 0.85
    # ...and mean shift, not told k=10, finds about 10 groups that match them.
    assert 8 <= result["n_clusters_meanshift"] <= 13
    assert result["ari_meanshift"] >= 0.7
    assert sum(result["cluster_sizes"]) == 719  # 40% of the 1,797 digits held out
    assert_png(result["figure"])


# ----------------------------------------------------------------- lesson 5
def test_lesson5_collab_embeddings_small(tmp_path):
    result = lesson5_collab_embeddings.main(["--small", "--out", str(tmp_path)])
    # The model predicts held-out ratings far better than the mean does.
    assert result["valid_rmse"] < 0.6 * result["baseline_rmse"]
    # The hidden taste groups come back from the item embeddings, count included.
    assert result["n_clusters_found"] == result["n_groups"] == 6
    assert result["ari"] >= 0.9
    assert_png(result["figure"])


# ----------------------------------------------------------------- lesson 7
def test_lesson7_heatmap_localization_small(tmp_path):
    result = lesson7_heatmap_localization.main(["--small", "--out", str(tmp_path)])
    assert result["n_true"] > 20
    assert result["recall"] >= 0.85
    assert result["precision"] >= 0.7
    assert result["n_matched"] <= min(result["n_found"], result["n_true"])
    assert_png(result["figure"])


def test_lesson7_detect_counts_objects():
    # A synthetic heatmap with three blobs of different strength and no network:
    # mean shift with heat as sample_weight must return exactly three centres.
    rows, cols = np.mgrid[0:40, 0:40]
    truth = np.array([[8.0, 9.0], [30.0, 12.0], [20.0, 31.0]])
    heat = np.zeros((40, 40))
    for (r, c), peak in zip(truth, (1.0, 0.8, 0.95)):
        heat = np.maximum(heat, peak * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 2.0**2)))
    centres, mass = lesson7_heatmap_localization.detect(heat, threshold=0.3, bandwidth=2.0, min_mass=2.0)
    assert len(centres) == 3
    assert match_points(centres, truth, max_distance=1.0)[0] == 3
    assert np.all(mass > 2.0)
    # Below the threshold everywhere: nothing to find.
    assert len(lesson7_heatmap_localization.detect(0.1 * heat, threshold=0.3, bandwidth=2.0, min_mass=2.0)[0]) == 0


# ----------------------------------------------------------------- segmentation
@pytest.mark.parametrize("neighbors", ["auto", "grid"])
def test_image_segmentation_small_matches_sklearn(tmp_path, neighbors):
    result = image_segmentation.main(
        ["--small", "--out", str(tmp_path), "--neighbors", neighbors, "--compare-sklearn"]
    )
    assert result["n_pixels"] == 107 * 160  # china.jpg, every 4th pixel
    if neighbors == "grid":
        assert result["neighbors"] == "grid"
    # Same clustering as scikit-learn on the bandwidth-scaled features
    # (grid pruning is exact for the flat kernel).
    assert result["ari_sklearn"] >= 0.99
    assert 10 <= result["n_segments"] <= 2000
    assert result["psnr_db"] >= 14.0  # the segment colours still describe the photo
    with PIL.open(result["segmented_image"]) as image:
        assert image.format == "PNG"
        assert image.size == (160, 107)
        colours = len(np.unique(np.asarray(image).reshape(-1, 3), axis=0))
    assert colours <= result["n_segments"]  # one flat colour per segment
    assert_png(result["figure"])


# ----------------------------------------------------------------- run as scripts
def test_examples_run_as_files_help():
    # ``python examples/x.py`` (not -m) must find the ``examples`` package too.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, str(REPO / "examples" / "lesson11_blobs.py"), "--help"],
        cwd=REPO / "examples", env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "--quick" in completed.stdout and "--out" in completed.stdout


# ----------------------------------------------------------------- full size
@pytest.mark.slow
def test_image_segmentation_full_size_prunes(tmp_path):
    result = image_segmentation.main(["--out", str(tmp_path)])
    assert result["n_pixels"] == 427 * 640
    assert result["neighbors"] == "grid"  # a few hundred thousand pixels: pruned
    assert 100 <= result["n_segments"] <= 5000
    assert result["psnr_db"] >= 20.0
    assert_png(result["segmented_image"])


@pytest.mark.slow
def test_full_size_examples(tmp_path):
    blobs = lesson11_blobs.main(["--out", str(tmp_path)])
    assert blobs["n_clusters_flat"] == blobs["n_clusters_gaussian"] == 6
    digits = lesson1_cnn_features.main(["--out", str(tmp_path)])
    assert digits["test_accuracy"] >= 0.9 and digits["ari_meanshift"] >= 0.8
    collab = lesson5_collab_embeddings.main(["--out", str(tmp_path)])
    assert collab["n_clusters_found"] == 6 and collab["ari"] >= 0.95
    fish = lesson7_heatmap_localization.main(["--out", str(tmp_path)])
    assert fish["precision"] >= 0.85 and fish["recall"] >= 0.9
