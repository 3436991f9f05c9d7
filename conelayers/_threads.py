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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

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
            libs = _blas_libraries()
            _saved[:] = [[lib.num_threads for lib in libs]]
            for lib, threads in zip(libs, _saved[0]):
                if threads != 1:
                    lib.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, threads in zip(_blas_libraries(), _saved.pop()):
                    if threads != 1:
                        lib.set_num_threads(threads)


@lru_cache(maxsize=1)
def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries that ``_controller`` found (it
    is made once, at the core's first call), selected once: each call of the core enters
    and leaves ``single_threaded_blas``, and a selection costs more than a small solve."""
    return _controller().select(user_api="blas").lib_controllers


@lru_cache(maxsize=1)
def _cores() -> int:
    return os.cpu_count() or 1


def batch_workers(count: int, n_jobs: int | None = None) -> int:
    """Threads for ``count`` independent instances: ``n_jobs`` if given, else one per
    core, never more than the instances."""
    jobs = _cores() if n_jobs is None else max(1, int(n_jobs))
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
    return [first, *run_all(fn, range(1, count), jobs)]


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def shared_pool(jobs: int) -> ThreadPoolExecutor:
    """The process's pool of ``jobs`` worker threads, created on first use and kept:
    starting threads on every call cost the small batched cells, and ``ThreadBound``
    needs the threads that made a factorization to come back and free it."""
    with _pools_lock:
        pool = _pools.get(jobs)
        if pool is None:
            pool = _pools[jobs] = ThreadPoolExecutor(
                max_workers=jobs, thread_name_prefix=f"conelayers-{jobs}"
            )
        return pool


def run_all(fn: Callable[[Any], T], items: Iterable[Any], jobs: int) -> list[T]:
    """[fn(item) for item in items] on the shared pool, in order. Waits for every call
    before returning or raising (the first exception in item order), so no call is still
    running when the caller moves on."""

    def task(item: Any) -> T:
        release_handed_back()
        return fn(item)

    futures = [shared_pool(jobs).submit(task, item) for item in items]
    wait(futures)
    return [f.result() for f in futures]


# -- objects that must be freed by the thread that created them ----------------------------
_handed_back: dict[int, list] = {}
_handed_back_lock = threading.Lock()


class ThreadBound:
    """Holds ``value`` (a SciPy SuperLU factorization) so that it is freed in the thread
    that created it. SciPy tracks SuperLU's allocations per thread and does not free
    them when the object dies in another one (scipy/scipy#15921): factorizations made
    in the batch threads and dropped with the ForwardResult in the caller's thread
    leaked all their memory (a QP with n = 150, batch 4: RSS +184 MB over 60 calls).
    Dropped in another thread, the value is handed back to its creator, which frees it
    the next time it starts a task or a factorization (``release_handed_back``)."""

    __slots__ = ("value", "owner")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.owner = threading.get_ident()

    def __del__(self) -> None:
        try:
            if threading.get_ident() != self.owner:
                with _handed_back_lock:
                    _handed_back.setdefault(self.owner, []).append(self.value)
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to keep
            pass


def release_handed_back() -> None:
    """Free what other threads handed back to this one; also drop what was handed back
    to threads that no longer exist (nothing better can be done with it)."""
    me = threading.get_ident()
    with _handed_back_lock:
        if not _handed_back:
            return
        due = _handed_back.pop(me, None)
        live = {t.ident for t in threading.enumerate()}
        orphans = [_handed_back.pop(k) for k in list(_handed_back) if k not in live]
    del due, orphans
