"""CPU threads during the ascent: the engine splits the work itself, torch runs single-threaded.

torch's intra-op threads split each operation statically and meet at a
barrier at its end.  With another process on the machine, one of them is
preempted and every operation waits for it (benchmarks/README.md, "Tuning
history", has the slowdowns measured).  So on the CPU the ascent
runs with torch set to one thread, and its steps are split into many more
pieces than there are threads, which the threads take one at a time (a
thread on a busy core simply takes fewer):

* the compiled row-sum step does so inside the C extension;
* every other step (dense, grid, LSH, faiss) is cut into its seed tiles,
  stepped by a pool of Python threads (torch releases the GIL).

The pieces do not depend on the thread count, so neither does any result
(the dense step and the compiled row sums equal the unsplit step bit for
bit).  The thread count
is torch's setting on entry, capped by the cores this process may use, so
the two never oversubscribe the machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from .._reference import StepResult, flat_edge, using_flat_edge

__all__ = ["usable_threads", "ascent_threads", "split_across_threads"]

_local = threading.local()
# Fewer seeds than this per chunk cost more in overhead than they gain.
_MIN_CHUNK_SEEDS = 64


def usable_threads() -> int:
    """Threads the engine may run on the CPU: torch's setting (or the one on entry to
    :func:`ascent_threads`), capped by the cores this process may use.

    Examples
    --------
    >>> usable_threads() >= 1
    True
    """
    inside = getattr(_local, "threads", None)
    if inside is not None:
        return inside
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores))


@contextlib.contextmanager
def ascent_threads(device: torch.device):
    """Within: torch (and faiss, if loaded) on one thread and :func:`usable_threads` fixed (CPU only);
    yields the thread count.

    On other devices it yields 1 and changes nothing.  torch's setting is
    restored on exit.

    Examples
    --------
    >>> with ascent_threads(torch.device("cpu")) as threads:
    ...     torch.get_num_threads() == 1 and threads >= 1
    True
    """
    if device.type != "cpu" or getattr(_local, "threads", None) is not None:
        yield usable_threads() if device.type == "cpu" else 1
        return
    threads = usable_threads()
    before = torch.get_num_threads()
    # faiss (when loaded) runs its searches on OpenMP threads of its own.
    faiss = sys.modules.get("faiss")
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    _local.threads = threads
    # Threads start on the first task (fresh ones take torch's global setting: 1 here).
    _local.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meanshift-step")
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    try:
        yield threads
    finally:
        _local.pool.shutdown()
        torch.set_num_threads(before)
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_before)
        _local.threads = _local.pool = None


def split_across_threads(step, threads: int):
    """``step(seeds, kernel, blocks)`` run on chunks of the seeds by ``threads`` threads.

    The chunks are the step's own seed tiles (``blocks.seeds`` seeds, at
    least ``_MIN_CHUNK_SEEDS``), cut the same way whatever the thread count,
    so the dense step gives the same bits as unsplit and no step's result
    depends on the number of threads.  They go to the threads one at a time;
    the results come back in the seeds' order.

    Examples
    --------
    >>> from meanshift_gpu._engine.backends import Blocks
    >>> from meanshift_gpu._reference import mean_shift_step
    >>> data = torch.randn(500, 2, dtype=torch.float64)
    >>> step = lambda s, k, b: mean_shift_step(s, data, None, kernel=k, seed_block=b.seeds)
    >>> split = split_across_threads(step, 2)
    >>> blocks = Blocks(seeds=64, points=1024)
    >>> torch.equal(split(data, "flat", blocks).positions, step(data, "flat", blocks).positions)
    True
    """

    def split(seeds, kernel, blocks):
        n = seeds.shape[0]
        tile = max(1, blocks.seeds)
        size = tile * math.ceil(_MIN_CHUNK_SEEDS / tile)
        if n <= size:
            return step(seeds, kernel, blocks)
        pieces = [seeds[a : a + size] for a in range(0, n, size)]
        if threads <= 1:
            results = [step(piece, kernel, blocks) for piece in pieces]
        else:
            edge = flat_edge()  # a setting of this thread, taken over by the workers

            def one(piece):
                with using_flat_edge(edge):
                    return step(piece, kernel, blocks)

            pool = getattr(_local, "pool", None)
            if pool is not None:
                results = list(pool.map(one, pieces))
            else:  # outside ascent_threads: threads for this call only
                with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meanshift-step") as own:
                    results = list(own.map(one, pieces))
        return StepResult(torch.cat([r.positions for r in results]), torch.cat([r.log_density for r in results]))

    return split
