"""Command line of the benchmark suite.

Examples
--------
Run from the repository root::

    python -m benchmarks run --suite quick --device cpu --out bench_out
    python -m benchmarks run --suite full --device cuda --out results/full-gpu
    python -m benchmarks run --only blobs-d2-n1000 --repeats 1 --no-sweep --out /tmp/smoke
    python -m benchmarks list --suite quick
    python -m benchmarks gpu                      # the one-shot GPU check (benchmarks/gpu_check.py)
    python -m benchmarks gpu --smoke --out /tmp/gpu_check
    python -m benchmarks first-fit                # cold (empty caches) vs warm, and fits under load
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the requested command.

    Examples
    --------
    >>> main(["list", "--suite", "quick"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gpu"]:
        # gpu_check parses its own options; --smoke must set TRITON_INTERPRET before triton loads.
        from .gpu_check import main as gpu_main

        return gpu_main(argv[1:])
    if argv[:1] == ["first-fit"]:
        from .first_fit import main as first_fit_main

        return first_fit_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="meanshift_gpu benchmark suite")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite and write results.json, results.md and plots")
    run.add_argument("--suite", choices=["quick", "full"], default="quick")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--out", default="bench_out", help="output folder (default: bench_out)")
    run.add_argument("--only", nargs="+", default=None, metavar="CASE",
                     help="run only cases whose id equals or starts with one of these")
    run.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                     help="run only these methods (quote names with spaces)")
    run.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up")
    run.add_argument("--budget", type=float, default=None,
                     help="seconds per method and case; slower predicted runs are extrapolated, not run")
    run.add_argument("--time-limit", type=float, default=None,
                     help="wall-time limit of the whole run in seconds (0: none; default: the suite's)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--sweep-factors", type=float, nargs="+", default=None, metavar="F",
                     help="bandwidths of the quality sweep, as multiples of the case's bandwidth")
    run.add_argument("--no-sweep", action="store_true", help="skip the quality-vs-bandwidth sweep")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("gpu", help="one-shot GPU check: CUDA test suite, workloads, targets "
                               "(python -m benchmarks gpu --help)", add_help=False)
    sub.add_parser("first-fit", help="first fit with empty compile caches against the warm fit, and fits "
                                     "beside a busy process (python -m benchmarks first-fit --help)", add_help=False)
    listing = sub.add_parser("list", help="list the cases and methods of a suite")
    listing.add_argument("--suite", choices=["quick", "full"], default="quick")
    listing.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)

    if args.command == "list":
        from .cases import build_suite
        from .peers import all_methods

        spec = build_suite(args.suite, args.device)
        for case in spec.cases:
            print(f"case   {case.id:<24} N={case.n:<9} d={case.d:<4} h={case.bandwidth:.4g}  {case.note}")
        for workload, reason in spec.skipped:
            print(f"case   {workload:<24} {reason}")
        for method in all_methods():
            reason = method.unavailable(__import__("torch").device(args.device))
            print(f"method {method.name:<30} {reason or 'available'}")
        return 0

    from .suite import run_suite

    run_suite(
        args.suite, args.device, args.out, only=args.only, methods=args.methods, repeats=args.repeats,
        budget_s=args.budget, sweep=not args.no_sweep, sweep_factors=args.sweep_factors, threads=args.threads, progress=not args.no_progress,
        time_limit_s=args.time_limit,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
