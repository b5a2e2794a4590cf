"""A run's state is a fold of its events.

``RunState.apply(type, data)`` is the only way state changes: the engine applies each event as it
creates it, and recovery applies the stored stream of an unfinished run to rebuild exactly the same
state. Nothing here reads a clock, a store or an executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import events as ev

PENDING = "pending"
QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
SKIPPED = "skipped"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, SKIPPED})     # a task that has finished
# A run's statuses, in the order the docs list them, and those of a run that has finished: the one
# definition that the engine, the CLI, the API and the SDK import.
RUN_STATUSES = (RUNNING, SUCCEEDED, FAILED, CANCELLED)
RUN_FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({QUEUED, RUNNING})

_MISSING = object()


@dataclass(slots=True)
class TaskState:
    spec: dict[str, Any]
    children: list[str] = field(default_factory=list)
    waiting: int = 0                # dependencies not yet succeeded
    status: str = PENDING
    attempt: int = 0
    result: Any = _MISSING          # inline JSON result
    result_ref: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    interruptions: int = 0          # times a crash of the driving process cut this task off


class RunState:
    """Everything the engine knows about one run, rebuilt from its events alone."""

    __slots__ = ("run_id", "name", "driver", "workdir", "status", "version", "tasks", "open", "order")

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.name = ""
        self.driver: dict[str, Any] = {}
        self.workdir: str | None = None  # the run's working directory, if it has one
        self.status = "new"
        self.version = 0            # stream version of the last applied event
        self.tasks: dict[str, TaskState] = {}
        self.open = 0               # tasks not terminal
        self.order = 0              # seq of RunSubmitted: submission order across runs

    @classmethod
    def from_events(cls, run_id: str, events: list[ev.Event]) -> RunState:
        state = cls(run_id)
        for event in events:
            if event.type == ev.RUN_SUBMITTED:
                state.order = event.seq
            state.apply(event.type, event.data)
            state.version = event.version
        return state

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED

    def apply(self, type_: str, data: dict[str, Any]) -> list[str]:
        """Apply one event; return the ids of tasks that became ready (inputs all available)."""
        if type_ == ev.RUN_SUBMITTED:
            return self._submitted(data)
        task_id = data.get("task_id")
        if task_id is not None:
            return self._task_event(type_, self.tasks[task_id], data)
        if type_ == ev.RUN_RESUMED:
            self.driver = data.get("driver", {})
            ready = []
            for tid in data.get("requeued", []):
                # interrupted by the crash, not by its own failure: the next dispatch reuses
                # the same attempt number, so a crash does not eat into the retry budget
                task = self.tasks[tid]
                task.status = PENDING
                task.attempt = max(task.attempt - 1, 0)
                task.interruptions += 1
                if task.waiting == 0:
                    ready.append(tid)
            return ready
        if type_ in ev.RUN_TERMINAL:
            self.status = data.get("status") or type_[3:].lower()
        return []

    def _submitted(self, data: dict[str, Any]) -> list[str]:
        self.name = data.get("name", "")
        self.driver = data.get("driver", {})
        self.workdir = data.get("workdir")
        self.status = "running"
        for tid, spec in data["tasks"].items():
            self.tasks[tid] = TaskState(spec=spec, waiting=len(spec.get("dependencies", ())))
        for tid, spec in data["tasks"].items():
            for dep in spec.get("dependencies", ()):
                self.tasks[dep].children.append(tid)
        self.open = len(self.tasks)
        return [tid for tid, t in self.tasks.items() if t.waiting == 0]

    def _task_event(self, type_: str, task: TaskState, data: dict[str, Any]) -> list[str]:
        was_terminal = task.status in TERMINAL
        if type_ == ev.TASK_QUEUED:
            task.status, task.attempt = QUEUED, data["attempt"]
        elif type_ == ev.TASK_STARTED:
            task.status = RUNNING
        elif type_ == ev.TASK_RETRYING:
            task.status, task.error = RETRYING, data.get("error")
        elif type_ == ev.TASK_SUCCEEDED:
            task.status = SUCCEEDED
            if data.get("result_ref") is not None:
                task.result_ref = data["result_ref"]
            else:
                task.result = data.get("result")
        elif type_ == ev.TASK_FAILED:
            task.status, task.error, task.traceback = FAILED, data.get("error"), data.get("traceback")
        elif type_ == ev.TASK_CANCELLED:
            task.status, task.error = CANCELLED, data.get("reason")
        elif type_ == ev.TASK_SKIPPED:
            task.status, task.error = SKIPPED, data.get("reason")
        if task.status in TERMINAL and not was_terminal:
            self.open -= 1
        if type_ != ev.TASK_SUCCEEDED:
            return []
        ready = []
        for child_id in task.children:
            child = self.tasks[child_id]
            child.waiting -= 1
            if child.waiting == 0 and child.status == PENDING:
                ready.append(child_id)
        return ready

    def descendants(self, task_id: str) -> list[str]:
        """Every task downstream of ``task_id``, breadth first."""
        seen: dict[str, None] = {}
        frontier = list(self.tasks[task_id].children)
        while frontier:
            nxt = []
            for tid in frontier:
                if tid not in seen:
                    seen[tid] = None
                    nxt.extend(self.tasks[tid].children)
            frontier = nxt
        return list(seen)

    def outcome(self) -> tuple[str, list[str]]:
        """How the run ends once no task is open: (status, failed task ids)."""
        failed = [tid for tid, t in self.tasks.items() if t.status == FAILED]
        if failed:
            return "failed", failed
        if any(t.status == CANCELLED for t in self.tasks.values()):
            return "cancelled", []
        if any(t.status == SKIPPED for t in self.tasks.values()):
            return "failed", []
        return "succeeded", []
