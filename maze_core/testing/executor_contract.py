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
named, cancellation releasing capacity at once and silencing the task, ``started`` reported only
when a body really starts. Bodies that must block wait for a file the test creates (a
``threading.Event`` cannot reach a body in another process), so the tests hold on a loaded machine.
"""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from maze_core import results
from maze_core.executor import Executor, Invocation, TaskUpdate
from maze_core.resources import normalize

WAIT = 30.0
SETTLE = 0.5  # after a body certainly ended: time for a (wrong) late report to arrive


def _add(a: int, b: int) -> dict:
    return {"sum": a + b}


def _boom(message: str) -> None:
    raise ValueError(message)


def _whoami() -> dict:
    from maze_core.task_context import current_task
    ctx = current_task()
    return {"run_id": ctx.run_id, "task_id": ctx.task_id, "attempt": ctx.attempt}


def _wait_for_file(release: str, marker: str = "", limit: float = 60.0) -> dict:
    """Block until the test creates ``release`` (at most ``limit`` seconds), then write ``marker``."""
    start = time.time()
    if marker:   # who runs the body (written whole, then renamed: a reader never sees it empty)
        Path(marker + ".pid.tmp").write_text(str(os.getpid()))
        os.replace(marker + ".pid.tmp", marker + ".pid")
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    end = time.time()
    if marker:
        Path(marker).write_text("ended")
    return {"start": start, "end": end}


def _pid_gone(pid: Any) -> bool:
    """Whether ``pid`` names no process here any more (False when it is not another process's id)."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def value_of(update: TaskUpdate) -> Any:
    """The value a ``succeeded`` update reports, whether the executor encoded it or not."""
    if update.encoded is not None:
        fields, blobs = update.encoded
        return results.decode(fields.get("result"), fields.get("result_ref"), blobs.__getitem__)
    return update.value


def _admissible(executor: Executor) -> int:
    """How many 1-CPU tasks the executor admits right now (all released again)."""
    held = []
    one = normalize({"cpu": 1})
    while len(held) < 100000 and executor.try_reserve(one):
        held.append(one)
    for res in held:
        executor.release(res)
    return len(held)


class ReportCollector:
    """An executor's ``report`` callback for tests: keeps every report, per task, whichever order
    they arrive in."""

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

    def until_started(self, task_id: str) -> TaskUpdate:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for update in self.by_task.get(task_id, []):
                if update.kind == "started":
                    return update
            self._drain(0.5)
        raise AssertionError(f"no started report for {task_id}; saw {self.kinds(task_id)}")

    def wait(self, task_id: str, kind: str = "end", timeout: float = WAIT) -> TaskUpdate:
        """The first report of ``kind`` (``started``, ``succeeded``, ``failed`` or ``end``: either
        of the last two) for ``task_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for update in self.by_task.get(task_id, []):
                if update.kind == kind or (kind == "end" and update.kind != "started"):
                    return update
            self._drain(0.1)
        raise AssertionError(f"no {kind} report for {task_id}; saw {self.kinds(task_id)}")

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
        collector = ReportCollector()
        executor.start(collector)
        yield executor, collector

    def _run(self, executor: Executor, inv: Invocation) -> None:
        grant = executor.try_reserve(inv.resources)
        assert grant, "a 1-CPU task must fit an idle executor"
        inv.grant = grant
        executor.submit(inv)

    def test_reports_started_then_succeeded_with_value(self, started):
        executor, collector = started
        self._run(executor, _invocation("t1", _add, {"a": 2, "b": 3}))
        updates = collector.until_end("t1")
        assert [u.kind for u in updates] == ["started", "succeeded"]
        assert value_of(updates[-1]) == {"sum": 5}
        assert updates[-1].attempt == 1 and updates[-1].run_id == "run-contract"
        assert updates[-1].duration_s is not None and updates[-1].duration_s >= 0

    def test_body_sees_its_attempt_as_current_task(self, started):
        executor, collector = started
        self._run(executor, _invocation("who", _whoami, {}, attempt=3))
        end = collector.until_end("who")[-1]
        assert end.kind == "succeeded", end.error
        assert value_of(end) == {"run_id": "run-contract", "task_id": "who", "attempt": 3}

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
        spans = [value_of(collector.until_end(tid)[-1]) for tid in ids]
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

    def test_cancel_releases_capacity_and_suppresses_reports(self, started, tmp_path):
        executor, collector = started
        total = executor.capacity()["cpu"]
        release, marker = tmp_path / "release", tmp_path / "ended"
        idle = _admissible(executor)
        inv = Invocation("run-contract", "t4", 1, _wait_for_file,
                         {"release": str(release), "marker": str(marker)}, normalize({"cpu": total}))
        assert executor.try_reserve(inv.resources)
        executor.submit(inv)
        collector.until_started("t4")
        pidfile = Path(str(marker) + ".pid")
        deadline = time.monotonic() + WAIT
        while not pidfile.exists() and time.monotonic() < deadline:   # the body is running
            time.sleep(0.01)
        executor.cancel("run-contract", "t4")
        assert _admissible(executor) == idle, "cancel must release the reservation at once"
        # ...and the CPUs: a task needing all of them runs while the cancelled body still blocks
        self._run(executor, Invocation("run-contract", "t4-next", 1, _add, {"a": 1, "b": 2},
                                       normalize({"cpu": total})))
        assert value_of(collector.until_end("t4-next")[-1]) == {"sum": 3}
        # let the body end: a thread body writes the marker; a killed process never does, and its
        # worker pid disappears. Either way the body has certainly ended before we look.
        release.touch()
        deadline = time.monotonic() + 10
        pid = int(pidfile.read_text())
        while not marker.exists() and not _pid_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(SETTLE)
        assert collector.kinds("t4") == ["started"], "nothing may be reported after cancel"

    def test_cancel_of_a_queued_task_never_starts_it(self, started, tmp_path):
        executor, collector = started
        total = executor.capacity()["cpu"]
        release, marker = tmp_path / "release", tmp_path / "ended"
        idle = _admissible(executor)
        blocker = Invocation("run-contract", "blocker", 1, _wait_for_file, {"release": str(release)},
                             normalize({"cpu": total}))
        queued = Invocation("run-contract", "queued", 1, _wait_for_file,
                            {"release": str(release), "marker": str(marker)}, normalize({"cpu": 1}))
        assert executor.try_reserve(blocker.resources)
        executor.submit(blocker)
        if not executor.try_reserve(queued.resources):
            executor.cancel("run-contract", "blocker")
            release.touch()
            pytest.skip("the executor admits no task beyond what can run at once")
        executor.submit(queued)
        collector.until_started("blocker")
        executor.cancel("run-contract", "queued")
        release.touch()
        assert collector.until_end("blocker")[-1].kind == "succeeded"
        assert _admissible(executor) == idle, "all capacity is free once both are gone"
        time.sleep(SETTLE)
        assert collector.kinds("queued") == [], "a task cancelled while queued must never start"
        assert not marker.exists()

    def test_reports_started_only_when_the_body_starts(self, started, tmp_path):
        executor, collector = started
        total = executor.capacity()["cpu"]
        release = tmp_path / "release"
        blocker = Invocation("run-contract", "first", 1, _wait_for_file, {"release": str(release)},
                             normalize({"cpu": total}))
        follower = Invocation("run-contract", "second", 1, _interval, {"seconds": 0.0}, normalize({"cpu": 1}))
        assert executor.try_reserve(blocker.resources)
        executor.submit(blocker)
        if not executor.try_reserve(follower.resources):
            executor.cancel("run-contract", "first")
            release.touch()
            pytest.skip("the executor admits no task beyond what can run at once")
        executor.submit(follower)
        collector.until_started("first")
        time.sleep(SETTLE)
        assert collector.kinds("second") == [], "no started report while the task cannot run"
        release.touch()
        first = collector.until_end("first")[-1]
        second = collector.until_end("second")
        assert [u.kind for u in second] == ["started", "succeeded"]
        assert value_of(second[-1])["start"] >= value_of(first)["end"], "the second body ran while the first held the CPUs"

    def test_runs_tasks_concurrently_up_to_capacity(self, started):
        executor, collector = started
        slots = int(executor.capacity()["cpu"])
        for rnd in ("warm", "c"):  # the first round starts workers (processes, actors...) lazily
            for i in range(slots):
                self._run(executor, _invocation(f"{rnd}{i}", _interval, {"seconds": 1.0}))
            spans = [value_of(collector.until_end(f"{rnd}{i}")[-1]) for i in range(slots)]
        # every task was running at the same moment: the latest start precedes the earliest end
        assert max(s["start"] for s in spans) < min(s["end"] for s in spans)


def _interval(seconds: float) -> dict:
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}
