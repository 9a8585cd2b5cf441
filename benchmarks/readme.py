"""Generate README's performance section from benchmark results files.

Usage (from the repository root)::

    python -m benchmarks.readme benchmarks/reference_cpu benchmarks/reference_cpu_20k
    python -m benchmarks.readme --check benchmarks/reference_cpu benchmarks/reference_cpu_20k
    python -m benchmarks.readme benchmarks/reference_cpu benchmarks/reference_cpu_20k benchmarks/reference_gpu

The section between ``<!-- performance:start -->`` and
``<!-- performance:end -->`` in README.md is replaced (or, with ``--check``,
compared and a difference reported with exit status 1), so the README never
quotes a number that is not in a results file.  A folder written by
``python -m benchmarks gpu`` (``results.json`` with ``"kind": "gpu_check"``)
adds the GPU table: workload, first fit, warm fit, clusters, ARI against the
CPU fit, target and whether it was met, with its machine and test counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

START = "<!-- performance:start -->"
END = "<!-- performance:end -->"

# Methods shown in the compact tables, in this order.
HEADLINE_METHODS = [
    "sklearn exact",
    "sklearn bin_seeding",
    "lesson loop",
    "faiss kNN",
    "ours flat dense",
    "ours flat grid",
    "ours flat grid batched",
    "ours flat grid torch row sums",
    "ours flat auto",
    "ours flat faiss",
    "ours flat lsh",
    "ours gaussian dense",
    "ours gaussian grid",
    "ours flat dense bin_seeding",
]


def _load(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        seconds = row.get("seconds")
        if row.get("extrapolated") and seconds:
            return f"~{seconds:.3g}*"
        return "n/a"
    text = f"{row['seconds']:.3g}"
    return f"~{text}*" if row.get("extrapolated") else text


def _machine_line(result: dict, folder: Path) -> str:
    machine = result["machine"]
    parts = [
        f"`{folder.as_posix()}`: {result['suite']} suite on {result['device']}",
        str(machine.get("cpu", "?")),
        f"{machine.get('cores', '?')} cores",
        f"GPU {machine.get('gpu', 'none')}",
        f"torch {machine.get('torch', '?')}",
        f"scikit-learn {machine.get('sklearn', '?')}",
        f"commit {machine.get('git_commit', '?')}",
        f"load average at start {machine.get('load_average_at_start', '?')}",
        f"{result.get('wall_s', 0):.0f} s wall",
    ]
    return "- " + ", ".join(parts)


def _gpu_machine_line(result: dict, folder: Path) -> str:
    machine = result["machine"]
    commit = str(machine.get("git_commit", "?"))
    if machine.get("git_uncommitted_files"):
        commit += f" + {machine['git_uncommitted_files']} uncommitted files"
    parts = [
        f"`{folder.as_posix()}`: {result['suite']} on {result['device']}",
        f"GPU {machine.get('gpu', 'none')}",
    ]
    if machine.get("gpu_sms"):
        parts.append(f"{machine['gpu_sms']} SMs")
    parts += [
        f"driver {machine.get('driver', '?')}",
        f"CUDA {machine.get('cuda_runtime', '?')}",
        str(machine.get("cpu", "?")),
        f"{machine.get('cores', '?')} cores",
        f"torch {machine.get('torch', '?')}",
        f"triton {machine.get('triton', '?')}",
        f"commit {commit}",
        str(machine.get("date", "?")),
        f"{result.get('wall_s', 0):.0f} s wall",
    ]
    line = "- " + ", ".join(parts)
    # Notes written into the results file after the run (which code ran, what changed since).
    for key in ("code_measured",):
        if machine.get(key):
            line += f"; code measured: {machine[key]}"
    if result.get("note_after_run"):
        line += f". {result['note_after_run']}"
    return line


def gpu_section(folder: Path, result: dict) -> list[str]:
    """Lines of the GPU table for one ``python -m benchmarks gpu`` results folder.

    Examples
    --------
    >>> gpu_section(Path("r"), {"suite": "gpu check", "device": "cuda", "machine": {}, "smoke": False,
    ...     "tests": {}, "workloads": []})[-1]
    '|---|---|---|---|---|---|---|'
    """
    from .gpu_check import tests_line, workload_table

    lines = [""]
    if result.get("smoke"):
        lines += ["**SMOKE RUN on the CPU (`--smoke`): the numbers below mean nothing.**", ""]
    lines += [
        "GPU check (`python -m benchmarks gpu`): every point a seed, `MeanShift(bandwidth=h)` with default",
        "settings on `make_blobs` data (float32 numpy input: the copies to and from the GPU are inside the",
        "times); first fit = the first in a fresh process (compilation included; CUDA's start-up timed",
        "apart), warm fit = best of the next ones; ARI against a CPU fit of the same data (which CPU fit,",
        "per row, in the results file).",
        "The step and nodule rows give their measurements in the last column; the nodule row's warm time",
        "is the whole detection on the scan (after a smaller warm-up scan).",
        "",
        _gpu_machine_line(result, folder),
    ]
    tests = tests_line(result)
    if tests:
        lines += ["", tests]
    lines += ["", *workload_table(result)]
    return lines


def _rows_by(result: dict) -> dict:
    return {(row["case"], row["method"]): row for row in result["rows"]}


def section(folders: list[Path]) -> str:
    """Markdown of the performance section from the given result folders."""
    loaded = [(folder, _load(folder)) for folder in folders]
    gpu = [(folder, result) for folder, result in loaded if result.get("kind") == "gpu_check"]
    results = [(folder, result) for folder, result in loaded if result.get("kind") != "gpu_check"]
    gpu_note = "GPU: `python -m benchmarks gpu`, below." if gpu else "GPU: not measured yet (no GPU was available)."
    lines = [
        "Measured by `python -m benchmarks run` (see [benchmarks/README.md](benchmarks/README.md));",
        "this section is generated from the results files by `python -m benchmarks.readme`.",
        "Times are medians in seconds, fit only (bandwidth given); `~t*` = extrapolated from smaller",
        "sizes (not run); every row that ran found the generating clusters unless its ARI says",
        f"otherwise in the results file. {gpu_note}",
        "",
        "Machines:",
    ]
    lines += [_machine_line(result, folder) for folder, result in results]
    rows = {}
    cases = {}
    for _, result in results:
        rows.update(_rows_by(result))
        for case in result["cases"]:
            cases.setdefault(case["id"], case)
    series = sorted((c for c in cases.values() if c["id"].startswith("blobs-d2-")), key=lambda c: c["n"])
    if series:
        lines += [
            "",
            "Flat kernel, 2-D blobs (6 blobs, h = 2.83), time in seconds:",
            "",
            "| method | " + " | ".join(f"N={c['n']:,}" for c in series) + " |",
            "|---|" + "---|" * len(series),
        ]
        for method in HEADLINE_METHODS:
            cells = [_cell(rows.get((c["id"], method))) for c in series]
            if any(cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    biggest = series[-1]["id"] if series else None
    if biggest:
        def best(prefix, exclude=None):
            found = [
                r for (case, m), r in rows.items()
                if case == biggest and m.startswith(prefix) and r["status"] == "ok" and not r.get("extrapolated")
                and (exclude is None or exclude not in m)
            ]
            return min(found, key=lambda r: r["seconds"]) if found else None

        n_text = f"{series[-1]['n']:,}"
        for peer_name, ours in (
            ("sklearn exact", best("ours flat", exclude="bin_seeding")),
            ("sklearn bin_seeding", best("ours flat dense bin_seeding")),
        ):
            peer = rows.get((biggest, peer_name))
            if ours is None or peer is None or not peer.get("seconds"):
                continue
            how = "extrapolated" if peer.get("extrapolated") else "measured"
            ari = ours.get("ari_sklearn")
            lines += [
                "",
                f"At N={n_text}, same seeds: {peer_name} {peer['seconds']:.3g} s ({how}), "
                f"`{ours['method']}` {ours['seconds']:.3g} s: **{peer['seconds'] / ours['seconds']:.0f}x**, "
                f"{ours['n_clusters']} clusters, ARI vs truth {ours['ari_truth']:.3f}"
                + (f", ARI vs sklearn {ari:.3f}." if ari is not None else "."),
            ]
    dims = sorted((c for c in cases.values() if c["id"].startswith("blobs-d") and not c["id"].startswith("blobs-d2-")), key=lambda c: c["d"])
    if dims:
        lines += [
            "",
            f"Dimension sweep (N={dims[0]['n']:,}), time in seconds:",
            "",
            "| method | " + " | ".join(f"d={c['d']}" for c in dims) + " |",
            "|---|" + "---|" * len(dims),
        ]
        for method in HEADLINE_METHODS:
            cells = [_cell(rows.get((c["id"], method))) for c in dims]
            if any(cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for folder, result in gpu:
        lines += gpu_section(folder, result)
    plots = [(title, (folder / p).as_posix()) for folder, result in results for title, p in result.get("plots", {}).items()]
    if plots:
        lines += ["", " ".join(f"![{title}]({path})" for title, path in plots)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or ``--check``) README's performance section."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme")
    parser.add_argument("folders", nargs="+", type=Path, help="result folders (with results.json)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"{args.readme} has no {START} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = head + START + "\n" + section(args.folders) + END + tail
    if args.check:
        if updated != text:
            print(f"{args.readme}: performance section is out of date; run python -m benchmarks.readme", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(updated)
    print(f"updated the performance section of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
