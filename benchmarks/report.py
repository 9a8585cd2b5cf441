"""Machine description, results.json, the markdown table and the PNG plots."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from .measure import DEVICE_MEMORY_METHOD, HOST_MEMORY_METHOD, fit_power_law
from .peers import PEERS

PEER_SHORT = {
    "sklearn exact": "sklearn",
    "sklearn bin_seeding": "sklearn bin",
    "lesson loop": "lesson",
    "keops": "keops",
    "faiss kNN": "faiss",
}


def _version(module_name: str) -> str:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        return f"not installed ({type(exc).__name__})"
    return str(getattr(module, "__version__", "installed (no version)"))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or ``platform.processor()``).

    Examples
    --------
    >>> isinstance(cpu_model(), str)
    True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: CPU, cores, GPU, library versions, load.

    Examples
    --------
    >>> info = machine_info(torch.device("cpu"))
    >>> info["gpu"]
    'none'
    """
    gpu = "none"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    elif torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} (present, not used)"
    commit = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "device": str(device),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": _version("sklearn"),
        "numpy": np.__version__,
        "meanshift_gpu": _version("meanshift_gpu"),
        "triton": _version("triton"),
        "faiss": _version("faiss"),
        "pykeops": _version("pykeops"),
        "git_commit": commit,
        "load_average_at_start": load,
    }


def write_json(results: dict, out: Path) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, default=_json_default))
    return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


# ----------------------------------------------------------------------------- formatting
def fmt_seconds(row: dict) -> str:
    """Time cell: the median, ``~t (extrapolated)`` for a skipped case, or the status.

    Examples
    --------
    >>> fmt_seconds({"status": "ok", "seconds": 0.01234, "extrapolated": False})
    '0.0123'
    >>> fmt_seconds({"status": "skipped", "seconds": 250.0, "extrapolated": True})
    '~250 (extrapolated)'
    """
    seconds = row.get("seconds")
    if row["status"] == "ok" and seconds is not None:
        return f"{seconds:.3g}"
    if row.get("extrapolated") and seconds is not None:
        return f"~{seconds:.3g} (extrapolated)"
    return row["status"]


def _fmt_mb(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def _fmt_float(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_speedup(entry) -> str:
    """Speed-up cell: ``12.3x``, ``~12.3x`` when the peer's time is extrapolated, or blank.

    Examples
    --------
    >>> fmt_speedup({"ratio": 12.34, "extrapolated": True})
    '~12.3x'
    >>> fmt_speedup(None)
    ''
    """
    if not entry:
        return ""
    return f"{'~' if entry['extrapolated'] else ''}{entry['ratio']:.3g}x"


TABLE_COLUMNS = (
    ["method", "time (s)", "runs", "host MB", "device MB", "clusters", "ARI truth", "ARI sklearn"]
    + [f"x {PEER_SHORT[p]}" for p in PEERS]
)


def row_cells(row: dict) -> list[str]:
    """The markdown/console cells of one result row, in ``TABLE_COLUMNS`` order."""
    measured = row["status"] == "ok"
    return [
        row["method"],
        fmt_seconds(row),
        str(len(row["times"])) if measured else "",
        _fmt_mb(row["host_bytes"]) if measured else "",
        (_fmt_mb(row["device_bytes"]) if row["device_bytes"] is not None else "n/a") if measured else "",
        str(row["n_clusters"]) if row.get("n_clusters") is not None else "",
        _fmt_float(row.get("ari_truth")) if measured else "",
        _fmt_float(row.get("ari_sklearn")) if measured else "",
    ] + [fmt_speedup(row["speedup"].get(p)) for p in PEERS]


def console_line(case_id: str, row: dict) -> str:
    """One fixed-width line printed as soon as a row is finished."""
    cells = row_cells(row)
    speed = " ".join(f"{PEER_SHORT[p]}={c}" for p, c in zip(PEERS, cells[8:]) if c)
    note = f"  [{row['note']}]" if row.get("note") and row["status"] != "ok" else ""
    return (f"{case_id:<22} {cells[0]:<30} {cells[1]:>14} runs={cells[2]:<2} host={cells[3]:>7}MB "
            f"dev={cells[4]:>6} k={cells[5]:<4} ARI={cells[6]:<5} vs-skl={cells[7]:<5} {speed}{note}")


def _uniform_statuses(results: dict) -> dict[str, str]:
    """Methods that were not measured on any case for the same reason: method -> reason."""
    by_method: dict[str, set] = {}
    for row in results["rows"]:
        by_method.setdefault(row["method"], set()).add(
            row["status"] if row["status"] not in ("ok", "skipped") else "measured"
        )
    return {m: next(iter(s)) for m, s in by_method.items() if len(s) == 1 and "measured" not in s}


def series_exponents(results: dict) -> dict[str, dict[str, dict]]:
    """Fitted exponent of time ~ N^b per series and method, on measured points only."""
    out: dict[str, dict[str, dict]] = {}
    for row in results["rows"]:
        if row["series"] is None or row["status"] != "ok":
            continue
        out.setdefault(row["series"], {}).setdefault(row["method"], {"n": [], "seconds": []})
        entry = out[row["series"]][row["method"]]
        entry["n"].append(row["n"])
        entry["seconds"].append(row["seconds"])
    for series in out.values():
        for entry in series.values():
            fit = fit_power_law(entry["n"], entry["seconds"])
            entry["exponent"] = None if fit is None else fit[1]
    return out


def write_markdown(results: dict, out: Path) -> Path:
    """results.md: machine, settings, one table per case, fitted exponents, notes."""
    m = results["machine"]
    lines = [
        f"# meanshift_gpu benchmark: {results['suite']} suite on {results['device']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), GPU: {m['gpu']}",
        f"- Software: Python {m['python']}, torch {m['torch']}, scikit-learn {m['sklearn']}, "
        f"numpy {m['numpy']}, faiss {m['faiss']}, pykeops {m['pykeops']}, triton {m['triton']}, "
        f"meanshift_gpu {m['meanshift_gpu']} (commit {m['git_commit']})",
        f"- Load average at start: {m['load_average_at_start']}; total wall time "
        f"{results.get('wall_s', float('nan')):.0f} s",
        f"- Time: median of up to {results['settings']['repeats']} runs after a warm-up run; a method "
        f"whose predicted time on a case exceeds {results['settings']['budget_s']:g} s is not run and "
        "its predicted time is shown as `~t (extrapolated)` (speed-ups against it as `~`).",
        f"- Host memory: {HOST_MEMORY_METHOD}. Device memory: {DEVICE_MEMORY_METHOD}; n/a on the CPU.",
        "- Bandwidth: each case fixes one flat radius h used by every flat method; Gaussian methods "
        "use sigma = h/2. Data are float32. `x peer` = peer's time / this row's time.",
        "- ARI truth: adjusted Rand index against the generating labels; ARI sklearn: against "
        "`sklearn.cluster.MeanShift` (exact) on the same data, when it was run.",
        "",
    ]
    uniform = _uniform_statuses(results)
    if uniform or results["skipped_workloads"]:
        lines.append("## Not measured")
        lines.append("")
        for method, reason in uniform.items():
            lines.append(f"- {method}: {reason}")
        for workload, reason in results["skipped_workloads"]:
            lines.append(f"- workload {workload}: {reason}")
        lines.append("")
    for case in results["cases"]:
        rows = [r for r in results["rows"] if r["case"] == case["id"] and r["method"] not in uniform]
        if not rows:
            continue
        lines.append(f"## {case['id']}: N={case['n']}, d={case['d']}, h={case['bandwidth']:.4g}")
        lines.append("")
        lines.append(f"{case['note']}. True clusters: {case['n_true'] if case['n_true'] else 'unknown'}.")
        lines.append("")
        lines.append("| " + " | ".join(TABLE_COLUMNS) + " |")
        lines.append("|" + "|".join("---" for _ in TABLE_COLUMNS) + "|")
        for row in rows:
            lines.append("| " + " | ".join(c.replace("|", "/") for c in row_cells(row)) + " |")
        notes = [f"{r['method']}: {r['note']}" for r in rows if r.get("note")]
        if notes:
            lines.append("")
            lines.extend(f"- {n}" for n in notes)
        lines.append("")
    exps = series_exponents(results)
    if exps:
        lines.append("## Scaling: fitted exponent b of time ~ N^b (measured points only)")
        lines.append("")
        for series, methods in exps.items():
            lines.append(f"Series {series}:")
            lines.append("")
            lines.append("| method | b | sizes measured |")
            lines.append("|---|---|---|")
            for method, entry in methods.items():
                b = "n/a (one size)" if entry["exponent"] is None else f"{entry['exponent']:.2f}"
                lines.append(f"| {method} | {b} | {', '.join(str(n) for n in entry['n'])} |")
            lines.append("")
    if results.get("sweep"):
        sweep = results["sweep"]
        widths = sorted({s["bandwidth"] for s in sweep})
        lines.append(f"## Quality vs bandwidth ({results['sweep_case']}, "
                     f"{results.get('sweep_true_clusters')} true clusters)")
        lines.append("")
        lines.append("Cells: clusters found / ARI vs truth / seconds (one run each).")
        lines.append("")
        lines.append("| method | " + " | ".join(f"h={h:.3g}" for h in widths) + " |")
        lines.append("|---|" + "---|" * len(widths))
        for method in dict.fromkeys(s["method"] for s in sweep):
            cells = []
            for h in widths:
                entry = next((s for s in sweep if s["method"] == method and s["bandwidth"] == h), None)
                if entry is None:
                    cells.append("")
                elif entry["status"] == "ok":
                    cells.append(f"{entry['n_clusters']} / {_fmt_float(entry['ari_truth'], 2)} / {entry['seconds']:.2g}")
                else:
                    cells.append(entry["status"].replace("|", "/"))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    elif results.get("sweep_note"):
        lines.append(f"## Quality vs bandwidth: {results['sweep_note']}")
        lines.append("")
    if results.get("plots"):
        lines.append("## Plots")
        lines.append("")
        for name, value in results["plots"].items():
            lines.append(f"![{name}]({value})" if value.endswith(".png") else f"- {name}: {value}")
        lines.append("")
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, out: Path) -> dict[str, str]:
    """time_vs_n.png (per series) and quality_vs_bandwidth.png; a note instead when impossible."""
    try:
        plt = _pyplot()
    except ImportError as exc:
        return {"plots": f"not drawn: matplotlib is not installed ({exc})"}
    written: dict[str, str] = {}
    exps = series_exponents(results)
    series_names = sorted({r["series"] for r in results["rows"] if r["series"]})
    for series in series_names:
        rows = [r for r in results["rows"] if r["series"] == series and r["seconds"] is not None]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        if not methods:
            continue
        fig, ax = plt.subplots(figsize=(10, 6))
        colors = plt.get_cmap("tab20")
        for i, method in enumerate(methods):
            pts = sorted((r["n"], r["seconds"], r["extrapolated"]) for r in rows if r["method"] == method)
            color = colors(i % 20)
            style = "-" if method.startswith("ours") else "--"
            measured = [(n, t) for n, t, e in pts if not e]
            guessed = [(n, t) for n, t, e in pts if e]
            b = exps.get(series, {}).get(method, {}).get("exponent")
            label = f"{method} (N^{b:.2f})" if b is not None else f"{method} (fit n/a)"
            if measured:
                ax.plot(*zip(*measured), style, marker="o", color=color, label=label)
            if guessed:
                chain = measured[-1:] + guessed
                ax.plot(*zip(*chain), ":", color=color)
                ax.plot(*zip(*guessed), "o", mfc="none", color=color,
                        label=None if measured else f"{method} (extrapolated only)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (points)")
        ax.set_ylabel("wall time (s), median")
        ax.set_title(f"{results['suite']} suite, {series}, {results['machine']['cpu'][:40]}, "
                     f"GPU: {results['machine']['gpu'][:30]}\nhollow markers: extrapolated (not run)",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        name = f"time_vs_n_{series}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written[f"time vs N ({series})"] = name
    sweep = [s for s in results.get("sweep", []) if s["status"] == "ok"]
    if sweep:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
        for method in dict.fromkeys(s["method"] for s in sweep):
            pts = sorted((s["bandwidth"], s["ari_truth"], s["n_clusters"]) for s in sweep if s["method"] == method)
            h, ari, k = zip(*pts)
            ax1.plot(h, ari, marker="o", label=method)
            ax2.plot(h, k, marker="o", label=method)
        if results.get("sweep_true_clusters"):
            ax2.axhline(results["sweep_true_clusters"], color="k", ls=":", label="true clusters")
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel("bandwidth h (flat radius; Gaussian sigma = h/2)")
            ax.grid(True, which="both", alpha=0.3)
        ax1.set_ylabel("ARI vs truth")
        ax2.set_ylabel("clusters found")
        ax2.set_yscale("log")
        ax1.legend(fontsize=7)
        ax1.set_title(f"quality vs bandwidth, {results['sweep_case']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "quality_vs_bandwidth.png", dpi=110)
        plt.close(fig)
        written["quality vs bandwidth"] = "quality_vs_bandwidth.png"
    return written
