"""Every point a seed: the exact all-seeds fit at large N, against bin seeding.

Issue #4's CPU target: fit 1,000,000 points in 3-D (blobs), flat kernel,
every point a seed, in under 60 s on 2 cores, with the same clusters as
scikit-learn's ``MeanShift(bin_seeding=True)`` at the same bandwidth.

Data: ``sklearn.datasets.make_blobs(n, 3, centers=10, cluster_std=1,
random_state=0)`` (centers uniform in [-10, 10]^3), float32, bandwidth
``--bandwidth`` (default 1.5).  For each N in ``--sizes``:

- ``ours all seeds``: :class:`meanshift_gpu.MeanShift` with defaults
  (``neighbors="auto"``), every point a seed.  Runs in a child process
  killed after ``--timeout`` seconds, so an over-long fit is reported as
  such (with the time it was given) instead of hanging the run;
- ``ours bin_seeding`` and ``sklearn bin_seeding`` (``--sklearn``; minutes
  at 1M): the same bandwidth, ``bin_seeding=True``.

Reported: wall time of the fit (ours: after a 2,000-point warm-up fit in
the same process, timed apart as ``warm_up_seconds``: torch's first
calls; the compiled loops are built at install time),
clusters, ``n_iter_``, and the adjusted Rand index of every labelling
against scikit-learn's bin seeding (when run) and against the generating
blobs.  ``clusters`` counts every cluster, however
small: all seeds can find modes in the sparse tails that bin seeding never
seeds; ``major`` counts those holding at least 0.1% of the points.

Run from the repository root::

    python -m benchmarks.all_seeds --sizes 100000 1000000 --sklearn --out bench_out/all_seeds

Writes ``results.json`` in ``--out`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import numpy as np


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 points in 10 unit Gaussian blobs in 3-D, and their blob.

    Examples
    --------
    >>> X, y = make_data(100)
    >>> X.shape, X.dtype, int(y.max()) <= 9
    ((100, 3), dtype('float32'), True)
    """
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=n, n_features=3, centers=10, cluster_std=1.0, random_state=seed)
    return X.astype(np.float32), y


def _fit_ours(n: int, bandwidth: float, bin_seeding: bool, threads: int, queue) -> None:
    import torch

    from meanshift_gpu import MeanShift

    torch.set_num_threads(threads)
    X, _ = make_data(n)
    # One-off costs, reported apart: torch's first calls.
    start = time.perf_counter()
    MeanShift(bandwidth=bandwidth, bin_seeding=bin_seeding).fit(X[:2000])
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    model = MeanShift(bandwidth=bandwidth, bin_seeding=bin_seeding).fit(X)
    seconds = time.perf_counter() - start
    queue.put(dict(seconds=seconds, warm_up_seconds=warm_up, labels=model.labels_, centers=model.cluster_centers_,
                   clusters=len(model.cluster_centers_), n_iter=int(model.n_iter_), neighbors=model.neighbors_))


def _run_child(n: int, bandwidth: float, bin_seeding: bool, threads: int, timeout: float) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_fit_ours, args=(n, bandwidth, bin_seeding, threads, queue))
    start = time.perf_counter()
    child.start()
    try:
        result = queue.get(timeout=timeout)
    except Exception:  # queue.Empty: the fit did not finish in time
        child.kill()
        child.join()
        return dict(status="timeout", seconds=time.perf_counter() - start)
    child.join()
    return dict(status="ok", **result)


def _fit_sklearn(X: np.ndarray, bandwidth: float) -> dict:
    from sklearn.cluster import MeanShift

    start = time.perf_counter()
    model = MeanShift(bandwidth=bandwidth, bin_seeding=True, n_jobs=None).fit(X)
    return dict(status="ok", seconds=time.perf_counter() - start, labels=model.labels_,
                centers=model.cluster_centers_, clusters=len(model.cluster_centers_), n_iter=int(model.n_iter_))


def center_distance(reference: np.ndarray, centers: np.ndarray) -> float:
    """Largest distance from a reference center to the nearest of ``centers`` (and back)."""
    gaps = np.linalg.norm(reference[:, None, :] - centers[None, :, :], axis=-1)
    return float(max(gaps.min(1).max(), gaps.min(0).max()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring).

    Examples
    --------
    >>> main(["--sizes", "2000", "--timeout", "120", "--out", "/tmp/all_seeds_doctest"])  # doctest: +SKIP
    0
    """
    from sklearn.metrics import adjusted_rand_score

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--bandwidth", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per fit of ours")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sklearn", action="store_true", help="also fit sklearn bin_seeding (slow)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/all_seeds"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        X, truth = make_data(n)
        fits = {
            "ours all seeds": _run_child(n, args.bandwidth, False, args.threads, args.timeout),
            "ours bin_seeding": _run_child(n, args.bandwidth, True, args.threads, args.timeout),
        }
        if args.sklearn:
            fits["sklearn bin_seeding"] = _fit_sklearn(X, args.bandwidth)
        reference = fits.get("sklearn bin_seeding")
        for name, fit in fits.items():
            row = dict(n=n, method=name, status=fit["status"], seconds=round(fit["seconds"], 3))
            if "warm_up_seconds" in fit:
                row["warm_up_seconds"] = round(fit["warm_up_seconds"], 3)
            if fit["status"] == "ok":
                sizes = np.bincount(fit["labels"][fit["labels"] >= 0])
                row.update(clusters=fit["clusters"], major_clusters=int((sizes >= 0.001 * n).sum()),
                           n_iter=fit["n_iter"],
                           ari_truth=round(float(adjusted_rand_score(truth, fit["labels"])), 4))
                if reference is not None and reference["status"] == "ok":
                    row["ari_sklearn_bin_seeding"] = round(
                        float(adjusted_rand_score(reference["labels"], fit["labels"])), 4
                    )
                    # In bandwidths: how far apart the two sets of centers are.
                    row["center_gap_vs_sklearn"] = round(
                        center_distance(reference["centers"], fit["centers"]) / args.bandwidth, 4
                    )
                if "neighbors" in fit:
                    row["neighbors"] = fit["neighbors"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                threads=args.threads, bandwidth=args.bandwidth, load_average=list(os.getloadavg()))
    (args.out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print("\n| N | method | status | seconds | warm-up (s) | clusters | major | n_iter | ARI vs sklearn bin | "
          "center gap vs sklearn bin (h) | ARI vs truth |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['method']} | {r['status']} | {r['seconds']} | {r.get('warm_up_seconds', '')} | "
              f"{r.get('clusters', '')} | "
              f"{r.get('major_clusters', '')} | {r.get('n_iter', '')} | {r.get('ari_sklearn_bin_seeding', '')} | "
              f"{r.get('center_gap_vs_sklearn', '')} | {r.get('ari_truth', '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
