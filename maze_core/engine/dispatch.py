"""Dispatch: the scheduling policy picks ready tasks that fit, each gets its ``TaskQueued`` event
and its inputs, and the executor receives it only after that event is committed (``send``)."""

from __future__ import annotations

import traceback as tb_mod
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import events as ev
from ..errors import NotFoundError
from ..executor import Executor, Invocation, TaskUpdate
from ..scheduler import Scheduler
from ..state import ACTIVE, PENDING, RETRYING

if TYPE_CHECKING:
    from .runs import Runs

FUNC_CACHE_SIZE = 4096


class FunctionCache:
    """Recently used task functions by blob hash (LRU); any other is loaded again from its blob.
    A function already known by its blob hash keeps its first object: the same bytes are the
    same code, and executors cache per function object (Ray exports each new one to the cluster)."""

    def __init__(self, size: int = FUNC_CACHE_SIZE):
        self._size = size
        self._funcs: OrderedDict[str, Callable[..., Any]] = OrderedDict()

    def __contains__(self, ref: object) -> bool:
        return ref in self._funcs

    def get(self, ref: str) -> Callable[..., Any] | None:
        return self._funcs.get(ref)

    def remember(self, funcs: dict[str, Callable[..., Any]]) -> None:
        for ref, func in funcs.items():
            self._funcs.setdefault(ref, func)
            self._funcs.move_to_end(ref)
        while len(self._funcs) > self._size:
            self._funcs.popitem(last=False)


class Dispatcher:
    """Turns the policy's picks into queued attempts, and queued attempts into executor work."""

    def __init__(self, runs: Runs, scheduler: Scheduler, executor: Executor, funcs: FunctionCache,
                 registered_tool: Callable[[str], Any], get_blob: Callable[[str], bytes],
                 report: Callable[[TaskUpdate], None]):
        self._runs = runs
        self._scheduler = scheduler
        self._executor = executor
        self._funcs = funcs
        self._registered_tool = registered_tool
        self._get_blob = get_blob
        self._report = report

    def dispatch(self) -> None:
        """Queue every ready task the policy picks (resources reserved in the executor)."""
        if not len(self._scheduler):
            return
        runs, executor = self._runs, self._executor
        grants: dict[int, list[Any]] = {}
        try_reserve = executor.try_reserve

        def reserve(resources: dict[str, Any]) -> bool:
            grant = try_reserve(resources)
            if grant:
                grants.setdefault(id(resources), []).append(grant)
            return bool(grant)

        for ready in self._scheduler.select(reserve):
            grant = grants[id(ready.resources)].pop(0)
            state = runs.states.get(ready.run_id)
            task = state.tasks.get(ready.task_id) if state else None
            if task is None or task.status not in (PENDING, RETRYING):
                executor.release(ready.resources, grant)
                continue
            spec = task.spec
            attempt = task.attempt + 1
            try:
                func = self.load_func(spec)
                kwargs, held = runs.retention.inputs(state, spec, attempt)
            except Exception as exc:
                executor.release(ready.resources, grant)
                runs.emit(state, ev.TASK_QUEUED, {"task_id": ready.task_id, "attempt": attempt})
                runs.give_up(state, ready.task_id, attempt, f"{type(exc).__name__}: {exc}",
                             tb_mod.format_exc(), None)
                continue
            runs.emit(state, ev.TASK_QUEUED, {"task_id": ready.task_id, "attempt": attempt})
            if attempt == 1:
                runs.retention.served(state.run_id, spec.get("dependencies") or ())
            runs.unsent.append(Invocation(
                state.run_id, ready.task_id, attempt, func, kwargs, spec["resources"],
                spec.get("timeout"), spec["func_name"], grant, state.workdir, held))

    def send(self) -> None:
        """Hand the executor the attempts whose ``TaskQueued`` was just committed."""
        runs, executor = self._runs, self._executor
        if not runs.unsent:
            return
        invocations = []
        for inv in runs.unsent:   # one cancelled while the commit was held stays unsent
            state = runs.states.get(inv.run_id)
            task = state.tasks.get(inv.task_id) if state else None
            if task is not None and task.attempt == inv.attempt and task.status in ACTIVE:
                invocations.append(inv)
            else:
                executor.release(inv.resources, inv.grant)
        runs.unsent = []
        for inv, exc in executor.submit_many(invocations):
            executor.release(inv.resources, inv.grant)
            self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed",
                                    error=f"{type(exc).__name__}: executor refused the task: {exc}",
                                    traceback="".join(tb_mod.format_exception(exc))))

    def load_func(self, spec: dict[str, Any]) -> Callable[..., Any]:
        ref = spec.get("func_ref")
        if ref is None:
            tool = self._registered_tool(spec["func_name"])
            if tool is None:
                raise NotFoundError(f"tool {spec['func_name']!r} is not registered in this process")
            return tool.func
        func = self._funcs.get(ref)
        if func is None:
            func = cloudpickle.loads(self._get_blob(ref))
        self._funcs.remember({ref: func})
        return func
