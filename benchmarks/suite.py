"""Run a benchmark suite: every method on every case, then the bandwidth sweep and the report.

For each case (in order) and each method (peers first):

1. A method that cannot run here (not installed, no such option in this
   build) gets its reason as status; a method that raises gets
   ``"unavailable: <exception>"``.
2. Its time on the case is predicted from its measured times on the smaller
   cases of the same series (or, outside a series, from a run on a
   ``PROBE_N``-point subsample assuming time ~ N^2).  If the prediction
   exceeds the per-case budget, it is not run and the predicted time is
   reported, marked as extrapolated.
3. Otherwise it runs once as a warm-up (on the full case when that is cheap,
   else on a 256-point subsample), then up to ``repeats`` timed runs, stopping
   early once the budget is spent; the first timed run also measures memory.

The quality-vs-bandwidth sweep (one run per method and bandwidth on one
labelled case) runs first.  Rows are printed as they finish and results.json is rewritten after every
case, so an interrupted run still leaves its measurements.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from .cases import Case, SuiteSpec, build_suite
from .measure import (
    DEVICE_MEMORY_METHOD,
    HOST_MEMORY_METHOD,
    Measurement,
    Prediction,
    predict_seconds,
    timed_call,
)
from .peers import PEERS, CaseData, Method, all_methods
from .report import console_line, machine_info, write_json, write_markdown, write_plots

PROBE_N = 2_000  # subsample size used to predict the time of a case outside a series
WARMUP_SMALL_N = 256
SWEEP_METHODS = (
    "sklearn bin_seeding", "faiss kNN", "ours flat dense", "ours gaussian dense", "ours flat auto",
    "ours gaussian auto", "ours flat grid", "ours flat lsh", "ours gaussian lsh", "ours flat faiss",
)


def _subsample(data: CaseData, n: int) -> CaseData:
    rows = np.random.default_rng(0).choice(data.host.shape[0], size=min(n, data.host.shape[0]), replace=False)
    rows.sort()
    host = np.ascontiguousarray(data.host[rows])
    return CaseData(host, torch.from_numpy(host).to(data.device), data.device)


def _error_status(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in text.lower():
        return "unavailable: out of memory"
    return f"unavailable: {type(exc).__name__}: {text[:160]}"


def measure_method(
    method: Method, case: Case, data: CaseData, history: dict[int, float] | None,
    budget_s: float, repeats: int,
) -> Measurement:
    """Time ``method`` on ``case`` under the budget rules of this module."""
    reason = method.unavailable(data.device)
    if reason is not None:
        return Measurement(status=reason)
    device = torch.device("cpu") if method.runs_on_host else data.device
    bandwidth = case.bandwidth
    spent = 0.0
    warmed = ""
    try:
        prediction = predict_seconds(history or {}, case.n) if case.series else None
        if prediction is None and case.n > PROBE_N and not history:
            probe, _, _ = timed_call(lambda: method.fit(_subsample(data, PROBE_N), bandwidth), device)
            spent += probe
            prediction = Prediction(probe * (case.n / PROBE_N) ** 2,
                                    f"from a {PROBE_N}-point subsample ({probe:.3g} s) assuming time ~ N^2")
            warmed = f"warm-up on a {PROBE_N}-point subsample"
        if prediction is not None and prediction.seconds > budget_s:
            return Measurement(
                status="skipped", seconds=prediction.seconds, extrapolated=True,
                note=f"not run: predicted {prediction.seconds:.3g} s > budget {budget_s:g} s ({prediction.how})",
            )
        times: list[float] = []
        result = mem = None
        if not warmed:
            # One-time costs (imports, thread pools, JIT and autotuning caches) go here.
            spent += timed_call(lambda: method.fit(_subsample(data, WARMUP_SMALL_N), bandwidth), device)[0]
            warmed = f"warm-up on a {WARMUP_SMALL_N}-point subsample"
        if prediction is None or prediction.seconds <= budget_s / 4:
            first, result, mem = timed_call(lambda: method.fit(data, bandwidth), device, memory=True)
            spent += first
            warmed += ", then a full-size warm-up"
            if first > budget_s / 2:
                # Too slow to repeat within the budget: the full-size warm-up is the measurement.
                times = [first]
                warmed += " (over half the budget: it is the one timed run)"
        while len(times) < repeats and (not times or spent < budget_s / 2):
            seconds, result, run_mem = timed_call(lambda: method.fit(data, bandwidth), device, memory=mem is None)
            mem = mem or run_mem
            times.append(seconds)
            spent += seconds
    except Exception as exc:  # a method that raises is reported, not dropped
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return Measurement(status=_error_status(exc))
    return Measurement(
        status="ok", times=times, seconds=statistics.median(times), warmup=warmed,
        host_bytes=mem.host_bytes, device_bytes=mem.device_bytes if device.type == "cuda" else None,
        output=result,
    )


def _speedups(row: dict, peer_rows: dict[str, dict]) -> dict:
    if row["family"] != "ours" or row["status"] != "ok":
        return {}
    out = {}
    for peer in PEERS:
        peer_row = peer_rows.get(peer)
        if peer_row and peer_row["seconds"] and row["seconds"]:
            out[peer] = {"ratio": peer_row["seconds"] / row["seconds"], "extrapolated": peer_row["extrapolated"]}
    return out


def _select_cases(spec: SuiteSpec, only: list[str] | None) -> list[Case]:
    if not only:
        return spec.cases
    ids = {c.id for c in spec.cases}
    # An exact id selects that case only; anything else is a prefix ("blobs-d2-").
    chosen = [c for c in spec.cases if any(c.id == o or (o not in ids and c.id.startswith(o)) for o in only)]
    if not chosen:
        raise SystemExit(f"no case matches {only}; cases are: {', '.join(c.id for c in spec.cases)}")
    return chosen


def run_sweep(case: Case, methods: list[Method], factors, device: torch.device, budget_s: float, bar=None) -> list[dict]:
    """Quality vs bandwidth: one run per method and bandwidth on one labelled case."""
    X, y = case.make()
    data = CaseData(X, torch.from_numpy(X).to(device), device)
    rows = []
    # Widest bandwidth first: runs get slower as windows shrink (more modes, more
    # iterations), so the stop-when-slow rule below cuts only the slowest ones.
    factors = sorted(factors, reverse=True)
    for method in methods:
        reason = method.unavailable(device)
        slow = False
        for factor in factors:
            bandwidth = case.bandwidth * factor
            entry = {"method": method.name, "factor": factor, "bandwidth": bandwidth, "status": "ok",
                     "seconds": None, "n_clusters": None, "ari_truth": None}
            if reason is not None:
                entry["status"] = reason
            elif slow:
                entry["status"] = f"not run: a wider bandwidth took over {budget_s / 2:g} s"
            else:
                mdev = torch.device("cpu") if method.runs_on_host else device
                try:
                    if factor == factors[0]:  # one-time costs out of the first timing
                        method.fit(_subsample(data, WARMUP_SMALL_N), case.bandwidth)
                    seconds, out, _ = timed_call(lambda: method.fit(data, bandwidth), mdev)
                    entry.update(seconds=seconds, n_clusters=out.n_clusters,
                                 ari_truth=float(adjusted_rand_score(y, out.labels)))
                    slow = seconds > budget_s / 2
                except Exception as exc:
                    entry["status"] = _error_status(exc)
            rows.append(entry)
            if bar is not None:
                bar.update(1)
    return rows


def run_suite(
    suite: str = "quick",
    device: str = "cpu",
    out: str | Path = "bench_out",
    *,
    only: list[str] | None = None,
    methods: list[str] | None = None,
    repeats: int | None = None,
    budget_s: float | None = None,
    sweep: bool = True,
    sweep_factors: tuple[float, ...] | None = None,
    threads: int | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> dict:
    """Run a suite and write results.json, results.md and the plots into ``out``.

    Parameters
    ----------
    suite : {"quick", "full"}
        Which matrix of cases (see :func:`benchmarks.cases.build_suite`).
    device : {"cpu", "cuda"}
        Where the torch-based methods run (scikit-learn always runs on the CPU).
    out : path
        Output folder (created).
    only : list of str, optional
        Run only the cases whose id equals or starts with one of these.
    methods : list of str, optional
        Run only these methods (names as in the table).
    repeats, budget_s : optional
        Override the suite's timed runs per method and per-case budget.
    sweep : bool
        Run the quality-vs-bandwidth sweep.
    sweep_factors : tuple of float, optional
        Bandwidths of the sweep, as multiples of the case's (default: the suite's).
    threads : int, optional
        ``torch.set_num_threads``.
    progress : bool
        Show a tqdm progress bar.
    time_limit_s : float, optional
        Wall-time limit of the whole run (default: the suite's); method-case
        pairs reached after it are reported as not run.

    Returns
    -------
    dict
        The content of results.json.

    Examples
    --------
    >>> results = run_suite("quick", "cpu", "/tmp/bench_doc", only=["blobs-d2-n1000"],
    ...                     methods=["ours flat dense"], sweep=False, progress=False)  # doctest: +SKIP
    """
    started = time.perf_counter()
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine (GPU rows not measured)")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = build_suite(suite, device, only)
    cases = _select_cases(spec, only)
    chosen = all_methods()
    if methods:
        unknown = set(methods) - {m.name for m in chosen}
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; known: {[m.name for m in chosen]}")
        chosen = [m for m in chosen if m.name in methods]
    repeats = repeats or spec.repeats
    budget_s = budget_s or spec.budget_s
    factors = tuple(sweep_factors or spec.sweep_factors)
    time_limit_s = spec.time_limit_s if time_limit_s is None else (time_limit_s or None)
    labelled = [c for c in cases if c.workload == "blobs"]
    sweep_case = None
    if sweep and labelled:
        sweep_case = next((c for c in labelled if c.id == spec.sweep_case), labelled[0])
    sweep_methods = [m for m in chosen if m.name in SWEEP_METHODS] if sweep else []

    results = {
        "suite": suite,
        "device": device,
        "machine": machine_info(dev),
        "settings": {
            "budget_s": budget_s, "repeats": repeats, "probe_n": PROBE_N, "time_limit_s": time_limit_s,
            "host_memory": HOST_MEMORY_METHOD, "device_memory": DEVICE_MEMORY_METHOD,
            "timing": "median wall time of the timed runs after a warm-up; fit only (data already on the device)",
            "gaussian_sigma": "bandwidth / 2",
        },
        "skipped_workloads": spec.skipped,
        "cases": [],
        "rows": [],
        "sweep": [],
        "sweep_case": sweep_case.id if sweep_case else None,
        "sweep_note": "" if sweep_case else "not run",
    }
    total = len(cases) * len(chosen) + (len(sweep_methods) * len(factors) if sweep_case else 0)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"{suite} suite", unit="run", file=sys.stderr, mininterval=2.0)
        except ImportError:
            bar = None
    say = bar.write if bar is not None else print
    m = results["machine"]
    say(f"machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu']}, torch {m['torch']}, "
        f"sklearn {m['sklearn']}; budget {budget_s:g} s per method and case, {repeats} timed runs")
    for workload, reason in spec.skipped:
        say(f"workload {workload}: {reason}")
    if sweep_case is not None:
        # First, so that the time limit never cuts the quality plot.
        say(f"quality vs bandwidth on {sweep_case.id}: {len(sweep_methods)} methods x "
            f"{len(factors)} bandwidths, one run each")
        results["sweep"] = run_sweep(sweep_case, sweep_methods, factors, dev, budget_s, bar)
        results["sweep_true_clusters"] = int(np.unique(sweep_case.make()[1]).size)
    history: dict[tuple[str, str], dict[int, float]] = {}
    for case in cases:
        X, y = case.make()
        data = CaseData(X, torch.from_numpy(X).to(dev), dev)
        n_true = int(np.unique(y).size) if y is not None else None
        results["cases"].append({"id": case.id, "workload": case.workload, "series": case.series, "n": case.n,
                                 "d": case.d, "bandwidth": case.bandwidth, "note": case.note, "n_true": n_true})
        sklearn_labels = None
        peer_rows: dict[str, dict] = {}
        for method in chosen:
            if bar is not None:
                bar.set_postfix_str(f"{case.id} {method.name}")
            key = (case.series, method.name)
            if time_limit_s and time.perf_counter() - started > time_limit_s:
                meas = Measurement(status=f"not run: suite time limit ({time_limit_s:g} s) reached")
            else:
                meas = measure_method(method, case, data, history.get(key), budget_s, repeats)
            row = {
                "case": case.id, "workload": case.workload, "series": case.series, "n": case.n, "d": case.d,
                "bandwidth": case.bandwidth, "method": method.name, "family": method.family,
                "kernel": method.kernel, **{k: v for k, v in asdict(meas).items() if k != "output"},
                "n_clusters": None, "ari_truth": None, "ari_sklearn": None, "speedup": {}, "detail": "",
            }
            if meas.status == "ok":
                labels = meas.output.labels
                row["n_clusters"] = int(meas.output.n_clusters)
                row["detail"] = meas.output.detail
                if y is not None:
                    row["ari_truth"] = float(adjusted_rand_score(y, labels))
                if method.name == "sklearn exact":
                    sklearn_labels = labels
                if sklearn_labels is not None:
                    row["ari_sklearn"] = float(adjusted_rand_score(sklearn_labels, labels))
                if case.series:
                    history.setdefault(key, {})[case.n] = meas.seconds
            meas.output = None
            if method.family == "peer":
                peer_rows[method.name] = row
            row["speedup"] = _speedups(row, peer_rows)
            results["rows"].append(row)
            say(console_line(case.id, row))
            if bar is not None:
                bar.update(1)
        del data, X, y
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        results["wall_s"] = time.perf_counter() - started
        write_json(results, out)
    if bar is not None:
        bar.close()
    results["wall_s"] = time.perf_counter() - started
    results["plots"] = write_plots(results, out)
    write_json(results, out)
    write_markdown(results, out)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {len(results['plots'])} plot(s) "
          f"in {results['wall_s']:.0f} s")
    return results
