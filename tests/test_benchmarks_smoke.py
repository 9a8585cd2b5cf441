"""CI smoke test of the benchmark suite: its smallest quick case, end to end.

Runs ``python -m benchmarks run`` as a user would (a subprocess from the
repository root) on the smallest case of the quick suite, with one timed run,
the peers and two of this library's configurations, and a two-bandwidth
quality sweep; then checks that results.json, results.md and the plots exist
and hold measured values.  It checks that the suite works, not how fast
anything is.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASE = "blobs-d2-n1000"
METHODS = ["sklearn exact", "sklearn bin_seeding", "lesson loop", "keops", "faiss kNN",
           "ours flat dense", "ours gaussian dense"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "benchmarks", "run", "--suite", "quick", "--device", "cpu",
           "--out", str(out), "--only", CASE, "--repeats", "1", "--budget", "2", "--sweep-factors", "0.5", "1",
           "--no-progress", "--methods", *METHODS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_smallest_case_is_the_first_quick_case():
    sys.path.insert(0, str(ROOT))
    from benchmarks.cases import build_suite

    spec = build_suite("quick", "cpu")
    assert spec.cases[0].id == CASE
    assert spec.cases[0].n == min(c.n for c in spec.cases)


def test_results_json_holds_measured_rows(smoke_run):
    out, _ = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["gpu"] == "none" or "present" in results["machine"]["gpu"]
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == set(METHODS)
    assert {r["case"] for r in results["rows"]} == {CASE}
    for name in ("sklearn exact", "ours flat dense", "ours gaussian dense"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert row["times"] and all(t > 0 and math.isfinite(t) for t in row["times"])
        assert row["seconds"] == sorted(row["times"])[len(row["times"]) // 2]
        assert row["n_clusters"] >= 1
        assert -1.0 <= row["ari_truth"] <= 1.0
    # The flat kernel reproduces scikit-learn: the same clustering on well-separated blobs.
    assert rows["ours flat dense"]["ari_sklearn"] == pytest.approx(1.0)
    assert rows["ours flat dense"]["n_clusters"] == rows["sklearn exact"]["n_clusters"]
    # Speed-ups are ratios of the measured medians.
    speed = rows["ours flat dense"]["speedup"]["sklearn exact"]
    assert speed["ratio"] == pytest.approx(rows["sklearn exact"]["seconds"] / rows["ours flat dense"]["seconds"])
    # A peer that is not installed is reported with its reason, not dropped.
    assert rows["keops"]["status"] == "ok" or rows["keops"]["status"].startswith("not installed")
    sweep = [s for s in results["sweep"] if s["status"] == "ok"]
    assert {s["factor"] for s in sweep} == {0.5, 1.0}


def test_markdown_table_and_plots(smoke_run):
    out, stdout = smoke_run
    table = (out / "results.md").read_text()
    assert f"## {CASE}" in table
    assert "| method | time (s) |" in table
    results = json.loads((out / "results.json").read_text())
    ours = next(r for r in results["rows"] if r["method"] == "ours flat dense")
    assert f"| ours flat dense | {ours['seconds']:.3g} |" in table
    assert "ours flat dense" in stdout  # rows are printed as they finish
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in json.dumps(results["plots"])
        return
    for name in ("time_vs_n_blobs-d2.png", "quality_vs_bandwidth.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5_000


def test_all_seeds_benchmark_runs_and_reports_measured_fits(tmp_path):
    # The script has no --device: it runs where the library's "auto" puts it
    # (CUDA when present), so only outcomes that hold on either are checked.
    cmd = [sys.executable, "-m", "benchmarks.all_seeds", "--sizes", "1500", "--threads", "1",
           "--timeout", "240", "--sklearn", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["ours all seeds", "ours bin_seeding", "sklearn bin_seeding"]
    for row in rows:
        assert row["status"] == "ok" and row["seconds"] > 0 and row["clusters"] >= 1
        assert 0.5 < row["ari_truth"] <= 1.0
    # Same algorithm, same seeds: our bin seeding is scikit-learn's.
    assert rows[1]["ari_sklearn_bin_seeding"] == 1.0 and rows[1]["clusters"] == rows[2]["clusters"]
    assert rows[1]["center_gap_vs_sklearn"] < 1e-3 and rows[2]["center_gap_vs_sklearn"] == 0.0


def test_first_fit_benchmark_measures_a_cold_process_and_writes_both_reports(tmp_path):
    """Device: CPU.  The smoke run: one small case in a fresh process with empty compile caches."""
    cmd = [sys.executable, "-m", "benchmarks", "first-fit", "--smoke", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "first_fit.json").read_text())
    (row,) = result["cases"]
    assert row["first_fit_s"] > 0 and row["warm_fit_s"] > 0 and row["import_s"] > 0
    assert math.isclose(row["first_minus_warm_s"], row["first_fit_s"] - row["warm_fit_s"])
    assert row["threads"] >= 1 and "load_ratio_worst" not in row  # --smoke measures no load
    table = (tmp_path / "first_fit.md").read_text()
    assert f"{row['first_fit_s']:.3f}" in table and f"{row['warm_fit_s']:.3f}" in table


def test_first_fit_benchmark_rejects_zero_repeats(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "first-fit", "--repeats", "0", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--repeats must be at least 1" in proc.stderr
