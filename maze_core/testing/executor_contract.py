"""A reusable test suite for executor plugins.

Subclass ``ExecutorContract`` in your own tests and provide an ``executor`` fixture returning a
fresh, not yet started executor with at least 2 CPUs of capacity::

    class TestMyExecutor(ExecutorContract):
        @pytest.fixture
        def executor(self):
            ex = MyExecutor(cpus=2)
            yield ex
            ex.shutdown()

The suite starts the executor itself and checks what the engine relies on: reports in order
(``started`` then one end), values and errors carried back, capacity honoured, impossible requests
named, cancellation releasing capacity.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest

from maze_core.executor import Executor, Invocation, TaskUpdate
from maze_core.resources import normalize

WAIT = 30.0


def _add(a: int, b: int) -> dict:
    return {"sum": a + b}


def _boom(message: str) -> None:
    raise ValueError(message)


def _sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


class _Collector:
    """Keeps every report, per task, whichever order they arrive in."""

    def __init__(self) -> None:
        self.updates: queue.Queue[TaskUpdate] = queue.Queue()
        self.by_task: dict[str, list[TaskUpdate]] = {}

    def __call__(self, update: TaskUpdate) -> None:
        self.updates.put(update)

    def _drain(self, timeout: float) -> None:
        try:
            update = self.updates.get(timeout=timeout)
        except queue.Empty:
            return
        self.by_task.setdefault(update.task_id, []).append(update)

    def until_end(self, task_id: str) -> list[TaskUpdate]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            seen = self.by_task.get(task_id, [])
            if seen and seen[-1].kind != "started":
                return seen
            self._drain(0.5)
        raise AssertionError(f"no end report for {task_id}; saw {[u.kind for u in self.by_task.get(task_id, [])]}")

    def kinds(self, task_id: str) -> list[str]:
        while not self.updates.empty():
            self._drain(0)
        return [u.kind for u in self.by_task.get(task_id, [])]


def _invocation(task_id: str, func: Any, kwargs: dict[str, Any], cpu: float = 1, attempt: int = 1) -> Invocation:
    return Invocation("run-contract", task_id, attempt, func, kwargs, normalize({"cpu": cpu}),
                      func_name=getattr(func, "__name__", "f"))


class ExecutorContract:
    """Behaviour every executor must show. Provide the ``executor`` fixture."""

    @pytest.fixture
    def started(self, executor: Executor):
        collector = _Collector()
        executor.start(collector)
        yield executor, collector

    def _run(self, executor: Executor, inv: Invocation) -> None:
        assert executor.try_reserve(inv.resources), "a 1-CPU task must fit an idle executor"
        executor.submit(inv)

    def test_reports_started_then_succeeded_with_value(self, started):
        executor, collector = started
        self._run(executor, _invocation("t1", _add, {"a": 2, "b": 3}))
        updates = collector.until_end("t1")
        assert [u.kind for u in updates] == ["started", "succeeded"]
        assert updates[-1].value == {"sum": 5}
        assert updates[-1].attempt == 1 and updates[-1].run_id == "run-contract"
        assert updates[-1].duration_s is not None and updates[-1].duration_s >= 0

    def test_failure_carries_error_and_traceback(self, started):
        executor, collector = started
        self._run(executor, _invocation("t2", _boom, {"message": "bad input 42"}))
        end = collector.until_end("t2")[-1]
        assert end.kind == "failed"
        assert end.error.startswith("ValueError") and "bad input 42" in end.error
        assert end.traceback and "_boom" in end.traceback

    def test_admission_is_bounded_and_released(self, started):
        executor, collector = started
        total = executor.capacity()["cpu"]
        admitted = []
        for _ in range(100000):
            one = normalize({"cpu": 1})
            if not executor.try_reserve(one):
                break
            admitted.append(one)
        else:
            raise AssertionError("try_reserve never refuses: admission must be bounded")
        assert len(admitted) >= int(total), "an idle executor must admit a task per CPU"
        for one in admitted:
            executor.release(one)
        whole = normalize({"cpu": total})
        assert executor.try_reserve(whole), "released reservations must be available again"
        executor.release(whole)

    def test_never_runs_more_than_capacity_at_once(self, started):
        executor, collector = started
        slots = int(executor.capacity()["cpu"])
        ids = []
        for i in range(4 * slots):
            inv = _invocation(f"cap{i}", _interval, {"seconds": 0.2})
            if not executor.try_reserve(inv.resources):
                break
            executor.submit(inv)
            ids.append(inv.task_id)
        spans = [collector.until_end(tid)[-1].value for tid in ids]
        points = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
        running = peak = 0
        for _, step in points:
            running += step
            peak = max(peak, running)
        assert peak <= slots, f"{peak} tasks ran at once on {slots} CPUs"

    def test_capacity_released_before_end_report(self, started):
        executor, collector = started
        total = executor.capacity()["cpu"]
        inv = Invocation("run-contract", "t3", 1, _add, {"a": 1, "b": 1}, normalize({"cpu": total}))
        assert executor.try_reserve(inv.resources)
        executor.submit(inv)
        collector.until_end("t3")
        assert executor.try_reserve(inv.resources), "capacity must be free once the end is reported"
        executor.release(inv.resources)

    def test_impossible_request_is_named(self, executor):
        reason = executor.check(normalize({"cpu": 1000}))
        assert reason and "CPU" in reason
        assert executor.check(normalize({"cpu": 1})) is None

    def test_cancel_releases_capacity_and_suppresses_reports(self, started):
        executor, collector = started
        total = executor.capacity()["cpu"]
        inv = Invocation("run-contract", "t4", 1, _sleep, {"seconds": 0.5}, normalize({"cpu": total}))
        assert executor.try_reserve(inv.resources)
        executor.submit(inv)
        executor.cancel("run-contract", "t4")
        assert executor.try_reserve(inv.resources), "cancel must release the reservation"
        executor.release(inv.resources)
        time.sleep(0.8)
        kinds = collector.kinds("t4")
        assert "succeeded" not in kinds and "failed" not in kinds

    def test_runs_tasks_concurrently_up_to_capacity(self, started):
        executor, collector = started
        slots = int(executor.capacity()["cpu"])
        for rnd in ("warm", "c"):  # the first round starts workers (processes, actors...) lazily
            for i in range(slots):
                self._run(executor, _invocation(f"{rnd}{i}", _interval, {"seconds": 0.5}))
            spans = [collector.until_end(f"{rnd}{i}")[-1].value for i in range(slots)]
        # every task was running at the same moment: the latest start precedes the earliest end
        assert max(s["start"] for s in spans) < min(s["end"] for s in spans)


def _interval(seconds: float) -> dict:
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}
