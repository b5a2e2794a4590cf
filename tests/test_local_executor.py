"""The local executor passes the executor contract, and keeps its own promises."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from maze_core.executor import Invocation
from maze_core.resources import normalize
from maze_core.testing.executor_contract import ExecutorContract
from maze_core.testing.executor_contract import ReportCollector as Reports
from maze_local import LocalExecutor


class TestLocalThreads(ExecutorContract):
    @pytest.fixture
    def executor(self):
        ex = LocalExecutor(cpus=2)
        yield ex
        ex.shutdown(wait=False)


def test_memory_and_gpu_accounting():
    ex = LocalExecutor(cpus=4, mem=1000, gpus=1)  # memory and GPUs are never admitted beyond capacity
    assert ex.check(normalize({"mem": 2000})) and "1000 MB" in ex.check(normalize({"mem": 2000}))
    assert ex.try_reserve(normalize({"mem": 600}))
    assert not ex.try_reserve(normalize({"mem": 600}))
    assert ex.try_reserve(normalize({"gpu": 1}))
    assert not ex.try_reserve(normalize({"gpu": 1}))
    assert "GPU" in LocalExecutor(cpus=1).check(normalize({"gpu": 1}))


def test_io_tasks_take_a_small_share():
    ex = LocalExecutor(cpus=1, prefetch=0)
    for _ in range(10):
        assert ex.try_reserve(normalize({"type": "io"}))
    assert not ex.try_reserve(normalize({"type": "io"}))


def test_backlog_starts_the_next_task_when_a_slot_frees():
    import queue
    import time

    reports: queue.Queue = queue.Queue()
    ex = LocalExecutor(cpus=1, prefetch=1)
    ex.start(reports.put)
    one = normalize({"cpu": 1})

    def work(i: int) -> dict:
        start = time.time()
        time.sleep(0.2)
        return {"i": i, "start": start, "end": time.time()}

    try:
        assert ex.try_reserve(one) and ex.try_reserve(one)
        assert not ex.try_reserve(one)              # one running + one CPU's worth of backlog
        for i in range(2):
            ex.submit(Invocation("r", f"t{i}", 1, work, {"i": i}, one))
        assert [q["task_id"] for q in ex.describe()["nodes"][0]["queued"]] == ["t1"]
        ends = {}
        while len(ends) < 2:
            update = reports.get(timeout=10)
            if update.kind == "succeeded":
                ends[update.task_id] = update.value
        assert ends["t1"]["start"] >= ends["t0"]["end"]   # never both at once on one CPU
        assert ex.try_reserve(one) and ex.try_reserve(one)
    finally:
        ex.shutdown(wait=False)


def test_cancelling_a_backlogged_task_frees_its_place():
    ex = LocalExecutor(cpus=1, prefetch=1)
    ex.start(lambda update: None)
    one = normalize({"cpu": 1})
    try:
        import threading
        gate = threading.Event()
        assert ex.try_reserve(one) and ex.try_reserve(one)
        ex.submit(Invocation("r", "a", 1, gate.wait, {"timeout": 10}, one))
        ex.submit(Invocation("r", "b", 1, gate.wait, {"timeout": 10}, one))
        ex.cancel("r", "b")
        assert ex.describe()["nodes"][0]["queued"] == []
        assert ex.try_reserve(one)
        gate.set()
    finally:
        ex.shutdown(wait=False)


# ---------------------------------------------------------------------------------------- helpers
ONE = normalize({"cpu": 1})


def _inv(task_id: str, func, resources=ONE, **kwargs) -> Invocation:
    return Invocation("r", task_id, 1, func, kwargs, resources)


def _submit(ex: LocalExecutor, inv: Invocation) -> None:
    assert ex.try_reserve(inv.resources), f"{inv.task_id} must be admitted"
    ex.submit(inv)


def _all_free(ex: LocalExecutor, prefetch: int = 0) -> bool:
    """Every running slot and every admission slot (``prefetch`` extra per CPU) is free again."""
    cpus = int(ex.capacity()["cpu"])
    held = [ONE for _ in range(cpus * (1 + prefetch) + 1) if ex.try_reserve(ONE)]
    for res in held:
        ex.release(res)
    return ex.available()["cpu"] == cpus and len(held) == cpus * (1 + prefetch)


@pytest.fixture
def threads():
    reports = Reports()
    ex = LocalExecutor(cpus=2)
    ex.start(reports)
    yield ex, reports
    ex.shutdown(wait=False)


# ---------------------------------------------------------------------------------------- thread mode
def test_thread_shutdown_without_wait_returns_at_once(threads):
    ex, reports = threads
    gate = threading.Event()
    _submit(ex, _inv("held", gate.wait, timeout=30))
    reports.wait("held", "started")
    start = time.monotonic()
    ex.shutdown(wait=False)
    elapsed = time.monotonic() - start
    gate.set()
    assert elapsed < 1.0, f"shutdown(wait=False) took {elapsed:.2f} s"


def test_thread_shutdown_with_wait_waits_for_running_bodies_only(threads):
    ex, reports = threads
    abandoned = threading.Event()
    _submit(ex, _inv("abandoned", abandoned.wait, timeout=30))
    reports.wait("abandoned", "started")
    ex.cancel("r", "abandoned")  # no longer the executor's business: not waited for
    _submit(ex, _inv("nap", lambda: time.sleep(0.3)))
    reports.wait("nap", "started")
    start = time.monotonic()
    ex.shutdown(wait=True)
    elapsed = time.monotonic() - start
    abandoned.set()
    assert reports.kinds("nap") == ["started", "succeeded"]
    assert elapsed < 1.0, f"shutdown(wait=True) took {elapsed:.2f} s for a 0.3 s body"


def test_worker_threads_are_daemons_and_reused(threads):
    ex, reports = threads
    names = []
    for i in range(10):
        _submit(ex, _inv(f"t{i}", lambda: threading.current_thread()))
        end = reports.wait(f"t{i}")
        names.append(reports.wait(f"t{i}", "started").worker["thread"])
        assert end.value.daemon, "a task body must run in a daemon thread"
    assert len(set(names)) <= 2, f"idle threads are reused: {sorted(set(names))}"
    pool = [t for t in threading.enumerate() if t.name in names]
    assert pool and all(t.daemon for t in pool)


def test_abandoned_bodies_do_not_starve_the_thread_pool(threads):
    ex, reports = threads
    ex._threads._limit = 1  # one thread may run a task at a time
    gate = threading.Event()
    try:
        _submit(ex, _inv("stuck", gate.wait, timeout=30))
        reports.wait("stuck", "started")
        ex.cancel("r", "stuck")
        _submit(ex, _inv("next", lambda: "ran"))
        assert reports.wait("next").value == "ran"
    finally:
        gate.set()


@pytest.fixture
def blocked_with_backlog(monkeypatch):
    """A 2-CPU executor running ``big`` (both CPUs, blocked on a gate) with ``b`` and ``c`` in its
    backlog; ``refuse(message)`` makes every later hand-over to a worker thread fail."""
    reports = Reports()
    ex = LocalExecutor(cpus=2, prefetch=1)  # admits 4 CPUs' worth, runs 2
    ex.start(reports)
    gate = threading.Event()

    def refuse(message: str) -> None:
        def no_thread(fn):
            raise RuntimeError(message)
        monkeypatch.setattr(ex._threads, "submit", no_thread)

    try:
        _submit(ex, _inv("big", gate.wait, normalize({"cpu": 2}), timeout=30))
        _submit(ex, _inv("b", lambda: "b"))
        _submit(ex, _inv("c", lambda: "c"))
        reports.wait("big", "started")
        yield ex, reports, gate, refuse
    finally:
        gate.set()
        ex.shutdown(wait=False)


def test_backlog_jobs_that_cannot_start_are_reported_failed(blocked_with_backlog):
    ex, reports, gate, refuse = blocked_with_backlog
    refuse("no thread for you")
    gate.set()  # big ends: its worker runs b itself and must hand c to another thread
    assert reports.wait("big").kind == "succeeded"
    assert reports.wait("b").value == "b"
    c = reports.wait("c")
    assert c.kind == "failed" and c.error == "RuntimeError: could not start the task: no thread for you"
    assert _all_free(ex, prefetch=1)


def test_followers_of_a_cancel_that_cannot_start_are_reported_failed(blocked_with_backlog):
    ex, reports, gate, refuse = blocked_with_backlog
    refuse("full")
    ex.cancel("r", "big")  # b and c may run now: handing them to threads fails
    for tid in ("b", "c"):
        assert reports.wait(tid).error == "RuntimeError: could not start the task: full"
    assert reports.kinds("b") == ["failed"]
    assert _all_free(ex, prefetch=1)


# ---------------------------------------------------------------------------------------- the interpreter exits
_EXIT_SCRIPT = """
import queue, sys, time
from maze_local import LocalExecutor
from maze_core.executor import Invocation
from maze_core.resources import normalize

def body():
    time.sleep(30)

reports = queue.Queue()
ex = LocalExecutor(cpus=1)
ex.start(reports.put)
one = normalize({"cpu": 1})
assert ex.try_reserve(one)
ex.submit(Invocation("r", "t", 1, body, {}, one))
print(reports.get(timeout=30).worker["pid"], flush=True)
# the main thread ends here, with the body still sleeping
"""


def test_the_interpreter_exits_while_a_body_still_runs():
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert elapsed < 5.0, f"the interpreter took {elapsed:.1f} s to exit"
    assert done.stdout.split()[0].isdigit()      # the body had started before the main thread ended


def test_backlog_lets_a_small_task_pass_a_big_one():
    reports = Reports()
    ex = LocalExecutor(cpus=2, prefetch=1)
    ex.start(reports)
    gate = threading.Event()
    try:
        _submit(ex, _inv("long", gate.wait, ONE, timeout=30))          # holds 1 of 2 CPUs
        reports.wait("long", "started")
        _submit(ex, _inv("big", lambda: "big", normalize({"cpu": 2})))  # must wait for both CPUs
        _submit(ex, _inv("small", lambda: "small"))                      # fits the free CPU now
        assert reports.wait("small").value == "small"
        assert reports.kinds("big") == []
        gate.set()
        assert reports.wait("big").value == "big"
    finally:
        gate.set()
        ex.shutdown(wait=False)


def test_a_big_task_that_waited_too_long_is_no_longer_passed(monkeypatch):
    import maze_local.executor as module
    monkeypatch.setattr(module, "BACKFILL_PATIENCE_S", 0.2)
    reports = Reports()
    ex = LocalExecutor(cpus=2, prefetch=2)
    ex.start(reports)
    gate, small_gate = threading.Event(), threading.Event()
    try:
        _submit(ex, _inv("long", gate.wait, ONE, timeout=30))
        reports.wait("long", "started")
        _submit(ex, _inv("big", lambda: "big", normalize({"cpu": 2})))
        time.sleep(0.3)                                   # big has now waited past its patience
        _submit(ex, _inv("late", small_gate.wait, ONE, timeout=30))
        time.sleep(0.2)
        assert reports.kinds("late") == []               # the free CPU is kept for big
        gate.set()
        assert reports.wait("big").value == "big"
        small_gate.set()
        assert reports.wait("late").kind == "succeeded"
    finally:
        gate.set()
        small_gate.set()
        ex.shutdown(wait=False)
