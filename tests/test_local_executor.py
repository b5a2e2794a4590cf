"""The local executor passes the executor contract, in thread and process mode."""

from __future__ import annotations

import pytest
from maze_local import LocalExecutor

from maze_core.executor import Invocation
from maze_core.resources import normalize
from maze_core.testing.executor_contract import ExecutorContract


class TestLocalThreads(ExecutorContract):
    @pytest.fixture
    def executor(self):
        ex = LocalExecutor(cpus=2)
        yield ex
        ex.shutdown(wait=False)


class TestLocalProcesses(ExecutorContract):
    @pytest.fixture
    def executor(self):
        ex = LocalExecutor(cpus=2, mode="process")
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
