"""The fifo policy: arrival order, backfilling, removal."""

from __future__ import annotations

from maze_core.resources import normalize
from maze_core.scheduler import ReadyTask
from maze_daps import FifoScheduler


def ready(task_id: str, cpu: float = 1, run: str = "r") -> ReadyTask:
    return ReadyTask(run, task_id, "f", normalize({"cpu": cpu}), 0, 0.0)


class Slots:
    def __init__(self, cpu: float):
        self.free = cpu

    def __call__(self, resources) -> bool:
        if resources["cpu"] > self.free:
            return False
        self.free -= resources["cpu"]
        return True


def test_arrival_order_and_capacity():
    s = FifoScheduler()
    for i in range(5):
        s.add(ready(f"t{i}"))
    assert [t.task_id for t in s.select(Slots(2))] == ["t0", "t1"]
    assert len(s) == 3
    assert [t.task_id for t in s.select(Slots(10))] == ["t2", "t3", "t4"]
    assert len(s) == 0


def test_backfill_lets_a_small_task_pass_a_big_one():
    s = FifoScheduler()
    s.add(ready("big", cpu=4))
    s.add(ready("small", cpu=1))
    assert [t.task_id for t in s.select(Slots(2))] == ["small"]
    assert [t.task_id for t in s.select(Slots(4))] == ["big"]


def test_remove_and_duplicates():
    s = FifoScheduler()
    s.add(ready("a"))
    s.add(ready("a"))
    s.add(ready("b"))
    assert len(s) == 2
    assert s.remove("r", "a") and not s.remove("r", "a")
    assert [t.task_id for t in s.select(Slots(5))] == ["b"]


def test_scan_stops_once_nothing_fits():
    s = FifoScheduler()
    for i in range(1000):
        s.add(ready(f"t{i}"))
    calls = []

    def reserve(resources):
        calls.append(1)
        return False

    assert s.select(reserve) == []
    assert len(calls) == 1
