"""CI test of the one-shot GPU check script (``python -m benchmarks gpu``).

The GPU run itself needs a CUDA machine; here ``--smoke`` runs the same
script on the CPU (tiny sizes, Triton interpreter, no test-suite step) as a
user would, and the results files are checked for structure, not speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import (  # noqa: E402
    WORKLOAD_IDS,
    WORKLOADS,
    parse_pytest_output,
    parse_step_table,
    _progress_counts,
)

STATUSES = {"ok", "skipped", "error", "timeout"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    cmd = [sys.executable, "-m", "benchmarks", "gpu", "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "results.json").read_text())


def test_results_json_has_machine_tests_and_every_workload(smoke_run):
    _, stdout, results = smoke_run
    assert results["kind"] == "gpu_check" and results["smoke"] is True
    machine = results["machine"]
    for key in ("cpu", "cores", "gpu", "torch", "triton", "git_commit", "date", "cuda_runtime"):
        assert key in machine, key
    assert machine["cores"] >= 1
    assert results["tests"]["default"] == {"status": "skipped", "reason": "smoke"}
    assert results["tests"]["kernels"]["status"] == "skipped"
    assert [row["id"] for row in results["workloads"]] == WORKLOAD_IDS
    for row in results["workloads"]:
        assert row["status"] in STATUSES, row
    fits = [row for row in results["workloads"] if row["kind"] == "fit"]
    assert fits[-1]["id"] == "flat3d-10m"  # the optional 10M fit runs last
    assert results["workloads"][-1]["id"] == "flat3d-10m"
    assert "GPU check summary" in stdout


def test_fit_rows_hold_measured_values(smoke_run):
    _, _, results = smoke_run
    rows = {row["id"]: row for row in results["workloads"]}
    for wl in WORKLOADS:
        if wl.kind != "fit":
            continue
        row = rows[wl.id]
        assert row["status"] == "ok", row
        assert row["first_fit_s"] > 0 and row["warm_fit_s"] > 0
        assert row["warm_fit_s"] == min(row["warm_fits_s"])
        assert row["n_clusters"] >= 1 and row["n_iter"] >= 1
        assert -1.0 <= row["ari_cpu"] <= 1.0 and -1.0 <= row["ari_truth"] <= 1.0
        assert row["cpu_reference"]["kind"] == wl.reference and row["cpu_reference"]["description"]
        assert "device='cpu'" in row["params"]
        assert row["targets"] and all(t["met"] in (True, False) for t in row["targets"])
    # The CPU-path comparison and the cold-compile target are measured where asked for.
    assert rows["flat2d-20k"]["cpu_warm_fit_s"] > 0 and len(rows["flat2d-20k"]["targets"]) == 2
    gauss = rows["gauss8d-100k"]
    assert "backend='triton'" in gauss["params"]  # the interpreter ran the fused kernels
    assert gauss["triton_cache"].startswith("fresh") and gauss["triton_cache_files_at_start"] == 0
    assert rows["flat3d-1m"]["triton_cache"].startswith("the run's shared")


def test_step_and_nodule_rows(smoke_run):
    _, _, results = smoke_run
    rows = {row["id"]: row for row in results["workloads"]}
    step = rows["step-gauss-1m-d8"]
    assert step["status"] == "ok", step
    assert "SMOKE RUN" in step["output"] and "triton fp32" in step["output"]
    assert {r["method"] for r in step["rows"]} >= {"torch engine", "triton fp32"}
    assert [t["target"] for t in step["targets"]][0].startswith(">= 50% of the exp limit")
    assert step["targets"][1]["measured"].startswith("triton")  # the smoke's speed-ups are measured too
    nodule = rows["nodule-512"]
    assert nodule["status"] == "ok", nodule
    assert set(nodule["stages_s"]) >= {"lungs", "mean_shift", "scoring"} and nodule["n_clusters"] >= 1
    assert [t["met"] in (True, False) for t in nodule["targets"]] == [True, True]


def test_results_md_has_the_tables(smoke_run):
    out, _, results = smoke_run
    text = (out / "results.md").read_text()
    assert "SMOKE RUN" in text
    assert "| workload | first fit (s) | warm fit (s) | clusters | ARI vs CPU | target | met? |" in text
    for row in results["workloads"]:
        assert row["title"] in text
    assert "Default test suite on CUDA: skipped (smoke)." in text


def test_readme_renders_the_gpu_table(smoke_run, monkeypatch):
    out, _, results = smoke_run
    monkeypatch.chdir(ROOT)
    from benchmarks.readme import section

    text = section([out])
    assert "GPU: `python -m benchmarks gpu`, below." in text
    assert "| workload | first fit (s) | warm fit (s) | clusters | ARI vs CPU | target | met? |" in text
    assert "SMOKE RUN" in text
    assert f"`{out.as_posix()}`: gpu check (smoke) on cpu" in text
    flat = next(r for r in results["workloads"] if r["id"] == "flat3d-1m")
    assert f"| {flat['title']} | {flat['first_fit_s']:.3g} | {flat['warm_fit_s']:.3g} | {flat['n_clusters']} |" in text
    cpu = ROOT / "benchmarks" / "reference_cpu"
    if (cpu / "results.json").exists():
        both = section([Path("benchmarks") / "reference_cpu", out])
        assert "Flat kernel, 2-D blobs" in both and "| workload | first fit (s)" in both
        assert "not measured yet" in section([Path("benchmarks") / "reference_cpu"])


def test_parse_pytest_summary_and_failures():
    output = "\n".join([
        "..F.sx [ 50%]",
        "E.. [100%]",
        "=========================== short test summary info ============================",
        "FAILED tests/test_a.py::test_one[cuda-1] - AssertionError: nope",
        "ERROR tests/test_b.py::test_two - RuntimeError: CUDA error",
        "ERROR tests/test_c.py - ImportError: no module",
        "1 failed, 5 passed, 1 skipped, 1 xfailed, 3 warnings, 2 errors in 12.34s",
    ])
    result = parse_pytest_output(output)
    assert (result["passed"], result["failed"], result["errors"], result["skipped"], result["xfailed"]) == (5, 1, 2, 1, 1)
    assert result["warnings"] == 3
    assert result["failed_tests"] == ["tests/test_a.py::test_one[cuda-1]", "tests/test_b.py::test_two", "tests/test_c.py"]
    assert parse_pytest_output("collected 0 items\nno tests ran in 0.01s")["summary"] == "no tests ran in 0.01s"
    assert parse_pytest_output("Traceback ...\nKilled")["summary"] is None
    assert _progress_counts(output) == {"passed": 5, "failed": 1, "errors": 1, "skipped": 1, "xfailed": 1, "xpassed": 0}


def test_parse_gpu_step_table():
    table = "\n".join([
        "        N    d  method              time s     eval/s  of exp  TFLOP/s  of FMA vs engine vs lesson  check",
        "  1000000    8  torch engine          3.210   3.12e+11    7.4%     3.99    5.9%",
        "  1000000    8  triton fp32           0.412   2.43e+12   57.6%    47.23   70.4%      7.8x            "
        "first call 20.1s, max |diff| vs engine 1.2e-06",
    ])
    rows = parse_step_table(table)
    assert [r["method"] for r in rows] == ["torch engine", "triton fp32"]
    assert rows[1]["of_exp"] == pytest.approx(0.576) and rows[1]["vs_engine"] == pytest.approx(7.8)
    assert rows[0]["vs_engine"] is None


def test_without_cuda_the_full_check_stops_with_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full check would run")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "gpu", "--out", str(tmp_path / "x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "CUDA is not available" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_tile_sweep_without_cuda_measures_nothing_and_formats_table_rows(capsys):
    """Device: CPU only (the sweep itself needs CUDA; its row formatting does not)."""
    import torch

    from benchmarks import tile_sweep

    if not torch.cuda.is_available():
        assert tile_sweep.main([]) == 0
        assert "no CUDA device" in capsys.readouterr().out
    records = [dict(arch="sm90", d=3, kernel="flat", variant="reduce", rows=r, cols=32, num_warps=4, ms=ms, n=10)
               for r, ms in ((32, 2.0), (64, 1.5))]
    (row,) = tile_sweep.best_rows(records)
    assert row.startswith('("sm90", "ascent", 4, "flat"): Tile(64, 32, 4, 2)') and "1.500 ms" in row
