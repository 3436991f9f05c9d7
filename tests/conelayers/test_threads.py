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


def test_threads_persist_across_calls():
    """The batch threads are the process's shared pool, not new ones per call (threads
    made per call leaked their native buffers): over five calls no more distinct worker
    threads run than one call's pool has."""
    from conelayers._threads import batch_workers

    names: dict[int, str] = {}

    def run(k: int) -> int:
        names[threading.get_ident()] = threading.current_thread().name
        time.sleep(2 * THREADS_MIN_TASK_S)
        return k

    for _ in range(5):
        map_batch(run, 6, 2)  # two threads asked for, on any machine
    workers = {i for i in names if i != threading.get_ident()}
    assert 1 <= len(workers) <= batch_workers(6, 2)
    assert all(names[i].startswith("conelayers-") for i in workers)


def test_a_superlu_dropped_in_another_thread_is_freed_by_its_creator():
    """SciPy frees a SuperLU's memory only in the thread that made it (scipy#15921):
    dropped elsewhere, a ThreadBound factorization goes back to its creator, which frees
    it (drops the last reference) at its next task."""
    import weakref

    import scipy.sparse as sp

    import conelayers._threads as T
    from conelayers.linsolve import FactorizationHints, _splu

    class Probe:  # stands in for the SuperLU object, which takes no weak references
        pass

    made: dict = {}

    def make(_):
        bound = _splu(sp.identity(5, format="csc") * 2.0, FactorizationHints())
        bound.value = Probe()  # what is handed back is whatever the holder holds
        made["ref"], made["owner"] = weakref.ref(bound.value), threading.get_ident()
        return bound

    held = T.run_all(make, [0], 1)[0]
    assert made["owner"] != threading.get_ident()
    del held  # dropped here, in the calling thread
    assert made["ref"]() is not None  # not freed here ...
    assert any(made["ref"]() in v for v in T._handed_back.values())
    T.run_all(lambda _: None, [0], 1)  # ... but by its creator's next task
    assert made["ref"]() is None
