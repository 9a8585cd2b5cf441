"""Timing, memory and time-prediction helpers of the benchmark suite.

Wall time
    ``time.perf_counter`` around the whole ``fit`` (CUDA synchronised before
    and after), median of the timed runs that follow a warm-up run.

Peak host memory
    Peak resident set size (RSS) during a run minus the RSS just before it,
    sampled every 2 ms from ``/proc/self/statm`` by a background thread (after
    ``gc.collect()`` and glibc's ``malloc_trim(0)``, so memory freed by earlier
    runs is returned to the system first).  It counts everything the process
    touches (numpy, torch, faiss, scikit-learn's trees), unlike
    ``tracemalloc``, which sees only Python-level allocations.  Where
    ``/proc`` is missing it is reported as n/a.

Peak device memory
    ``torch.cuda.max_memory_allocated`` minus the allocation before the run:
    torch's allocator only (faiss-gpu and KeOps allocate outside it).
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

HOST_MEMORY_METHOD = "peak RSS delta, sampled every 2 ms from /proc/self/statm"
DEVICE_MEMORY_METHOD = "torch.cuda.max_memory_allocated delta (torch allocator only)"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager measuring peak host RSS growth (and CUDA allocation growth).

    Examples
    --------
    >>> import numpy as np
    >>> with PeakMemory(torch.device("cpu")) as mem:
    ...     a = np.ones(20_000_000)  # 160 MB, touched
    >>> mem.host_bytes is None or mem.host_bytes > 100e6
    True
    """

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device = device
        self.interval_s = interval_s
        self.host_bytes: int | None = None
        self.device_bytes: int | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        _release_free_memory()
        self._base = _rss_bytes()
        self._peak = self._base or 0
        self._stop = threading.Event()
        self._thread = None
        if self._base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._device_base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.device_bytes = torch.cuda.max_memory_allocated(self.device) - self._device_base
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            last = _rss_bytes() or 0
            self.host_bytes = max(self._peak, last) - self._base


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], object], device: torch.device, memory: bool = False):
    """Run ``fn`` once; return ``(seconds, result, PeakMemory or None)``.

    Examples
    --------
    >>> seconds, result, _ = timed_call(lambda: 2 + 2, torch.device("cpu"))
    >>> result, seconds >= 0
    (4, True)
    """
    mem = PeakMemory(device) if memory else None
    if mem is not None:
        mem.__enter__()
    try:
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        if mem is not None:
            mem.__exit__(None, None, None)
    return seconds, result, mem


def fit_power_law(sizes, seconds) -> tuple[float, float] | None:
    """Least-squares fit of ``log t = a + b log N``; returns ``(a, b)`` or None (< 2 sizes).

    Examples
    --------
    >>> a, b = fit_power_law([1e3, 1e4, 1e5], [1.0, 100.0, 10000.0])
    >>> round(b, 6)
    2.0
    """
    pairs = [(math.log(n), math.log(t)) for n, t in zip(sizes, seconds) if t > 0 and n > 0]
    if len({x for x, _ in pairs}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pairs)
    my = statistics.fmean(y for _, y in pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    b = sum((x - mx) * (y - my) for x, y in pairs) / sxx
    return my - b * mx, b


# Exponent assumed when only one smaller size was measured: mean shift with every
# point a seed is quadratic without pruning.
DEFAULT_EXPONENT = 2.0


@dataclass
class Prediction:
    """Predicted seconds at a size, and how it was obtained."""

    seconds: float
    how: str


# Exponents outside this range come from timing noise between two nearby sizes, not
# from the method: mean shift costs at least one pass over the data and, dense, at
# most (iterations) x N^2 with iterations growing slowly.
EXPONENT_RANGE = (1.0, 3.0)


def predict_seconds(history: dict[int, float], n: int) -> Prediction | None:
    """Predict the time at ``n`` from measured ``{size: seconds}`` of the same series.

    Uses the power law fitted (least squares in log-log) on every measured
    smaller size, its exponent clipped to ``EXPONENT_RANGE``, through the
    largest measured size; with one size, assumes ``t ~ N**2``.

    Examples
    --------
    >>> round(predict_seconds({1000: 1.0, 2000: 4.0}, 4000).seconds, 6)
    16.0
    >>> round(predict_seconds({1000: 1.0, 2000: 1.0}, 4000).seconds, 6)  # exponent floored at 1
    2.0
    >>> predict_seconds({}, 4000) is None
    True
    """
    sizes = sorted(s for s in history if s < n)
    if not sizes:
        return None
    if len(sizes) == 1:
        s = sizes[0]
        return Prediction(history[s] * (n / s) ** DEFAULT_EXPONENT,
                          f"from N={s} assuming time ~ N^{DEFAULT_EXPONENT:g}")
    _, b = fit_power_law(sizes, [history[s] for s in sizes])
    b = min(max(b, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])
    seconds = history[sizes[-1]] * (n / sizes[-1]) ** b
    return Prediction(seconds, f"power law N^{b:.2f} fitted on N={','.join(str(s) for s in sizes)}")


@dataclass
class Measurement:
    """Outcome of timing one method on one case."""

    status: str  # "ok", "skipped", "unavailable: ...", "not installed ...", "error: ..."
    times: list[float] = field(default_factory=list)
    seconds: float | None = None  # median of times, or the prediction when skipped
    extrapolated: bool = False
    warmup: str = ""
    note: str = ""
    host_bytes: int | None = None
    device_bytes: int | None = None
    output: object = None
