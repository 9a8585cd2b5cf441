"""Distributed mean shift on one machine: time vs number of Dask workers.

For each number of workers (default 1 and 2; one thread each, separate
processes, as a multi-GPU node runs one worker per GPU) a
``distributed.LocalCluster`` is started, warmed up, and
:class:`meanshift_gpu.dask.MeanShift` fits these workloads:

- ``grid``: ``N`` 2-D points in 12 unit Gaussian blobs 10 apart along
  feature 0, bandwidth 2, ``bin_seeding=True`` (the configuration for very
  large data: seeds = occupied cells; ``neighbors="auto"`` switches each
  partition to the neighbour grid once seeds x points passes 4e8);
- ``dense``: ``--dense-n`` (6,000) 2-D points, every point a seed, dense
  steps (compute bound: two partitions each do a quarter of the pairs).

Reported per fit: wall time, the driver's stage times, per-worker throughput
(points per second per worker, seed-steps per second of ascent), rounds,
migrated seeds, halo size and worker-to-worker bytes (the workers' transfer
logs), and the single-machine :class:`meanshift_gpu.MeanShift` time on the
same data (the driver process, all cores) with a check that both give the same
clustering.  A last measurement feeds the ``grid`` data as a *shuffled* dask
array, whose one-time repartitioning moves ~N points between workers,
against NumPy input, which the driver sorts so only halos move.

Run from the repository root::

    python -m benchmarks.dask_scaling --out bench_out/dask
    python -m benchmarks.dask_scaling --sizes 20000 --dense-n 3000 --out /tmp/d   # quick
    python -m benchmarks.dask_scaling --device cuda --sizes 10000000 --dense-n 200000 --workers 1 2 4 8

Writes ``results.json`` and ``results.md`` in ``--out``.  Timings on a
shared machine are noisy; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _blobs_along_x(n: int, d: int, n_blobs: int, spacing: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.zeros((n_blobs, d))
    centers[:, 0] = np.arange(n_blobs) * spacing
    which = rng.integers(0, n_blobs, n)
    return centers[which] + rng.normal(scale=1.0, size=(n, d))


def _incoming_bytes(client) -> int:
    def collect(dask_worker):
        return sum(entry["total"] for entry in dask_worker.transfer_incoming_log)

    return int(sum(client.run(collect).values()))


def _reset(client) -> None:
    client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())


def _same_clustering(ref, model) -> tuple[bool, float]:
    from sklearn.metrics import adjusted_rand_score

    labels = model.labels_.compute() if hasattr(model.labels_, "compute") else model.labels_
    same = ref.cluster_centers_.shape == model.cluster_centers_.shape
    return bool(same), float(adjusted_rand_score(ref.labels_, labels))


def run(sizes, workers, device: str, out: Path, repeats: int, dense_n: int = 6000) -> dict:
    import dask
    import dask.array as da
    import distributed

    import meanshift_gpu
    from meanshift_gpu.dask import MeanShift as DaskMeanShift

    workloads = []
    for n in sizes:
        workloads.append(("grid", n, _blobs_along_x(n, 2, 12, 10.0, 0), dict(bandwidth=2.0, bin_seeding=True)))
    workloads.append(("dense", dense_n, _blobs_along_x(dense_n, 2, 6, 10.0, 1), dict(bandwidth=2.0, neighbors="dense")))

    single = {}
    for name, n, X, params in workloads:
        t0 = time.perf_counter()
        ref = meanshift_gpu.MeanShift(device=device, **params).fit(X)
        single[(name, n)] = (time.perf_counter() - t0, ref)
        print(f"single machine {name} N={n}: {single[(name, n)][0]:.2f} s, {len(ref.cluster_centers_)} clusters", flush=True)

    rows = []
    traffic = []
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        for w in workers:
            cluster = distributed.LocalCluster(
                n_workers=w, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=40
            )
            client = distributed.Client(cluster)
            try:
                warm = _blobs_along_x(2000, 2, 4, 10.0, 2)
                DaskMeanShift(client=client, bandwidth=2.0, bin_seeding=True, device=device).fit(warm)
                for name, n, X, params in workloads:
                    best = None
                    for _ in range(repeats):
                        _reset(client)
                        t0 = time.perf_counter()
                        model = DaskMeanShift(client=client, device=device, **params).fit(X)
                        wall = time.perf_counter() - t0
                        if best is None or wall < best[0]:
                            best = (wall, model, _incoming_bytes(client))
                    wall, model, moved = best
                    stats = model.dask_stats_
                    ref_time, ref = single[(name, n)]
                    same, ari = _same_clustering(ref, model)
                    ascent = max(stats["ascent_seconds"]) if stats["ascent_seconds"] else 0.0
                    row = {
                        "workload": name, "n": n, "workers": w, "partitions": stats["n_partitions"],
                        "wall_s": wall, "single_machine_s": ref_time,
                        "stage_s": stats["stage_seconds"],
                        "points_per_s_per_worker": n / wall / w,
                        "seed_steps": stats["seed_steps"],
                        "seed_steps_per_s": stats["seed_steps"] / max(1e-9, sum(stats["ascent_seconds"])),
                        "slowest_partition_ascent_s": ascent,
                        "rounds": stats["rounds"], "migrated": sum(stats["migrated_per_round"]),
                        "halo_points": sum(stats["halo_sizes"]), "halo_bytes": stats["halo_bytes"],
                        "data_bytes": stats["data_bytes"], "worker_to_worker_bytes": moved,
                        "n_clusters": len(model.cluster_centers_), "same_n_clusters": same, "ari_vs_single": ari,
                        "methods": stats["methods"],
                    }
                    rows.append(row)
                    print(
                        f"{name} N={n} workers={w}: {wall:.2f} s (single {ref_time:.2f} s), "
                        f"stages {', '.join(f'{k} {v:.2f}' for k, v in stats['stage_seconds'].items())}, "
                        f"rounds {stats['rounds']}, halo {row['halo_points']} pts, moved {moved / 1e6:.2f} MB, "
                        f"ARI {ari:.4f}", flush=True,
                    )
                if w >= 2:
                    name, n, X, params = workloads[len(sizes) - 1]
                    rng = np.random.default_rng(3)
                    shuffled = X[rng.permutation(n)]
                    for label, data in (
                        ("numpy input (sorted by the driver)", X),
                        ("shuffled dask array", da.from_array(shuffled, chunks=(max(1, n // (4 * w)), 2))),
                    ):
                        _reset(client)
                        model = DaskMeanShift(client=client, device=device, **params).fit(data)
                        moved = _incoming_bytes(client)
                        traffic.append({
                            "input": label, "n": n, "workers": w, "worker_to_worker_bytes": moved,
                            "halo_bytes": model.dask_stats_["halo_bytes"],
                            "data_bytes": model.dask_stats_["data_bytes"],
                        })
                        print(f"traffic, {label}: {moved / 1e6:.2f} MB of {model.dask_stats_['data_bytes'] / 1e6:.2f} MB data", flush=True)
            finally:
                client.close()
                cluster.close()

    meta = {
        "machine": platform.platform(), "cpus": os.cpu_count(), "device": device,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "repeats": repeats,
    }
    result = {"meta": meta, "rows": rows, "traffic": traffic}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(_markdown(result))
    print(_markdown(result))
    return result


def _markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['meta']['machine']}, {result['meta']['cpus']} CPUs, device {result['meta']['device']}, "
        f"load average {result['meta']['load_average']}",
        "",
        "| workload | N | workers | partitions | wall s | single-machine s | points/s/worker | seed-steps/s | rounds | migrated | halo pts | worker-to-worker MB | data MB | ARI vs single |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['workload']} | {r['n']:,} | {r['workers']} | {r['partitions']} | {r['wall_s']:.2f} | "
            f"{r['single_machine_s']:.2f} | {r['points_per_s_per_worker']:,.0f} | {r['seed_steps_per_s']:,.0f} | "
            f"{r['rounds']} | {r['migrated']} | {r['halo_points']:,} | {r['worker_to_worker_bytes'] / 1e6:.3f} | "
            f"{r['data_bytes'] / 1e6:.2f} | {r['ari_vs_single']:.4f} |"
        )
    if result["traffic"]:
        lines += ["", "| input | N | workers | worker-to-worker MB | halo MB | data MB |", "|---|---|---|---|---|---|"]
        for t in result["traffic"]:
            lines.append(
                f"| {t['input']} | {t['n']:,} | {t['workers']} | {t['worker_to_worker_bytes'] / 1e6:.3f} | "
                f"{t['halo_bytes'] / 1e6:.3f} | {t['data_bytes'] / 1e6:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring.

    Examples
    --------
    >>> main(["--sizes", "5000", "--workers", "1", "--out", "/tmp/dask_bench"])  # doctest: +SKIP
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dense-n", type=int, default=6000, help="points of the dense workload")
    parser.add_argument("--out", type=Path, default=Path("bench_out/dask"))
    args = parser.parse_args(argv)
    run(args.sizes, args.workers, args.device, args.out, args.repeats, args.dense_n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
