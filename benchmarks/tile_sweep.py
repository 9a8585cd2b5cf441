"""Measure the fused ascent kernel's tiles on the GPU at hand (rows of ``kernels/_tiles.py``).

The library never autotunes inside ``fit``: its tiles come from the table in
:mod:`meanshift_gpu.kernels._tiles`.  This script times one dense fused step
(every point a seed, float32) for a few candidate tiles per feature count and
kernel, and prints the best of each as table rows to commit::

    python -m benchmarks.tile_sweep --n 50000 --dims 2 8 --out sweep.json

Each candidate compiles once (about a second on an H200), so keep the grid
small; ``--budget-s`` stops the sweep (what was measured is kept).  Without
CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

# Spill-free on sm_90 for 2-8 features (static check, benchmarks/README.md), and 64 x 64.
CANDIDATES = [(32, 32, 4), (64, 32, 4), (128, 32, 8), (64, 64, 4), (64, 64, 8)]


def sweep(n: int, dims: list[int], kernels: list[str], budget_s: float,
          variants: tuple[str, ...] = ("reduce", "mma")) -> list[dict]:
    """Time each candidate tile; returns one record per (d, kernel, tile)."""
    import triton.testing

    from meanshift_gpu.kernels import _ascent
    from meanshift_gpu.kernels._tiles import Tile, device_arch

    device = torch.device("cuda")
    arch = device_arch(device)
    start = time.perf_counter()
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for d in dims:
        data = (torch.randn(n, d, generator=gen) * 1.5).to(device)
        data_t = data.T.contiguous()
        order = torch.arange(n, device=device)
        for kernel, variant in [(k, v) for k in kernels for v in variants]:
            for block_s, block_n, warps in CANDIDATES:
                if time.perf_counter() - start > budget_s:
                    print(f"tile sweep: budget of {budget_s:.0f} s spent, stopping", flush=True)
                    return rows
                tile = Tile(block_s, block_n, warps, 2)
                state = dict(
                    positions=data.clone(), density=torch.zeros(n, device=device),
                    logit_max=torch.zeros(n, device=device), n_iter=torch.zeros(n, dtype=torch.long, device=device),
                    done=torch.zeros(n, dtype=torch.int8, device=device),
                )

                def one_step():
                    # A fresh, not-stopped state each call: every seed is stepped.
                    state["done"].zero_()
                    state["positions"].copy_(data)
                    _ascent.ascent_steps(state["positions"], state["density"], state["logit_max"], state["n_iter"],
                                         state["done"], order, data_t, None, kernel=kernel, tol=0.0,
                                         max_iter=10**9, tile=tile, variant=variant)

                t0 = time.perf_counter()
                one_step()
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                ms = triton.testing.do_bench(one_step, warmup=25, rep=100, return_mode="median")
                record = dict(arch=arch, n=n, d=d, kernel=kernel, variant=variant, rows=block_s, cols=block_n, num_warps=warps,
                              ms=ms, pairs_per_s=n * n / (ms * 1e-3), first_call_s=compile_s)
                rows.append(record)
                print(f"{arch} d={d:<3} {kernel:<9} {variant:<6} tile {block_s:>3}x{block_n:<3} w{warps}: "
                      f"{ms:8.3f} ms  {record['pairs_per_s'] / 1e9:8.1f} G pairs/s  (first call {compile_s:.2f} s)",
                      flush=True)
    return rows


def best_rows(records: list[dict]) -> list[str]:
    """The fastest tile per (arch, d, kernel), as ``TILE_TABLE`` lines."""
    best: dict[tuple, dict] = {}
    for r in records:
        key = (r["arch"], r["d"], r["kernel"], r["variant"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    from meanshift_gpu.kernels._tiles import feature_bucket

    return [
        f'("{a}", "ascent", {feature_bucket(d)}, "{k}"): Tile({r["rows"]}, {r["cols"]}, {r["num_warps"]}, 2),'
        f"  # {v}: {r['ms']:.3f} ms at n={r['n']}"
        for (a, d, k, v), r in sorted(best.items())
    ]


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tile_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--kernels", nargs="+", default=["flat", "gaussian"])
    parser.add_argument("--budget-s", type=float, default=90.0)
    parser.add_argument("--out", default=None, help="JSON file for the records")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tile sweep: no CUDA device, nothing measured")
        return 0
    records = sweep(args.n, args.dims, args.kernels, args.budget_s)
    for line in best_rows(records):
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "records": records}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
