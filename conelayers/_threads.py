"""Single-threaded BLAS for the core's small dense kernels.

The core's dense work is on small or thin matrices (PSD blocks, N×k null-space blocks),
where threaded BLAS costs more than it gains, and far more when the machine is busy
(measured here: eigh of a 30×30 block 0.8 ms threaded vs 0.19 ms single-threaded; a
723×64 QR 113 ms vs 2.5 ms under load). Batches are parallel over instances instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from threadpoolctl import ThreadpoolController

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
