"""The in-task context: what a task body may ask about the attempt it runs in.

``current_task()`` is the one object for every in-task call. Executors set it around each body
with ``running(...)``, in whatever process or thread runs it (a thread of the local executor, a
Ray worker), so a body sees the same answers wherever it runs::

    from maze_core import current_task, task

    @task(retries=2)
    def flaky() -> dict:
        ctx = current_task()
        if ctx.attempt == 1:
            raise ConnectionError("the first attempt always fails")
        return {"attempt": ctx.attempt}

It holds plain data only (no engine, no store), so it pickles and costs nothing to set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["TaskContext", "current_task", "running"]


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The attempt a body runs in: its run, its task id in the DAG, its attempt number (1 for
    the first, counted across retries and resumes alike) and the run's working directory, if
    the run has one."""

    run_id: str
    task_id: str
    attempt: int
    workdir: str | None = None


_current: ContextVar[TaskContext | None] = ContextVar("maze_task", default=None)


def current_task() -> TaskContext:
    """The context of the task attempt running in this thread; ``RuntimeError`` outside one."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("current_task() is only available inside a running Maze task")
    return ctx


@contextmanager
def running(ctx: TaskContext) -> Iterator[TaskContext]:
    """Make ``ctx`` the current task for the body run inside this block (executors use it)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
