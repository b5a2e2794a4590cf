"""The resume planner: whether this engine can take over a run folded from the log, and what
taking it over means for each task. Pure but for the checks it is handed (the executor's
capacity, the registry, loading a pickled function)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from ..procs import process_alive, process_started
from ..state import PENDING, RETRYING, SUCCEEDED, TERMINAL, RunState

GIVE_UP, READY = "give_up", "ready"


@dataclass
class ResumeReport:
    """What ``Engine.resume`` did: the runs it took over, and those it left alone with why."""

    resumed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def this_process() -> dict[str, Any]:
    """This process as the driver of a run (``RunSubmitted.driver``): host, pid, start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_started(os.getpid())}


def driver_alive(driver: dict[str, Any]) -> bool:
    """Whether the process recorded as driving a run is still alive on this host."""
    pid = driver.get("pid")
    if driver.get("host") != socket.gethostname() or not pid or pid == os.getpid():
        return False
    return process_alive(pid, driver.get("started"))


def obstacle(state: RunState, *, force: bool, executor: Any, registered_tool: Callable[[str], Any],
             known_funcs: Container[str], get_blob: Callable[[str], bytes],
             funcs: dict[str, Any]) -> str | None:
    """Why this engine cannot take the run over, or None. The functions it had to unpickle to
    find out are added to ``funcs`` (blob hash -> function), for the engine to keep."""
    if not force and driver_alive(state.driver):
        return (f"process {state.driver.get('pid')} on this host is still driving it "
                f"(use force to take it over)")
    for tid, task in state.tasks.items():
        if task.status in TERMINAL:
            continue
        reason = executor.check(task.spec["resources"])
        if reason is not None:
            return f"task {tid}: {reason} (executor {executor.name!r})"
        ref = task.spec.get("func_ref")
        try:
            if ref is None:
                tool = registered_tool(task.spec["func_name"])
                if tool is None:
                    return f"task {tid}: tool {task.spec['func_name']!r} is not registered here"
                recorded = task.spec.get("tool_version")
                if not force and recorded is not None and str(tool.version) != recorded:
                    return (f"task {tid}: tool {task.spec['func_name']!r} is version {tool.version} "
                            f"here, the run used {recorded} (use force to run it anyway)")
            elif ref not in funcs and ref not in known_funcs:
                funcs[ref] = cloudpickle.loads(get_blob(ref))
        except Exception as exc:
            return (f"task {tid}: cannot load function {task.spec['func_name']!r} here: "
                    f"{type(exc).__name__}: {exc}")
    return None


def takeover(state: RunState, requeued: Container[str], max_interruptions: int) -> list[tuple[str, str]]:
    """What to do with each task once ``RunResumed`` is applied, in task order: ``GIVE_UP`` on a
    task that was running and has cut off its driving process more than ``max_interruptions``
    times (a segfault, the OOM killer), ``READY`` for a task whose inputs are all there."""
    plan = []
    for tid, t in state.tasks.items():
        if tid in requeued:
            if t.interruptions > max_interruptions:
                plan.append((tid, GIVE_UP))
            continue
        if (t.status == PENDING and t.waiting == 0) or t.status == RETRYING:
            plan.append((tid, READY))
    return plan


def consumers_to_come(state: RunState) -> dict[str, int]:
    """For each succeeded task with consumers: how many of them are still to be dispatched for
    the first time (so that its result is released after the last of them)."""
    return {tid: sum(1 for c in t.children if state.tasks[c].status in (PENDING, RETRYING)
                     and state.tasks[c].attempt == 0)
            for tid, t in state.tasks.items() if t.status == SUCCEEDED and t.children}
