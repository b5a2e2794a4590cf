"""The contract of scheduling policies: which ready task goes next.

The engine ``add``s a task when its inputs are available, ``remove``s it when it is cancelled, and
calls ``select(reserve)`` whenever capacity may have freed: the policy offers tasks in its order to
``reserve`` (the executor's ``try_reserve``) and returns those that fit, in dispatch order.
``observe`` sees every committed event, so a policy can learn (durations, arrival rates).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class ReadyTask:
    run_id: str
    task_id: str
    func_name: str
    resources: dict[str, Any]
    run_order: int          # submission order of the run (lower: older)
    ready_at: float         # time.monotonic() when it became ready


def resource_shape(resources: dict[str, Any]) -> tuple:
    """A hashable key of what a task needs from an executor (tasks of one shape fit alike)."""
    return (resources.get("cpu"), resources.get("mem"), resources.get("gpu"), resources.get("gpu_mem"))


class Scheduler(ABC):
    name: str = "scheduler"

    @abstractmethod
    def add(self, task: ReadyTask) -> None: ...

    @abstractmethod
    def remove(self, run_id: str, task_id: str) -> bool:
        """Forget a waiting task; True if it was waiting."""

    @abstractmethod
    def select(self, reserve: Callable[[dict[str, Any]], bool]) -> list[ReadyTask]:
        """Tasks to dispatch now, in order; each was reserved successfully."""

    @abstractmethod
    def __len__(self) -> int: ...

    def observe(self, event: Any) -> None:  # noqa: B027 - optional
        """Learn from a committed event (``maze_core.events.Event``)."""

    def plan(self, run_id: str, tasks: dict[str, dict[str, Any]]) -> None:  # noqa: B027 - optional
        """A run is being submitted: ``tasks`` maps task id to its spec (``func_name``,
        ``dependencies``...). Called before its first tasks are added, so a policy can rank them
        by the whole DAG (``observe`` sees the ``RunSubmitted`` event only after it is committed)."""

    def learn_from(self, store: Any) -> None:  # noqa: B027 - optional
        """Called once when the engine starts, with its ``EventStore``: learn from the history
        (for example ``store.task_durations()``) before the first task is dispatched."""
