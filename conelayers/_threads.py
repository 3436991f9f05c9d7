"""Threads in the core: single-threaded BLAS for its small dense kernels, and a thread
pool over the instances of a batch.

The core's dense work is on small or thin matrices (PSD blocks, N×k null-space blocks),
where threaded BLAS costs more than it gains, and far more when the machine is busy
(measured here: eigh of a 30×30 block 0.8 ms threaded vs 0.19 ms single-threaded; a
723×64 QR 113 ms vs 2.5 ms under load). Batches are parallel over instances instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

from threadpoolctl import ThreadpoolController

T = TypeVar("T")

_lock = threading.Lock()
_depth = 0
_saved: list = []


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit the BLAS libraries loaded so far to one thread while any call of the core
    runs. Reference-counted across threads: the first caller sets the limit, the last
    restores the limits it found (nested contexts restoring in the wrong order would
    otherwise leave the whole process single-threaded)."""
    global _depth
    with _lock:
        if _depth == 0:
            ctrl = _controller()
            _saved[:] = [ctrl.info()]
            _set_limits(ctrl, 1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _restore(_controller(), _saved.pop())


def _set_limits(ctrl: ThreadpoolController, limit: int) -> None:
    for lib in ctrl.select(user_api="blas").lib_controllers:
        lib.set_num_threads(limit)


def _restore(ctrl: ThreadpoolController, info: list[dict]) -> None:
    threads = {d["filepath"]: d["num_threads"] for d in info}
    for lib in ctrl.select(user_api="blas").lib_controllers:
        if lib.filepath in threads:
            lib.set_num_threads(threads[lib.filepath])


def batch_workers(count: int, n_jobs: int | None = None) -> int:
    """Threads for ``count`` independent instances: ``n_jobs`` if given, else one per
    core, never more than the instances."""
    jobs = (os.cpu_count() or 1) if n_jobs is None else max(1, int(n_jobs))
    return max(1, min(jobs, count))


THREADS_MIN_TASK_S = 0.002
"""A batch goes to threads only when one task takes at least this long: shorter tasks
are mostly Python, which holds the GIL, and the pool then only adds contention (measured
on the benchmark's small batches of 32: backward 10.6 ms threaded vs 5.8 ms serial on
lp/small, 22 vs 9 ms on sdp/small)."""


def map_batch(fn: Callable[[int], T], count: int, n_jobs: int | None = None) -> list[T]:
    """[fn(0), ..., fn(count − 1)] in order, over a thread pool when that pays: the
    first call runs alone and is timed; the rest go to threads if it took at least
    THREADS_MIN_TASK_S (or if ``n_jobs`` > 1 asks for them). An exception in a call
    propagates (from threads, once the pool has finished its calls)."""
    jobs = batch_workers(count, n_jobs) if count > 1 else 1
    if jobs == 1:
        return [fn(k) for k in range(count)]
    start = time.perf_counter()
    first = fn(0)
    if n_jobs is None and time.perf_counter() - start < THREADS_MIN_TASK_S:
        return [first, *(fn(k) for k in range(1, count))]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [first, *pool.map(fn, range(1, count))]
