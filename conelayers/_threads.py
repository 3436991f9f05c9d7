"""Single-threaded BLAS for the core's small dense kernels.

The core's dense work is on small or thin matrices (PSD blocks, N×k null-space blocks),
where threaded BLAS costs more than it gains, and far more when the machine is busy
(measured here: eigh of a 30×30 block 0.8 ms threaded vs 0.19 ms single-threaded; a
723×64 QR 113 ms vs 2.5 ms under load). Batches are parallel over instances instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import lru_cache

from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def single_threaded_blas() -> AbstractContextManager:
    """Context manager limiting the BLAS libraries loaded so far to one thread."""
    return _controller().limit(limits=1, user_api="blas")
