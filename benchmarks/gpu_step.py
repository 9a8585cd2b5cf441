"""One mean-shift step over all points on a GPU: fused Triton kernel vs torch.

For N in {100k, 1M} points and d in {2, 8, 32, 128} features, every point is
a seed (N x N kernel evaluations) and one step is timed for:

- ``triton fused`` / ``triton fused mma``: one step of the fit's fused
  ascent kernel (:mod:`meanshift_gpu.kernels._ascent`, float32, up to 8
  features), weighted sums by row reductions / on the tensor cores;
- ``triton fp32``: :func:`meanshift_gpu.kernels.mean_shift_step` (float32,
  tiles from the committed table; the first, compiling call is reported
  separately);
- ``torch engine``: the library's chunked pure-torch step
  (:func:`meanshift_gpu._reference.mean_shift_step` with the tile sizes the
  engine picks on this GPU);
- ``lesson loop``: the fast.ai-lesson style loop, per batch of seeds
  ``w = exp(-cdist(batch, X)**2 / 2); (w @ X) / w.sum(1)``.

Reported per row: time of the step, kernel evaluations per second (N^2 / t),
its fraction of the GPU's exp throughput (the bound for the Gaussian kernel:
one ``ex2`` per evaluation, 16 per SM per clock on sm_80/sm_90), TFLOP/s of
the two matmuls (``q.x`` and ``p @ x``: 4 N^2 d flops) against the float32
FMA peak, and the speed-ups of the Triton kernel over the two torch versions.

Run from the repository root on a CUDA machine::

    python -m benchmarks.gpu_step                       # full grid, Gaussian
    python -m benchmarks.gpu_step --sizes 100000 --dims 8 --kernel flat
    python -m benchmarks.gpu_step --skip-lesson         # the lesson loop is slow at 1M

Without CUDA it prints that GPU numbers were not measured and exits 0.
``--smoke`` runs the whole script on tiny CPU problems under Triton's
interpreter, to check the script itself (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

# --smoke needs the interpreter, which must be chosen before triton is imported.
if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from meanshift_gpu import _reference  # noqa: E402

# Per-SM, per-clock throughputs (NVIDIA CUDA C Programming Guide, arithmetic
# instructions table): float32 FMA lanes and MUFU exp2 results.
_FMA_PER_SM_CLOCK = {(8, 0): 64, (8, 6): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (12, 0): 128}
_EXP_PER_SM_CLOCK = 16
# Boost clocks (GHz) used when nvidia-smi cannot be asked.
_KNOWN_CLOCK_GHZ = {"H100": 1.98, "H200": 1.98, "A100": 1.41, "L4": 2.04, "A10": 1.695}


@dataclass
class Peaks:
    """Throughput limits of the device, from its SM count and clock."""

    name: str
    evaluations_exp: float  # exp2 results per second
    fp32_flops: float  # float32 FMA flops per second (2 per FMA)
    note: str


def gpu_peaks(device: torch.device) -> Peaks:
    props = torch.cuda.get_device_properties(device)
    clock_ghz, note = None, ""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device.index or 0}", "--query-gpu=clocks.max.sm",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        clock_ghz = float(out.stdout.strip().splitlines()[0]) / 1000
        note = f"max SM clock {clock_ghz:.2f} GHz from nvidia-smi"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        for key, value in _KNOWN_CLOCK_GHZ.items():
            if key in props.name:
                clock_ghz, note = value, f"assumed boost clock {value} GHz for {key}"
                break
    if clock_ghz is None:
        clock_ghz, note = 1.5, "clock unknown: assumed 1.5 GHz"
    sms = props.multi_processor_count
    fma = _FMA_PER_SM_CLOCK.get((props.major, props.minor), 128)
    return Peaks(
        name=props.name,
        evaluations_exp=sms * _EXP_PER_SM_CLOCK * clock_ghz * 1e9,
        fp32_flops=sms * fma * 2 * clock_ghz * 1e9,
        note=f"{sms} SMs, {note}",
    )


# ------------------------------------------------------------------------------- the methods
def lesson_loop_step(seeds: torch.Tensor, data: torch.Tensor, kernel: str, batch: int) -> torch.Tensor:
    """The lesson's GPU mean shift: materialise a (batch, N) weight block per batch."""
    out = torch.empty_like(seeds)
    for s0 in range(0, seeds.shape[0], batch):
        dist = torch.cdist(seeds[s0 : s0 + batch], data)
        if kernel == "gaussian":
            w = torch.exp(-0.5 * dist.square())
        elif kernel == "flat":
            w = (dist <= 1.0).to(data.dtype)
        else:
            w = (1.0 - dist.square()).clamp_min(0.0)
        out[s0 : s0 + batch] = (w @ data) / w.sum(1, keepdim=True)
    return out


def torch_engine_step(seeds, data, kernel):
    from meanshift_gpu._decisions import auto_blocks

    blocks = auto_blocks(data.device, "auto", data.dtype)
    return _reference.mean_shift_step(
        seeds, data, kernel=kernel, seed_block=blocks.seeds, point_block=blocks.points
    ).positions


def triton_step(seeds, data, kernel):
    from meanshift_gpu import kernels

    return kernels.mean_shift_step(seeds, data, kernel=kernel).positions


def fused_step(seeds, data_t, kernel, variant="reduce"):
    """One step of the fit's fused ascent kernel (every seed moving: ``tol=0``)."""
    from meanshift_gpu.kernels import _ascent

    m = seeds.shape[0]
    positions = seeds.clone()
    zeros = torch.zeros(m, dtype=seeds.dtype, device=seeds.device)
    _ascent.ascent_steps(
        positions, zeros, zeros.clone(), torch.zeros(m, dtype=torch.long, device=seeds.device),
        torch.zeros(m, dtype=torch.int8, device=seeds.device), torch.arange(m, device=seeds.device),
        data_t, None, kernel=kernel, tol=0.0, max_iter=2**31 - 1, variant=variant,
    )
    return positions


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int, budget_s: float) -> tuple[float, object]:
    """Median wall time of ``fn()`` over up to ``repeat`` runs (fewer once over budget)."""
    times, result = [], None
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if sum(times) > budget_s:
            break
    return statistics.median(times), result


def make_data(n_points: int, n_features: int, device, seed: int = 0) -> torch.Tensor:
    """Blobs in scaled coordinates (bandwidth 1), centred like the engine's input."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n_blobs = 16
    centers = torch.randn(n_blobs, n_features, generator=gen) * 3.0
    labels = torch.randint(0, n_blobs, (n_points,), generator=gen)
    data = centers[labels] + torch.randn(n_points, n_features, generator=gen) * 0.7
    data -= data.mean(0)
    return data.to(device=device, dtype=torch.float32).contiguous()


# --------------------------------------------------------------------------------- the run
def run(args) -> None:
    device = torch.device("cuda" if not args.smoke else "cpu")
    peaks = gpu_peaks(device) if device.type == "cuda" else None
    if peaks is not None:
        print(f"device: {peaks.name} ({peaks.note})")
        print(f"limits: exp {peaks.evaluations_exp / 1e12:.2f} T evaluations/s, "
              f"float32 FMA {peaks.fp32_flops / 1e12:.1f} TFLOP/s")
    else:
        print("SMOKE RUN on the CPU under the Triton interpreter: the numbers below mean nothing")
    print(f"kernel: {args.kernel}; one step, every point a seed (N^2 kernel evaluations)\n")
    header = (f"{'N':>9} {'d':>4}  {'method':<16} {'time s':>9} {'eval/s':>10} {'of exp':>7} "
              f"{'TFLOP/s':>8} {'of FMA':>7} {'vs engine':>9} {'vs lesson':>9}  check")
    print(header)
    print("-" * len(header))
    for n_points in args.sizes:
        for n_features in args.dims:
            data = make_data(n_points, n_features, device)
            evaluations = float(n_points) ** 2
            flops = 4.0 * n_points * n_points * n_features
            rows = []
            engine_time = lesson_time = None
            engine_result = None
            if not args.skip_engine:
                engine_time, engine_result = timed(
                    lambda: torch_engine_step(data, data, args.kernel), device, args.repeat, args.budget
                )
                rows.append(("torch engine", engine_time, ""))
            if not args.skip_lesson:
                batch = max(1, (1 << 28) // n_points)  # a 1 GiB float32 block per batch
                lesson_time, _ = timed(
                    lambda: lesson_loop_step(data, data, args.kernel, batch), device, args.repeat, args.budget
                )
                rows.append(("lesson loop", lesson_time, ""))
            if not args.skip_fused and n_features <= 8:
                data_t = data.T.contiguous()
                for variant in args.variants:
                    name = "triton fused" if variant == "reduce" else f"triton fused {variant}"
                    try:
                        start = time.perf_counter()
                        fused_step(data, data_t, args.kernel, variant)  # compiles on first use
                        synchronize(device)
                        first_s = time.perf_counter() - start
                        t, result = timed(lambda: fused_step(data, data_t, args.kernel, variant), device,
                                          args.repeat, args.budget)
                    except Exception as exc:  # one variant failing must not hide the others' rows
                        print(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                        continue
                    check = f"first call {first_s:.1f}s"
                    if engine_result is not None:
                        check += f", max |diff| vs engine {float((result - engine_result).abs().max()):.1e}"
                    rows.append((name, t, check))
                del data_t
            start = time.perf_counter()
            first = triton_step(data, data, args.kernel)  # compiles on first use
            synchronize(device)
            tune_s = time.perf_counter() - start
            t, result = timed(lambda: triton_step(data, data, args.kernel), device, args.repeat, args.budget)
            check = f"first call {tune_s:.1f}s"
            if engine_result is not None:
                err = float((result - engine_result).abs().max())
                check += f", max |diff| vs engine {err:.1e}"
            del first
            rows.append(("triton fp32", t, check))
            for method, t, check in rows:
                eval_rate = evaluations / t
                tflops = flops / t / 1e12
                of_exp = f"{eval_rate / peaks.evaluations_exp:7.1%}" if peaks else f"{'-':>7}"
                of_fma = f"{flops / t / peaks.fp32_flops:7.1%}" if peaks else f"{'-':>7}"
                vs_engine = f"{engine_time / t:8.1f}x" if engine_time and method.startswith("triton") else f"{'':>9}"
                vs_lesson = f"{lesson_time / t:8.1f}x" if lesson_time and method.startswith("triton") else f"{'':>9}"
                print(f"{n_points:>9} {n_features:>4}  {method:<16} {t:9.3f} {eval_rate:10.3g} {of_exp} "
                      f"{tflops:8.2f} {of_fma} {vs_engine} {vs_lesson}  {check}")
            del data
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\n'of exp': evaluations/s over the exp2 throughput limit (the Gaussian kernel's bound);"
          "\n'of FMA': matmul flops over the float32 FMA peak (the fused mma variant runs on tensor"
          "\ncores, whose peak is higher).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument("--kernel", choices=["gaussian", "flat", "epanechnikov"], default="gaussian")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (median reported)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="stop repeating a method once its runs took this many seconds")
    parser.add_argument("--skip-lesson", action="store_true", help="do not time the lesson loop")
    parser.add_argument("--skip-engine", action="store_true", help="do not time the torch engine")
    parser.add_argument("--skip-fused", action="store_true", help="do not time the fused ascent kernel")
    parser.add_argument("--variants", nargs="+", choices=["reduce", "mma"], default=["reduce", "mma"],
                        help="fused ascent variants to time (default: both)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CPU run under the Triton interpreter, to test this script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes = [min(n, 300) for n in args.sizes][:1]
        args.dims = [d for d in args.dims if d <= 8] or [2]
        args.repeat = 1
    elif not torch.cuda.is_available():
        print("CUDA is not available on this machine: GPU numbers were not measured.")
        print("Run this script on a CUDA GPU (or pass --smoke to check the script on the CPU).")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
