"""The ``meanshift-gpu`` console command.

Commands that cluster pass ``--device`` from the ``device`` argument (CPU, and
CUDA where present) and are compared with the estimator on that device.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from meanshift_gpu import MeanShift
from meanshift_gpu._cli import main


@pytest.fixture
def blobs_file(tmp_path):
    X, _ = make_blobs(300, centers=3, random_state=0)
    path = tmp_path / "points.npy"
    np.save(path, X)
    return X, path


def test_cluster_npy_writes_labels_centers_and_summary(blobs_file, tmp_path, capsys, device):
    X, path = blobs_file
    out = tmp_path / "out" / "labels.npy"
    assert main(["cluster", str(path), "--bandwidth", "2.0", "--out", str(out), "--device", device]) == 0
    expected = MeanShift(bandwidth=2.0, device=device).fit(X)
    np.testing.assert_array_equal(np.load(out), expected.labels_)
    np.testing.assert_allclose(np.load(out.with_name("labels_centers.npy")), expected.cluster_centers_)
    summary = json.loads(out.with_name("labels_summary.json").read_text())
    assert summary["n_clusters"] == len(expected.cluster_centers_)
    assert summary["cluster_sizes"] == expected.cluster_sizes_.tolist()
    assert summary["device"].startswith(device)
    printed = capsys.readouterr().out
    assert "clusters" in printed and "bandwidth" in printed and "device" in printed


def test_cluster_csv_with_header_and_per_feature_bandwidth(tmp_path, device):
    X, _ = make_blobs(200, centers=2, random_state=1)
    path = tmp_path / "points.csv"
    np.savetxt(path, X, delimiter=",", header="a,b", comments="")
    assert main(["cluster", str(path), "--bandwidth", "2.0,3.0", "--kernel", "gaussian", "--device", device]) == 0
    labels = np.loadtxt(tmp_path / "points_labels.csv", skiprows=1)
    expected = MeanShift(bandwidth=[2.0, 3.0], kernel="gaussian", device=device).fit(X)
    np.testing.assert_array_equal(labels, expected.labels_)


def test_cluster_reports_bad_input(tmp_path, capsys, device):
    path = tmp_path / "bad.npy"
    np.save(path, np.array([[0.0, np.nan], [1.0, 2.0]]))
    assert main(["cluster", str(path), "--bandwidth", "1", "--device", device]) == 2
    assert "NaN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cluster", str(tmp_path / "missing.npy")])
    with pytest.raises(SystemExit):
        main(["cluster", str(path), "--bandwidth", "wide"])


def test_demo_prints_table_and_saves_plot(tmp_path, capsys, device):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    assert main(["demo", "--n-samples", "600", "--out", str(out), "--device", device]) == 0
    printed = capsys.readouterr().out
    assert "meanshift_gpu" in printed and "scikit-learn" in printed and "speed-up" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", r"points\.npy: cannot be read as npy data"),
        (b"\x93NUMPY garbage", r"points\.npy: cannot be read as npy data"),
    ],
    ids=["empty", "truncated"],
)
def test_unreadable_npy_is_one_line_naming_the_file(tmp_path, content, pattern):
    """Device: none (the file is rejected before any fit)."""
    path = tmp_path / "points.npy"
    path.write_bytes(content)
    with pytest.raises(SystemExit, match=pattern):
        main(["cluster", str(path), "--bandwidth", "1.0", "--device", "cpu"])


def test_complex_npy_is_rejected_not_truncated_to_its_real_part(tmp_path):
    """Device: none (the file is rejected before any fit)."""
    path = tmp_path / "points.npy"
    np.save(path, np.ones((10, 2)) * (1 + 2j))
    with pytest.raises(SystemExit, match="holds complex numbers; mean shift needs real-valued data"):
        main(["cluster", str(path), "--bandwidth", "1.0", "--device", "cpu"])


def test_unwritable_out_is_reported_before_the_fit(blobs_file, tmp_path, monkeypatch):
    """Device: none (the bad --out stops the command before the fit)."""
    _, path = blobs_file
    fitted = []
    monkeypatch.setattr(MeanShift, "fit", lambda self, *a, **k: fitted.append(1))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match=r"--out .*: cannot write there .*; choose a writable folder"):
        main(["cluster", str(path), "--bandwidth", "1.0", "--device", "cpu", "--out", str(blocker / "labels.npy")])
    assert not fitted


def test_unavailable_device_is_one_line(blobs_file, capsys):
    """Device: xpu, absent from this torch build (skipped where present)."""
    import torch

    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        pytest.skip("this machine has an xpu device")
    _, path = blobs_file
    assert main(["cluster", str(path), "--bandwidth", "1.0", "--device", "xpu"]) == 2
    assert "no usable xpu device; use device='cpu' or 'auto'" in capsys.readouterr().err
