"""One Ray task in flight, as the executor's books know it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maze_core.executor import Invocation


@dataclass(slots=True, eq=False)
class Job:
    """One Ray task: one invocation, or a fused batch of them (``members``, in order). Jobs
    compare by identity (a backlog holds each one once)."""

    inv: Invocation
    ref: Any                    # Ray's ObjectRef of its result; None: a placeholder (``Books.hold``)
    grant: Any                  # what try_reserve granted: True, or a GPU ``Placement``
    cpu: float                  # what the Ray task holds (a batch: what one call asked for)
    mem: int
    worker: dict[str, Any]
    started: bool = False       # reported started (it holds running CPUs in the books)
    members: list[Invocation] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.inv.run_id, self.inv.task_id)

    def keys(self) -> list[tuple[str, str]]:
        return [(i.run_id, i.task_id) for i in self.members or [self.inv]]

    def calls(self) -> list[Invocation]:
        return self.members or [self.inv]
