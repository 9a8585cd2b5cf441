"""First fit and fits under load: the two things a new user on a shared CPU machine meets first.

``python -m benchmarks first-fit [--out DIR] [--smoke]`` measures, for each case:

- **cold**: a fresh Python process with empty compile caches
  (``NUMBA_CACHE_DIR`` and ``TRITON_CACHE_DIR`` pointing at new empty
  folders): the import, the first fit, then a second fit of the same data
  (**warm**) in that process; the gap ``first - warm`` is what the first call
  costs beyond the steady state;
- **under load** (not with ``--smoke``): the warm fit again, quiet and then
  beside one busy process (a Python loop) on the same machine, worst of
  ``--repeats`` fits, and the ratio loaded / quiet;
- the console demo (``meanshift-gpu demo``) in a cold process, with its
  reported speed-up over scikit-learn (full run only).

Everything runs on the CPU.  Results: ``first_fit.json`` and
``first_fit.md`` in ``--out``.  Numbers are what this machine measured; the
README quotes a run and names its machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, n_samples, n_features, bandwidth, kernel)
CASES = [
    ("blobs 4k x 2 (demo size)", 4_000, 2, 1.6, "flat"),
    ("blobs 20k x 2", 20_000, 2, 1.5, "flat"),
    ("blobs 100k x 3", 100_000, 3, 1.5, "flat"),
    ("blobs 5k x 8 gaussian (dense)", 5_000, 8, 2.0, "gaussian"),
]
SMOKE_CASES = [("blobs 1k x 2", 1_000, 2, 1.5, "flat")]

_CHILD = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
from sklearn.datasets import make_blobs
from meanshift_gpu import MeanShift
imported = time.perf_counter() - start
n, d, h, kernel, repeats = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
X, _ = make_blobs(n_samples=n, n_features=d, centers=6, center_box=(-15, 15), random_state=0)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    model = MeanShift(bandwidth=h, kernel=kernel, device="cpu").fit(X)
    times.append(time.perf_counter() - start)
print(json.dumps({"import_s": imported, "fits_s": times, "clusters": len(model.cluster_centers_),
                  "neighbors": model.neighbors_, "threads": model.fit_info_.get("threads")}))
"""


def _fresh_env(cache_root: Path) -> dict:
    env = dict(os.environ)
    for name in ("NUMBA_CACHE_DIR", "TRITON_CACHE_DIR"):
        folder = cache_root / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    return env


def _child(case, repeats: int, env: dict, timeout: float) -> dict:
    _, n, d, h, kernel = case
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(d), str(h), kernel, str(repeats)],
                         env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"fit process failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _busy_process():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(cases, repeats: int, load: bool, demo: bool, timeout: float) -> dict:
    """Run the measurements; returns the results as a dict (see the module docstring)."""
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory() as caches:
            cold = _child(case, 2, _fresh_env(Path(caches)), timeout)
        row = {"case": case[0], "n_samples": case[1], "n_features": case[2], "bandwidth": case[3],
               "kernel": case[4], "neighbors": cold["neighbors"], "threads": cold["threads"],
               "import_s": cold["import_s"], "first_fit_s": cold["fits_s"][0], "warm_fit_s": cold["fits_s"][1]}
        row["first_minus_warm_s"] = row["first_fit_s"] - row["warm_fit_s"]
        if load:
            quiet = _child(case, repeats + 1, dict(os.environ), timeout)["fits_s"][1:]
            busy = _busy_process()
            try:
                time.sleep(0.3)
                loaded = _child(case, repeats + 1, dict(os.environ), timeout)["fits_s"][1:]
            finally:
                busy.kill()
                busy.wait()
            row.update(quiet_worst_s=max(quiet), quiet_median_s=sorted(quiet)[len(quiet) // 2],
                       loaded_worst_s=max(loaded), loaded_median_s=sorted(loaded)[len(loaded) // 2])
            row["load_ratio_worst"] = row["loaded_worst_s"] / row["quiet_median_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}, "cases": rows}
    if demo:
        with tempfile.TemporaryDirectory() as caches:
            env = _fresh_env(Path(caches))
            out = subprocess.run(["meanshift-gpu", "demo", "--out", str(Path(caches) / "demo.png")], env=env,
                                 capture_output=True, text=True, timeout=timeout)
        found = re.search(r"speed-up vs scikit-learn: ([0-9.]+)x", out.stdout)
        ours = re.search(r"^meanshift_gpu\s+([0-9.]+)", out.stdout, re.M)
        theirs = re.search(r"^scikit-learn\s+([0-9.]+)", out.stdout, re.M)
        result["cold_demo"] = {
            "speedup": float(found.group(1)) if found else None,
            "ours_s": float(ours.group(1)) if ours else None,
            "sklearn_s": float(theirs.group(1)) if theirs else None,
            "returncode": out.returncode,
        }
        print(json.dumps(result["cold_demo"]), flush=True)
    return result


def markdown(result: dict) -> str:
    """The results as a markdown table."""
    lines = [f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}, "
             f"Python {result['machine']['python']}.", "",
             "| case | method | threads | import (s) | first fit, empty caches (s) | warm fit (s) | first - warm (s) "
             "| quiet (s, median) | beside a busy process (s, worst) | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["cases"]:
        load = (f"{r['quiet_median_s']:.3f} | {r['loaded_worst_s']:.3f} | {r['load_ratio_worst']:.2f}x"
                if "load_ratio_worst" in r else "— | — | —")
        lines.append(f"| {r['case']} | {r['neighbors']} | {r['threads']} | {r['import_s']:.2f} | "
                     f"{r['first_fit_s']:.3f} | {r['warm_fit_s']:.3f} | {r['first_minus_warm_s']:+.3f} | {load} |")
    demo = result.get("cold_demo")
    if demo:
        lines += ["", f"`meanshift-gpu demo` with empty caches: ours {demo['ours_s']} s, scikit-learn "
                      f"{demo['sklearn_s']} s, speed-up {demo['speedup']}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks first-fit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/first_fit"))
    parser.add_argument("--smoke", action="store_true", help="one small case, cold and warm only")
    parser.add_argument("--repeats", type=int, default=5, help="warm fits quiet and under load")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    result = measure(SMOKE_CASES if args.smoke else CASES, args.repeats, load=not args.smoke, demo=not args.smoke,
                     timeout=args.timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "first_fit.json").write_text(json.dumps(result, indent=2))
    (args.out / "first_fit.md").write_text(markdown(result))
    print(f"wrote {args.out / 'first_fit.json'} and {args.out / 'first_fit.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
