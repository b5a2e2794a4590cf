"""First in, first out, with backfilling."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from maze_core.scheduler import ReadyTask, Scheduler, resource_shape


class FifoScheduler(Scheduler):
    """Ready tasks in the order they became ready. A task that does not fit is passed over for
    later ones that do (backfilling); once every resource shape waiting has failed to fit, the scan
    stops, so a long queue costs little per dispatch."""

    name = "fifo"

    def __init__(self) -> None:
        self._queue: dict[tuple[str, str], ReadyTask] = {}
        self._shapes: Counter[tuple] = Counter()

    def add(self, task: ReadyTask) -> None:
        key = (task.run_id, task.task_id)
        if key not in self._queue:
            self._queue[key] = task
            self._shapes[resource_shape(task.resources)] += 1

    def remove(self, run_id: str, task_id: str) -> bool:
        task = self._queue.pop((run_id, task_id), None)
        if task is None:
            return False
        self._forget_shape(task)
        return True

    def select(self, reserve: Callable[[dict[str, Any]], bool]) -> list[ReadyTask]:
        chosen: list[ReadyTask] = []
        failed: set[tuple] = set()
        for task in self._queue.values():
            shape = resource_shape(task.resources)
            if shape in failed:
                continue
            if reserve(task.resources):
                chosen.append(task)
            else:
                failed.add(shape)
                if len(failed) == len(self._shapes):
                    break
        for task in chosen:
            del self._queue[(task.run_id, task.task_id)]
            self._forget_shape(task)
        return chosen

    def _forget_shape(self, task: ReadyTask) -> None:
        shape = resource_shape(task.resources)
        self._shapes[shape] -= 1
        if self._shapes[shape] <= 0:
            del self._shapes[shape]

    def __len__(self) -> int:
        return len(self._queue)
