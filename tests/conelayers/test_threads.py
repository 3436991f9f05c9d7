"""map_batch: results in order, threads only for tasks long enough to pay for them."""

from __future__ import annotations

import threading
import time

import pytest

from conelayers._threads import THREADS_MIN_TASK_S, map_batch


def _task(seconds: float, seen: list):
    def run(k: int) -> int:
        seen.append(threading.get_ident())
        time.sleep(seconds)  # sleeping releases the GIL, as SCS and SuperLU do
        return k * k

    return run


@pytest.mark.parametrize("seconds", [0.0, 2 * THREADS_MIN_TASK_S])
def test_results_in_order(seconds):
    seen: list = []
    assert map_batch(_task(seconds, seen), 6, None) == [k * k for k in range(6)]


def test_short_tasks_run_serially_long_ones_in_threads():
    short: list = []
    map_batch(_task(0.0, short), 8, None)
    assert set(short) == {threading.get_ident()}
    long: list = []
    map_batch(_task(2 * THREADS_MIN_TASK_S, long), 8, 2)
    assert len(set(long) - {threading.get_ident()}) >= 1


def test_n_jobs_one_is_serial():
    seen: list = []
    map_batch(_task(2 * THREADS_MIN_TASK_S, seen), 4, 1)
    assert set(seen) == {threading.get_ident()}


def test_an_exception_is_raised():
    def fail_on_two(k: int) -> int:
        if k == 2:
            raise ValueError("instance 2")
        return k

    with pytest.raises(ValueError, match="instance 2"):
        map_batch(fail_on_two, 5, 2)
