"""The prepared one-shot GPU check (issue #17): ``python -m benchmarks gpu``.

In one command, sized to end within 8 minutes on one GPU:

1. the default test suite on CUDA (``TRITON_INTERPRET`` unset, so
   ``device="auto"`` picks the GPU and the compiled kernels), with its
   counts and the ids of the failed tests;
2. the fit workloads, every point a seed, ``MeanShift(bandwidth=h)`` with
   default settings, on ``make_blobs(n_samples=N, n_features=d, centers=k,
   center_box=(-10, 10), random_state=0)`` cast to float32 and passed as a
   numpy array, as a scikit-learn user would (so the host-to-device copy is
   in the times).  Each runs in a fresh process under a hard timeout: its
   first fit there is the *first fit* (compilation, caches, CUDA start-up
   included), the best of the later fits the *warm fit*.  Recorded: both
   times, clusters, ``n_iter_``, ``neighbors_`` / ``fit_info_`` when the
   estimator has them, peak GPU memory, the adjusted Rand index against a
   CPU fit of the same data (which CPU fit is named per row: it must fit the
   time budget) and against the generating blobs;
3. one dense Gaussian step at 1M x 8 (``python -m benchmarks.gpu_step``,
   its table kept verbatim), the 512 x 512 x 240 nodule scan, and the
   optional 10M-point fit, last;
4. optionally, the Triton kernel tests compiled on the GPU
   (``TRITON_INTERPRET=0 pytest -m kernels``).

Every step has a timeout, and ``--budget-s`` bounds the whole run: a step
that no longer fits is recorded as skipped ("out of time budget") rather
than run.  ``results.json`` (machine record, test counts, one row per
workload) is rewritten after every step, so a killed run keeps what it
measured; ``results.md`` is written at the end (and after every step).

Triton's compile cache: the script makes an empty cache folder that the
fit workloads share (the first of them compiles with nothing cached; later
ones may reuse its kernels), and the cold-compile workload
(``gauss8d-100k``) gets a fresh empty folder of its own.  Each row records
which, and how many cache files its process found at start.

Run from the repository root::

    python -m benchmarks gpu                                 # on a CUDA machine
    python -m benchmarks gpu --skip-tests --only flat2d-20k flat3d-1m
    python -m benchmarks gpu --smoke --out /tmp/gpu_check    # the script itself, on the CPU

``--smoke`` runs the same code path on the CPU with tiny sizes under the
Triton interpreter (its numbers mean nothing); the test suite step is
skipped.  ``python -m benchmarks.readme ... benchmarks/reference_gpu``
renders the results in README's performance section.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("benchmarks") / "reference_gpu"
INPUT_NOTE = ("numpy float32 array, as a scikit-learn user passes it: the host-to-device copy and the "
              "labels' copy back are inside the fit times")
# Reproduces examples/nodule_candidates/README.md's "realistic size" scan:
# write_phantom_set(..., 1, shape_xyz=(512, 512, 240), seed=7) draws scan 0 with seed 7 * 1000.
NODULE_SEED = 7000
NODULE_UID = "1.3.6.1.4.1.14519.5.2.1.6279.9999.7.0"


@dataclass(frozen=True)
class Workload:
    """One measured step of the check (a fit, the dense step or the nodule scan)."""

    id: str
    title: str
    kind: str  # "fit", "step" or "nodule"
    timeout_s: float  # hard limit of the step's process
    min_s: float  # not started with less budget left than this
    n: int = 0
    d: int = 0
    centers: int = 0
    bandwidth: float = 0.0
    kernel: str = "flat"
    smoke_n: int = 0
    target_warm_s: float | None = None
    reference: str = "full"  # CPU fit compared with: "full", "bin_seeding" or "seeds"
    reference_seeds: int = 0
    reference_note: str = ""
    fresh_cache: bool = False  # a new empty Triton cache (the cold-compile target)
    compare_cpu_speed: bool = False  # also time the CPU path warm and require the GPU to beat it
    smoke_backend: str | None = None  # backend forced in --smoke (exercise the interpreter)
    optional: bool = False


WORKLOADS: tuple[Workload, ...] = (
    Workload("flat2d-20k", "20k x 2 flat h=2.83, 6 blobs", "fit", timeout_s=150, min_s=30,
             n=20_000, d=2, centers=6, bandwidth=2.83, smoke_n=300, target_warm_s=0.05,
             reference="full", compare_cpu_speed=True),
    Workload("flat3d-1m", "1M x 3 flat h=1.5, 10 blobs", "fit", timeout_s=120, min_s=30,
             n=1_000_000, d=3, centers=10, bandwidth=1.5, smoke_n=500, target_warm_s=1.0,
             reference="bin_seeding"),
    Workload("flat5d-1m", "1M x 5 flat h=1.5, 10 blobs", "fit", timeout_s=120, min_s=30,
             n=1_000_000, d=5, centers=10, bandwidth=1.5, smoke_n=500, target_warm_s=2.0,
             reference="seeds", reference_seeds=300,
             reference_note="bin_seeding on the CPU took 789 s at 1M x 5 on 2 cores (83 bins' seeds on the "
                            "5-D grid), beyond the budget; 300 random points as seeds, same data"),
    Workload("gauss8d-100k", "100k x 8 gaussian h=2, 10 blobs", "fit", timeout_s=120, min_s=30,
             n=100_000, d=8, centers=10, bandwidth=2.0, kernel="gaussian", smoke_n=64, target_warm_s=1.0,
             reference="seeds", reference_seeds=500,
             reference_note="every point a seed on the CPU is dense (d > 6): ~50 s at 10k x 8 on 2 cores, "
                            "~100x that at 100k; 500 random points as seeds, same data",
             fresh_cache=True, smoke_backend="triton"),
    Workload("step-gauss-1m-d8", "one dense Gaussian step, 1M x 8 (benchmarks.gpu_step)", "step",
             timeout_s=180, min_s=45),
    Workload("nodule-512", "nodule scan 512 x 512 x 240 (examples.nodule_candidates)", "nodule",
             timeout_s=180, min_s=60, optional=True),
    # Last among the fits: optional, and the first to go when time runs short.
    Workload("flat3d-10m", "10M x 3 flat h=1.5, 10 blobs", "fit", timeout_s=200, min_s=60,
             n=10_000_000, d=3, centers=10, bandwidth=1.5, smoke_n=800, target_warm_s=30.0,
             reference="seeds", reference_seeds=1000,
             reference_note="bin_seeding on the CPU takes ~10x its 1M time (39 s at 1M on 2 cores); "
                            "1,000 random points as seeds, same data",
             optional=True),
)
WORKLOAD_IDS = [w.id for w in WORKLOADS]

# One repeat: a 1M x 1M step of the torch engine alone takes seconds.
GPU_STEP_ARGS = ["--sizes", "1000000", "--dims", "8", "--kernel", "gaussian", "--skip-lesson",
                 "--repeat", "1"]
STEP_TARGET_OF_EXP = 0.5
STEP_TARGET_VS_ENGINE = 5.0
COLD_COMPILE_SLACK_S = 5.0
NODULE_TARGET_S = 1.0
# The rows of the kernels fits use: the fused ascent kernel and the float32 step kernel.
STEP_TARGET_METHODS = ("triton fused", "triton fused mma", "triton fp32")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _jsonable(value, depth: int = 0):
    """A JSON-friendly copy of an estimator attribute (dataclass, dict, array, tensor ...)."""
    if depth > 6:
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v, depth + 1) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy / torch scalars
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors: small ones in full
        size = value.numel() if hasattr(value, "numel") else int(getattr(value, "size", 0))
        if size <= 64:
            return value.tolist()
        return f"<{type(value).__name__} shape {tuple(getattr(value, 'shape', ()))}>"
    return repr(value)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ============================================================================ child processes
def _child_fit(wl: Workload, smoke: bool, record: dict, save) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from meanshift_gpu import MeanShift

    from .measure import timed_call

    n = wl.smoke_n if smoke else wl.n
    start = time.perf_counter()
    X, truth = make_blobs(n_samples=n, n_features=wl.d, centers=wl.centers, center_box=(-10, 10), random_state=0)
    X = X.astype(np.float32)
    record.update(n=n, d=wl.d, data_s=round(time.perf_counter() - start, 3))
    params = {"bandwidth": wl.bandwidth}
    if wl.kernel != "flat":
        params["kernel"] = wl.kernel
    if smoke:
        params["device"] = "cpu"
        if wl.smoke_backend:
            params["backend"] = wl.smoke_backend
    device = torch.device("cpu" if smoke else "cuda")
    record["params"] = ", ".join(f"{k}={v!r}" for k, v in params.items())
    record["device"] = str(device) if smoke else "auto -> cuda" if torch.cuda.is_available() else "auto -> cpu"
    if device.type == "cuda":
        # timed_call synchronises before its timer starts, which would create the CUDA
        # context there: do it here, timed apart, so it is neither hidden nor mixed in.
        start = time.perf_counter()
        torch.cuda.init()
        torch.cuda.synchronize(device)
        record["cuda_start_s"] = round(time.perf_counter() - start, 3)

    seconds, model, _ = timed_call(lambda: MeanShift(**params).fit(X), device)
    record.update(first_fit_s=seconds, phase="first fit")
    save()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Best of up to two warm fits; the second only where it is cheap.
    warm = []
    for _ in range(2):
        seconds, model, _ = timed_call(lambda: MeanShift(**params).fit(X), device)
        warm.append(seconds)
        if seconds > 5.0:
            break
    labels = np.asarray(model.labels_)
    record.update(
        warm_fits_s=warm, warm_fit_s=min(warm), n_clusters=int(len(model.cluster_centers_)),
        n_iter=int(model.n_iter_), ari_truth=round(float(adjusted_rand_score(truth, labels)), 4), phase="warm fits",
    )
    for attribute in ("neighbors_", "fit_info_", "backend_"):
        if hasattr(model, attribute):
            record[attribute.rstrip("_")] = _jsonable(getattr(model, attribute))
    if device.type == "cuda":
        record["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    save()
    del model

    # The CPU reference: same data and kernel, the library's CPU path.
    ref_params = {k: v for k, v in params.items() if k not in ("device", "backend")}
    ref_params["device"] = "cpu"
    reference = {"kind": wl.reference}
    if wl.reference == "bin_seeding":
        ref_params["bin_seeding"] = True
        reference["description"] = "MeanShift(..., device='cpu', bin_seeding=True), same data"
    elif wl.reference == "seeds":
        k = min(wl.reference_seeds, max(1, n // 4))
        rng = np.random.default_rng(0)
        ref_params["seeds"] = X[rng.choice(n, k, replace=False)]
        reference["description"] = f"MeanShift(..., device='cpu', seeds=<{k:,} random points>), same data"
    else:
        reference["description"] = "MeanShift(..., device='cpu'), every point a seed, same data"
    if wl.reference_note:
        reference["why"] = wl.reference_note
    reference["threads"] = torch.get_num_threads()
    if wl.compare_cpu_speed:
        # The CPU path's first fit pays torch's one-off costs; time it warm too.
        seconds, ref, _ = timed_call(lambda: MeanShift(**ref_params).fit(X), torch.device("cpu"))
        record["cpu_first_fit_s"] = seconds
        save()
        cpu_warm = []
        for _ in range(2):
            seconds, ref, _ = timed_call(lambda: MeanShift(**ref_params).fit(X), torch.device("cpu"))
            cpu_warm.append(seconds)
        record.update(cpu_warm_fit_s=min(cpu_warm), cpu_warm_fits_s=cpu_warm)
        reference["seconds"] = min(cpu_warm)
    else:
        seconds, ref, _ = timed_call(lambda: MeanShift(**ref_params).fit(X), torch.device("cpu"))
        reference["seconds"] = seconds
    reference.update(n_clusters=int(len(ref.cluster_centers_)), n_iter=int(ref.n_iter_))
    record["cpu_reference"] = reference
    record["ari_cpu"] = round(float(adjusted_rand_score(np.asarray(ref.labels_), labels)), 4)


def _child_nodule(wl: Workload, smoke: bool, record: dict, save) -> None:
    import torch

    from examples.nodule_candidates.detect import STAGES, DetectorConfig, detect_candidates
    from examples.nodule_candidates.phantom import make_phantom

    device = "cpu" if smoke else "cuda"
    shape = (64, 64, 32) if smoke else (512, 512, 240)
    record["via"] = ("detect_candidates() in this process on make_phantom(): the stages that "
                     "`python -m examples.nodule_candidates detect` times, without reading the scan from "
                     ".mhd files (that needs SimpleITK, which the GPU machine lacks)")
    record["device"] = device
    if not smoke:
        # One-off costs (kernel compilation, CUDA start-up) on a small scan first, timed apart.
        start = time.perf_counter()
        detect_candidates(make_phantom((96, 96, 48), seed=NODULE_SEED).scan, DetectorConfig(device=device))
        record["warm_up_s"] = round(time.perf_counter() - start, 3)
        save()
    start = time.perf_counter()
    phantom = make_phantom(shape, seed=NODULE_SEED, seriesuid=NODULE_UID)
    record.update(phantom_s=round(time.perf_counter() - start, 3), shape_xyz=list(shape),
                  spacing_mm=[round(float(s), 4) for s in phantom.scan.spacing], phase="phantom")
    save()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    det = detect_candidates(phantom.scan, DetectorConfig(device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    record.update(
        detect_s=round(time.perf_counter() - start, 3),
        stages_s={s: round(float(det.timings.get(s, 0.0)), 3) for s in STAGES},
        n_points=int(det.n_points), n_clusters=int(det.n_clusters), n_candidates=len(det.candidates),
    )


def run_child(workload_id: str, smoke: bool, result_path: Path) -> int:
    """Run one workload in this (fresh) process, saving its record to ``result_path`` as it goes.

    The parent reads the record even when it had to kill this process, so
    every phase that finished is kept.

    Examples
    --------
    >>> run_child("flat2d-20k", True, Path("/tmp/flat2d.json"))  # doctest: +SKIP
    0
    """
    wl = next(w for w in WORKLOADS if w.id == workload_id)
    cache = os.environ.get("TRITON_CACHE_DIR")
    record = {"id": wl.id, "phase": "started", "pid": os.getpid(),
              "triton_cache_files_at_start": sum(len(f) for _, _, f in os.walk(cache)) if cache else None}

    def save():
        _write_atomic(result_path, json.dumps(record, default=repr))

    save()
    if wl.kind == "fit":
        _child_fit(wl, smoke, record, save)
    elif wl.kind == "nodule":
        _child_nodule(wl, smoke, record, save)
    else:
        raise ValueError(f"workload {wl.id} does not run in a child process")
    record["phase"] = "done"
    save()
    return 0


# ============================================================================ the parent
def _run_limited(cmd: list[str], env: dict, timeout_s: float, log_path: Path) -> tuple[int | None, float, str]:
    """Run ``cmd`` in its own process group with output to ``log_path``; kill the group at the timeout.

    Returns ``(returncode or None when killed, seconds, output)``.  Output goes
    to a file, not a pipe, so grandchildren (pytest-xdist workers) cannot
    hold the parent waiting on a pipe after the kill.
    """
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            rc = None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        # Kill what is left of the group: all of it on a timeout, stray workers otherwise.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return rc, time.perf_counter() - start, log_path.read_text(errors="replace")


def _error_line(output: str) -> str:
    """The last meaningful line of a failed process's output (the exception, usually)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line) or line.startswith("FAILED"):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


_SUMMARY_WORDS = {"passed": "passed", "failed": "failed", "error": "errors", "errors": "errors",
                  "skipped": "skipped", "xfailed": "xfailed", "xpassed": "xpassed", "deselected": "deselected",
                  "warning": "warnings", "warnings": "warnings"}


def parse_pytest_output(output: str) -> dict:
    """Counts from pytest's closing summary line and the ids in its ``-rfE`` short summary.

    Examples
    --------
    >>> out = "..F\\nFAILED tests/test_a.py::test_x - AssertionError: no\\n1 failed, 2 passed, 1 skipped in 3.21s"
    >>> r = parse_pytest_output(out)
    >>> r["passed"], r["failed"], r["skipped"], r["errors"], r["failed_tests"]
    (2, 1, 1, 0, ['tests/test_a.py::test_x'])
    """
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0, "xpassed": 0,
              "deselected": 0, "warnings": 0}
    summary = None
    for line in output.splitlines():
        text = line.strip().strip("=").strip()
        outcome = re.search(r"\d+ (passed|failed|errors?|skipped|deselected|xfailed)|no tests ran", text)
        if outcome and re.search(r"\bin [\d.]+s\b", text):
            summary = text
    if summary is not None:
        for number, word in re.findall(r"(\d+) ([a-z]+)", summary):
            if word in _SUMMARY_WORDS:
                counts[_SUMMARY_WORDS[word]] = int(number)
    else:
        counts = dict.fromkeys(counts)  # not "0 failed": unknown (killed, or pytest crashed)
    failed_tests = []
    for line in output.splitlines():
        match = re.match(r"^(FAILED|ERROR) (\S+\.py\S*)", line.strip())
        if match:
            failed_tests.append(match.group(2))
    return {**counts, "summary": summary, "failed_tests": failed_tests}


def _progress_counts(output: str) -> dict:
    """Outcome letters of pytest's progress lines (``..F.s  [ 12%]``): what ran before a kill."""
    letters = {".": "passed", "F": "failed", "E": "errors", "s": "skipped", "x": "xfailed", "X": "xpassed"}
    counts = dict.fromkeys(letters.values(), 0)
    for line in output.splitlines():
        body = re.sub(r"\s*\[\s*\d+%\]\s*$", "", line.strip())
        if body and re.fullmatch(r"[.FEsxX]+", body):
            for char in body:
                counts[letters[char]] += 1
    return counts


class Check:
    """State of one run of the check: options, budget, results, files."""

    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.out = Path(args.out)
        self.start = time.perf_counter()
        self.budget_s = args.budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.shared_cache = self.scratch / "triton_cache_shared"
        self.shared_cache.mkdir()
        self.results: dict = {}

    # ----------------------------------------------------------------------- bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def save(self) -> None:
        from .report import write_json

        self.results["wall_s"] = round(self.elapsed(), 1)
        write_json(self.results, self.out)
        _write_atomic(self.out / "results.md", markdown(self.results))

    def env(self, *, interpret: bool, cache: Path | None) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        if interpret:
            env["TRITON_INTERPRET"] = "1"
        else:
            env.pop("TRITON_INTERPRET", None)
        if cache is not None:
            env["TRITON_CACHE_DIR"] = str(cache)
        return env

    def budget_for(self, timeout_s: float, min_s: float) -> float | None:
        """Seconds the step may run, or None when it no longer fits the budget."""
        left = self.left()
        return None if left < min_s else min(timeout_s, left)

    # ----------------------------------------------------------------------- machine
    def machine(self) -> dict:
        import torch

        from .report import machine_info

        device = torch.device("cpu" if self.smoke else "cuda")
        info = machine_info(device)
        info["date"] = _now()
        info["cuda_runtime"] = torch.version.cuda
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            info.update(gpu_name=props.name, gpu_sms=props.multi_processor_count,
                        gpu_capability=f"{props.major}.{props.minor}",
                        gpu_memory_gib=round(props.total_memory / 2**30, 1))
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm",
                                      "--format=csv,noheader,nounits", "--id=0"],
                                     capture_output=True, text=True, timeout=15, check=True).stdout
                driver, clock = [p.strip() for p in out.strip().splitlines()[0].split(",")]
                info.update(driver=driver, gpu_max_sm_clock_mhz=clock)
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                info["driver"] = "unknown (nvidia-smi did not answer)"
        try:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            info["git_uncommitted_files"] = len(dirty.splitlines())
        except (OSError, subprocess.SubprocessError):
            info["git_uncommitted_files"] = None
        return info

    # ----------------------------------------------------------------------- steps
    def run_tests(self, name: str, extra: list[str], timeout_s: float, env: dict) -> dict:
        import importlib.util

        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *extra]
        if importlib.util.find_spec("xdist") is not None:
            cmd += ["-n", str(max(1, min(12, (os.cpu_count() or 2) - 2)))]
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd += ["--timeout", "120"]  # one hung test must not eat the whole step
        allowed = self.budget_for(timeout_s, min_s=30)
        step = {"command": " ".join(["python", *cmd[1:]]), "timeout_s": timeout_s, "log": f"{name}.log"}
        if allowed is None:
            step.update(status="skipped", reason="out of time budget")
            return step
        self.say(f"{name}: running ({step['command']}, timeout {allowed:.0f} s)")
        rc, seconds, output = _run_limited(cmd, env, allowed, self.out / f"{name}.log")
        step.update(parse_pytest_output(output), returncode=rc, seconds=round(seconds, 1), timed_out=rc is None)
        if rc is None:
            step["status"] = "timeout"
            step["progress_before_kill"] = _progress_counts(output)
        elif step["summary"] is None:
            step.update(status="error", error=_error_line(output))
        else:
            step["status"] = "ok"
        return step

    def _start_row(self, wl: Workload) -> tuple[dict, float | None]:
        """A workload's result row, and the seconds it may run (None: skipped, out of budget)."""
        row = {"id": wl.id, "title": wl.title, "kind": wl.kind, "optional": wl.optional}
        allowed = self.budget_for(wl.timeout_s, wl.min_s)
        if allowed is None:
            row.update(status="skipped", reason="out of time budget")
        return row, allowed

    def run_fit_or_nodule(self, wl: Workload) -> dict:
        row, allowed = self._start_row(wl)
        if allowed is None:
            return row
        if wl.fresh_cache:
            cache = Path(tempfile.mkdtemp(prefix=f"triton_cache_{wl.id}_", dir=self.scratch))
            row["triton_cache"] = "fresh empty folder for this process (cold compile)"
        else:
            cache = self.shared_cache
            row["triton_cache"] = "the run's shared folder (empty when the run started)"
        result_path = self.scratch / f"{wl.id}.json"
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--one", wl.id, "--result", str(result_path)]
        if self.smoke:
            cmd.append("--smoke")
        self.say(f"{wl.id}: running {wl.title} (fresh process, timeout {allowed:.0f} s)")
        log_path = self.scratch / f"{wl.id}.log"
        rc, seconds, output = _run_limited(cmd, self.env(interpret=self.smoke, cache=cache), allowed, log_path)
        with open(self.out / "workloads.log", "a") as log:
            log.write(f"===== {wl.id} (returncode {rc}, {seconds:.1f} s)\n{output}\n")
        record = json.loads(result_path.read_text()) if result_path.exists() else {}
        record.pop("id", None)
        row.update(record)
        row.update(step_s=round(seconds, 1), timeout_s=round(allowed, 1))
        if rc is None:
            row.update(status="timeout", reason=f"killed after {allowed:.0f} s in phase {record.get('phase', 'start')!r}")
        elif rc != 0 or record.get("phase") != "done":
            row.update(status="error", error=_error_line(output))
        else:
            row["status"] = "ok"
        row["targets"] = targets(wl, row)
        return row

    def run_step(self, wl: Workload) -> dict:
        row, allowed = self._start_row(wl)
        if allowed is None:
            return row
        # The smoke run checks the script, not the numbers.
        args = [*GPU_STEP_ARGS, *(["--smoke"] if self.smoke else [])]
        cmd = [sys.executable, "-m", "benchmarks.gpu_step", *args]
        row["command"] = "python -m benchmarks.gpu_step " + " ".join(args)
        self.say(f"{wl.id}: running {row['command']} (timeout {allowed:.0f} s)")
        rc, seconds, output = _run_limited(cmd, self.env(interpret=self.smoke, cache=self.shared_cache), allowed,
                                           self.scratch / f"{wl.id}.log")
        row.update(output=output, step_s=round(seconds, 1), timeout_s=round(allowed, 1), rows=parse_step_table(output))
        if rc is None:
            row.update(status="timeout", reason=f"killed after {allowed:.0f} s")
        elif rc != 0:
            row.update(status="error", error=_error_line(output))
        else:
            row["status"] = "ok"
        row["targets"] = targets(wl, row)
        return row

    # ----------------------------------------------------------------------- the run
    def run(self) -> int:
        selected = [w for w in WORKLOADS if not self.args.only or w.id in self.args.only]
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("workloads.log", "tests.log", "kernel_tests.log"):  # logs of an earlier run
            (self.out / stale).unlink(missing_ok=True)
        self.results = {
            "kind": "gpu_check",
            "suite": "gpu check" + (" (smoke)" if self.smoke else ""),
            "device": "cpu" if self.smoke else "cuda",
            "smoke": self.smoke,
            "command": "python -m benchmarks gpu " + " ".join(self.args.argv),
            "machine": self.machine(),
            "settings": {
                "budget_s": self.budget_s,
                "input": INPUT_NOTE,
                "estimator": "MeanShift(bandwidth=h) with default settings (kernel='gaussian' where named)"
                             + ("; --smoke: device='cpu', Triton interpreter" if self.smoke else
                                "; device='auto' (CUDA)"),
                "data": "sklearn.datasets.make_blobs(n_samples=N, n_features=d, centers=k, center_box=(-10, 10), "
                        "random_state=0), float32",
                "first_fit": "the first fit in a fresh process (compilation and loading included; the CUDA "
                             "context's start-up is timed apart as cuda_start_s)",
                "warm_fit": "best of the following fits in the same process (two when the first takes <= 5 s)",
                "triton_cache": "workloads share one cache folder made empty by this run; "
                                "gauss8d-100k gets a fresh empty one (the cold-compile target)",
            },
            "tests": {},
            "workloads": [],
        }
        self.say(f"machine: {self.results['machine']['gpu']}, {self.results['machine']['cores']} cores, "
                 f"torch {self.results['machine']['torch']}, triton {self.results['machine']['triton']}; "
                 f"budget {self.budget_s:.0f} s" + ("; SMOKE RUN (CPU, interpreter): numbers mean nothing"
                                                    if self.smoke else ""))
        self.save()

        # 1. the default test suite on CUDA
        if self.smoke or self.args.skip_tests:
            reason = "smoke" if self.smoke else "--skip-tests"
            self.results["tests"]["default"] = {"status": "skipped", "reason": reason}
        else:
            # TRITON_INTERPRET=0: the kernel test modules would otherwise switch
            # the interpreter on at collection, and "auto" would then pick torch.
            env = self.env(interpret=False, cache=None)
            env["TRITON_INTERPRET"] = "0"
            extra = [] if self.args.test_select is None else ["-k", self.args.test_select]
            step = self.run_tests("tests", extra, self.args.test_timeout_s, env)
            step["selection"] = self.args.test_select or "the whole default suite"
            step["env"] = "TRITON_INTERPRET=0 (kernels compiled on the GPU; backend 'auto' resolves to triton)"
            self.results["tests"]["default"] = step
            self.say("tests: " + _tests_text(step))
        self.save()

        # 2. the workloads, in order (the 10M fit last)
        for wl in selected:
            row = self.run_step(wl) if wl.kind == "step" else self.run_fit_or_nodule(wl)
            row.setdefault("targets", targets(wl, row))  # skipped rows still say what they aim at
            self.results["workloads"].append(row)
            self.say(f"{wl.id}: {_row_text(row)}")
            self.save()

        # 3. optional: the kernel tests compiled on the GPU
        if self.smoke or self.args.skip_tests or self.args.skip_kernel_tests:
            reason = "smoke" if self.smoke else "--skip-tests" if self.args.skip_tests else "--skip-kernel-tests"
            self.results["tests"]["kernels"] = {"status": "skipped", "reason": reason}
        else:
            env = self.env(interpret=False, cache=self.shared_cache)
            env["TRITON_INTERPRET"] = "0"
            step = self.run_tests("kernel_tests", ["-m", "kernels"], self.args.kernel_test_timeout_s, env)
            self.results["tests"]["kernels"] = step
            self.say("kernel tests (TRITON_INTERPRET=0 pytest -m kernels): " + _tests_text(step))
        self.save()
        print("\n" + summary_table(self.results), flush=True)
        print(f"\nwrote {self.out / 'results.json'} and {self.out / 'results.md'} in {self.elapsed():.0f} s", flush=True)
        return 0

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


# ============================================================================ parsing and targets
def parse_step_table(output: str) -> list[dict]:
    """Rows of ``benchmarks.gpu_step``'s printed table.

    Examples
    --------
    >>> line = "  1000000    8  triton fp32          0.412   2.43e+12   57.6%    47.23   70.4%      9.1x            first call 20.1s"
    >>> parse_step_table(line)[0]["of_exp"], parse_step_table(line)[0]["vs_engine"]
    (0.576, 9.1)
    """
    rows = []
    pattern = re.compile(r"^\s*(\d+)\s+(\d+)\s+(torch engine|lesson loop|triton fused mma|triton \w+)\s+([\d.]+)"
                         r"\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)(.*)$")
    for line in output.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        n, d, method, seconds, rate, of_exp, tflops, of_fma, rest = match.groups()
        speedups = re.findall(r"([\d.]+)x\b", rest.split("first call")[0])
        rows.append({
            "n": int(n), "d": int(d), "method": method, "seconds": float(seconds), "eval_per_s": float(rate),
            "of_exp": round(float(of_exp.rstrip("%")) / 100, 4) if of_exp.endswith("%") else None,
            "vs_engine": float(speedups[0]) if speedups and method.startswith("triton") else None,
            "check": rest.split("  ")[-1].strip() if "first call" in rest else "",
        })
    return rows


def _target(text: str, measured, met) -> dict:
    return {"target": text, "measured": measured, "met": met}


def targets(wl: Workload, row: dict) -> list[dict]:
    """The pass/fail record of a row's targets (``met`` None where not measured).

    Examples
    --------
    >>> wl = next(w for w in WORKLOADS if w.id == "flat3d-1m")
    >>> targets(wl, {"warm_fit_s": 0.4})[0]["met"]
    True
    """
    found = []
    warm = row.get("warm_fit_s")
    if wl.kind == "fit" and wl.target_warm_s is not None:
        found.append(_target(f"warm fit < {wl.target_warm_s:g} s", None if warm is None else f"{warm:.3g} s",
                             None if warm is None else warm < wl.target_warm_s))
    if wl.compare_cpu_speed:
        cpu = row.get("cpu_warm_fit_s")
        ok = warm is not None and cpu is not None
        found.append(_target("warm fit not slower than the CPU path (device='cpu', warm)",
                             f"CPU {cpu:.3g} s, CPU/GPU {cpu / warm:.2f}x" if ok and warm > 0 else None,
                             warm <= cpu if ok else None))
    if wl.fresh_cache:
        first = row.get("first_fit_s")
        ok = warm is not None and first is not None
        found.append(_target(f"first fit, empty Triton cache, within {COLD_COMPILE_SLACK_S:g} s of the warm fit",
                             f"+{first - warm:.2f} s" if ok else None,
                             first - warm <= COLD_COMPILE_SLACK_S if ok else None))
    if wl.kind == "step":
        # Rows of the kernels fits use (STEP_TARGET_METHODS).
        rows = [r for r in row.get("rows", []) if r["method"] in STEP_TARGET_METHODS]
        for key, limit, text, fmt in (
            ("of_exp", STEP_TARGET_OF_EXP, f">= {STEP_TARGET_OF_EXP:.0%} of the exp limit", "{:.1%}"),
            ("vs_engine", STEP_TARGET_VS_ENGINE, f">= {STEP_TARGET_VS_ENGINE:g}x the torch engine", "{:g}x"),
        ):
            measured = [r for r in rows if r.get(key) is not None]
            best = max(measured, key=lambda r: r[key]) if measured else None
            shown = "; ".join(f"{r['method']} {fmt.format(r[key])}" for r in measured) or None
            found.append(_target(f"{text} (best of {', '.join(STEP_TARGET_METHODS)})", shown,
                                 None if best is None else best[key] >= limit))
    if wl.kind == "nodule":
        stages = row.get("stages_s")
        mean_shift = stages.get("mean_shift") if stages else None
        found.append(_target(f"mean-shift stage < {NODULE_TARGET_S:g} s",
                             None if mean_shift is None else f"{mean_shift:.3g} s",
                             None if mean_shift is None else mean_shift < NODULE_TARGET_S))
        if stages:
            largest = max(stages, key=stages.get)
            found.append(_target("mean-shift stage not the largest", f"largest: {largest} {stages[largest]:.3g} s",
                                 largest != "mean_shift"))
        else:
            found.append(_target("mean-shift stage not the largest", None, None))
    return found


# ============================================================================ reports
def _fmt_s(value) -> str:
    return "" if value is None else f"{value:.3g}"


def _tests_text(step: dict) -> str:
    if step.get("status") == "skipped":
        return f"skipped ({step.get('reason')})"
    keys = ("passed", "failed", "errors", "skipped", "xfailed")
    if step.get("summary") is None and step.get("progress_before_kill"):
        done = step["progress_before_kill"]
        counts = ", ".join(f"{done.get(k, 0)} {k}" for k in keys) + " before the kill"
    else:
        counts = ", ".join(f"{step.get(k)} {k}" for k in keys)
    extra = " TIMED OUT" if step.get("timed_out") else ""
    if step.get("status") == "error":
        extra += f" ERROR: {step.get('error')}"
    return f"{counts} ({step.get('seconds', 0):.0f} s){extra}"


def _met_text(t: dict) -> str:
    met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
    return f"{met} ({t['measured']})" if t.get("measured") else met


def _row_text(row: dict) -> str:
    status = row["status"]
    if status == "skipped":
        return f"skipped ({row.get('reason')})"
    parts = [status]
    if row.get("first_fit_s") is not None:
        parts.append(f"first {row['first_fit_s']:.3g} s")
    if row.get("warm_fit_s") is not None:
        parts.append(f"warm {row['warm_fit_s']:.3g} s")
    if row.get("n_clusters") is not None:
        parts.append(f"{row['n_clusters']} clusters")
    if row.get("ari_cpu") is not None:
        parts.append(f"ARI vs CPU {row['ari_cpu']:.3f}")
    if row.get("stages_s"):
        parts.append("stages " + ", ".join(f"{k} {v:.2g}" for k, v in row["stages_s"].items()))
    for t in row.get("targets", []):
        parts.append(f"[{t['target']}: {_met_text(t).replace('**', '')}]")
    if status in ("error", "timeout"):
        parts.append(row.get("error") or row.get("reason", ""))
    return ", ".join(parts)


def workload_table(results: dict) -> list[str]:
    """Markdown rows: workload, first fit, warm fit, clusters, ARI vs CPU, target, met?

    Used by ``results.md`` and by README's performance section
    (:mod:`benchmarks.readme`).

    Examples
    --------
    >>> rows = [{"id": "x", "title": "20k x 2", "kind": "fit", "status": "ok", "first_fit_s": 1.5,
    ...          "warm_fit_s": 0.02, "n_clusters": 6, "ari_cpu": 1.0,
    ...          "targets": [{"target": "warm fit < 0.05 s", "measured": "0.02 s", "met": True}]}]
    >>> workload_table({"workloads": rows})[2]
    '| 20k x 2 | 1.5 | 0.02 | 6 | 1.000 | warm fit < 0.05 s | yes (0.02 s) |'
    """
    lines = ["| workload | first fit (s) | warm fit (s) | clusters | ARI vs CPU | target | met? |",
             "|---|---|---|---|---|---|---|"]
    for row in results.get("workloads", []):
        title = row.get("title", row["id"])
        if row["status"] != "ok":
            title += f" ({row['status']}" + (f": {row['reason']}" if row.get("reason") else "") + ")"
        ari = row.get("ari_cpu")
        first = row.get("first_fit_s")
        warm = row.get("warm_fit_s")
        if row.get("kind") == "nodule" and row.get("detect_s") is not None:
            warm = row["detect_s"]  # the whole scan, after a warm-up scan
        cells = [title, _fmt_s(first), _fmt_s(warm), "" if row.get("n_clusters") is None else str(row["n_clusters"]),
                 "" if ari is None else f"{ari:.3f}"]
        found = row.get("targets") or [{"target": "", "measured": None, "met": None}]
        lines.append("| " + " | ".join(cells + ["; ".join(t["target"] for t in found),
                                                 "; ".join(_met_text(t) for t in found)]) + " |")
    return lines


def tests_line(results: dict) -> str:
    """One line of the CUDA test-suite counts (and the kernel tests').

    Examples
    --------
    >>> tests_line({"tests": {"default": {"status": "skipped", "reason": "smoke"}}})
    'Default test suite on CUDA: skipped (smoke).'
    """
    parts = []
    names = {"default": "Default test suite on CUDA", "kernels": "Triton kernel tests compiled (`-m kernels`)"}
    for key, name in names.items():
        step = results.get("tests", {}).get(key)
        if step is not None:
            parts.append(f"{name}: {_tests_text(step)}.")
    return " ".join(parts)


def markdown(results: dict) -> str:
    """``results.md``: machine, tests, the workload table, the step table, the nodule stages."""
    m = results["machine"]
    lines = [f"# GPU check{' (SMOKE RUN on the CPU: the numbers mean nothing)' if results.get('smoke') else ''}", "",
             f"`{results.get('command', 'python -m benchmarks gpu')}`, {m.get('date', '')}, "
             f"{results.get('wall_s', 0):.0f} s wall.",
             "", "## Machine", ""]
    keys = ["gpu", "gpu_sms", "gpu_capability", "driver", "cuda_runtime", "cpu", "cores", "torch", "triton",
            "numpy", "sklearn", "python", "git_commit", "git_uncommitted_files", "load_average_at_start"]
    lines += [f"- {k}: {m[k]}" for k in keys if k in m]
    lines += ["", "## Tests", "", tests_line(results)]
    failed = [t for step in results.get("tests", {}).values() for t in step.get("failed_tests", [])]
    if failed:
        lines += ["", "Failed:", ""] + [f"- `{t}`" for t in failed]
    lines += ["", "## Workloads", "", f"Input: {results['settings']['input']}.",
              f"First fit: {results['settings']['first_fit']}; warm fit: {results['settings']['warm_fit']}.", ""]
    lines += workload_table(results)
    lines += ["", "| workload | status | n_iter | neighbors | ARI vs truth | CPU reference | GPU peak MiB | Triton cache |",
              "|---|---|---|---|---|---|---|---|"]
    for row in results.get("workloads", []):
        if row.get("kind") != "fit":
            continue
        ref = row.get("cpu_reference") or {}
        ref_text = (f"{ref.get('description', '')} ({_fmt_s(ref.get('seconds'))} s, "
                    f"{ref.get('n_clusters', '?')} clusters)") if ref else ""
        lines.append(f"| {row['id']} | {row['status']} | {row.get('n_iter', '')} | {row.get('neighbors', '')} | "
                     f"{'' if row.get('ari_truth') is None else format(row['ari_truth'], '.3f')} | {ref_text} | "
                     f"{row.get('gpu_peak_mib', '')} | {row.get('triton_cache', '')} |")
    for row in results.get("workloads", []):
        if row.get("error") or row.get("reason"):
            lines.append(f"\n- {row['id']}: {row['status']}: {row.get('error') or row.get('reason')}")
    for row in results.get("workloads", []):
        if row.get("kind") == "step" and row.get("output"):
            lines += ["", f"## {row['title']}", "", f"`{row.get('command', '')}`:", "", "```", row["output"].rstrip(), "```"]
        if row.get("kind") == "nodule" and row.get("stages_s"):
            lines += ["", f"## {row['title']}", "", f"{row.get('via', '')}.", "",
                      "| " + " | ".join(row["stages_s"]) + " | detect total | phantom (not timed in detect) |",
                      "|" + "---|" * (len(row["stages_s"]) + 2),
                      "| " + " | ".join(f"{v:.3g}" for v in row["stages_s"].values())
                      + f" | {row.get('detect_s', 0):.3g} | {row.get('phantom_s', 0):.3g} |",
                      "", f"{row.get('n_points')} voxels, {row.get('n_clusters')} clusters, "
                          f"{row.get('n_candidates')} candidates; "
                          + (f"warm-up scan (96 x 96 x 48) {row['warm_up_s']} s." if row.get("warm_up_s") is not None
                             else "no warm-up scan.")]
    return "\n".join(lines) + "\n"


def summary_table(results: dict) -> str:
    """A compact plain-text summary for the end of the console output."""
    lines = [("SMOKE RUN (numbers mean nothing) - " if results.get("smoke") else "") + "GPU check summary",
             tests_line(results),
             f"{'workload':<18} {'status':<8} {'first s':>8} {'warm s':>8} {'clust':>6} {'ARI cpu':>8}  targets met"]
    for row in results.get("workloads", []):
        met = " ".join({True: "yes", False: "NO", None: "n/a"}[t["met"]] for t in row.get("targets", []))
        warm = row.get("warm_fit_s", row.get("detect_s"))
        ari = row.get("ari_cpu")
        lines.append(f"{row['id']:<18} {row['status']:<8} {_fmt_s(row.get('first_fit_s')):>8} {_fmt_s(warm):>8} "
                     f"{'' if row.get('n_clusters') is None else row['n_clusters']:>6} "
                     f"{'' if ari is None else format(ari, '.3f'):>8}  {met}")
    return "\n".join(lines)


# ============================================================================ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--smoke", action="store_true",
                        help="run the script itself on the CPU: tiny sizes, Triton interpreter, no test suite")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the test suites")
    parser.add_argument("--skip-kernel-tests", action="store_true",
                        help="do not run the optional compiled kernel tests (TRITON_INTERPRET=0 pytest -m kernels)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", choices=WORKLOAD_IDS,
                        help="run only these workloads: " + ", ".join(WORKLOAD_IDS))
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="wall-time budget of the whole run; steps that no longer fit are skipped (default 450)")
    parser.add_argument("--test-timeout-s", type=float, default=200.0, help="limit of the test-suite step (default 200)")
    parser.add_argument("--test-select", default=None, metavar="EXPR",
                        help="pytest -k expression for the test step (default: the whole suite), e.g. "
                             "'cuda or ascent' for the tests that run on the GPU")
    parser.add_argument("--kernel-test-timeout-s", type=float, default=90.0,
                        help="limit of the compiled kernel-test step (default 90)")
    parser.add_argument("--one", choices=WORKLOAD_IDS, help=argparse.SUPPRESS)  # child process: one workload
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the GPU check (or, with ``--smoke``, the script itself on the CPU).

    Examples
    --------
    >>> main(["--smoke", "--out", "/tmp/gpu_check_smoke"])  # doctest: +SKIP
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.smoke:
        # The interpreter must be chosen before anything imports triton.
        os.environ["TRITON_INTERPRET"] = "1"
    if args.one:
        if args.result is None:
            print("--one needs --result FILE", file=sys.stderr)
            return 2
        return run_child(args.one, args.smoke, args.result)
    if args.budget_s <= 0:
        print(f"--budget-s must be positive, got {args.budget_s:g}", file=sys.stderr)
        return 2
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("CUDA is not available on this machine: run `python -m benchmarks gpu` on a GPU, "
                  "or add --smoke to check the script on the CPU.", file=sys.stderr)
            return 2
    check = Check(args)
    try:
        return check.run()
    finally:
        check.close()


if __name__ == "__main__":
    sys.exit(main())
