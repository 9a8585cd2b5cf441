"""README's performance section must be what the committed results files say."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = [Path("benchmarks") / "reference_cpu", Path("benchmarks") / "reference_cpu_20k",
           Path("benchmarks") / "reference_gpu"]


def test_readme_performance_section_matches_results_files(monkeypatch):
    monkeypatch.chdir(ROOT)  # the section names the folders relative to the README
    if not all((folder / "results.json").exists() for folder in RESULTS):
        pytest.skip("reference benchmark results are not in this checkout")
    from benchmarks.readme import main

    args = ["--check", "--readme", str(ROOT / "README.md"), *map(str, RESULTS)]
    assert main(args) == 0, "run: python -m benchmarks.readme " + " ".join(map(str, RESULTS))


def test_section_changes_when_results_change(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    import json
    import shutil

    from benchmarks.readme import section

    if not (RESULTS[0] / "results.json").exists():
        pytest.skip("reference benchmark results are not in this checkout")
    copy = tmp_path / "results"
    shutil.copytree(RESULTS[0], copy)
    data = json.loads((copy / "results.json").read_text())
    row = next(r for r in data["rows"] if r["method"] == "ours flat dense" and r["status"] == "ok")
    row["seconds"] = 4321.0
    (copy / "results.json").write_text(json.dumps(data))
    assert "4.32e+03" in section([copy]) and "4.32e+03" not in section([RESULTS[0]])
