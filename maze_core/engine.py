"""The engine: turns submissions, executor reports and timers into events, and events into work.

One thread (the loop) owns all run state. Everything else talks to it through an inbox:
submissions, cancellations and resumptions from callers, ``TaskUpdate`` reports from the executor.
Each turn of the loop drains the inbox, applies what it holds (creating events and applying each to
its ``RunState`` at once), fires due timers (retries, timeouts), lets the scheduling policy pick the
ready tasks that fit, appends the whole batch of events in one store transaction, and only then
hands the picked tasks to the executor. So a task never starts before the log says it was queued,
and a crash at any point leaves a log from which ``resume`` finishes the run without re-running a
task the log shows finished.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import itertools
import json
import os
import queue
import socket
import threading
import time
import traceback as tb_mod
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from . import events as ev
from . import results
from .config import MazeConfig, load_config
from .errors import ConcurrencyError, DAGValidationError, MazeError, NotFoundError, RunStateError
from .events import NewEvent, compact_json
from .executor import Executor, Held, Invocation, TaskUpdate, map_picks
from .json_limits import json_problems
from .logging import ensure_logging, get_logger
from .procs import process_alive, process_started
from .runtime import tool_event
from .scheduler import ReadyTask, Scheduler
from .state import _MISSING, ACTIVE, PENDING, QUEUED, RETRYING, RUNNING, TERMINAL, RunState
from .store import EventStore, blob_hash

log = get_logger("maze.engine")

RUN_FINISHED = ("succeeded", "failed", "cancelled")
STARTED_FLUSH_DELAY = 0.005  # seconds a batch of only TaskStarted events may wait for company
GROUP_COMMIT_S = 0.002       # with many tasks in flight, ends arrive one by one: gather them this long
GROUP_COMMIT_ACTIVE = 4      # ... when at least this many attempts are queued or running


class EngineError(MazeError):
    """The engine stopped or could not persist its events."""


@dataclass
class _Reply:
    """A caller waiting for the loop to finish handling its message."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self.done.wait(timeout):
            raise EngineError("the engine did not answer in time")
        if self.error is not None:
            raise self.error
        return self.value


FUNC_CACHE_SIZE = 4096
TIMERS_COMPACT_MIN = 10000
LONGEST_SLEEP_S = 3600.0     # the loop wakes at least this often (a far timer must not overflow a wait)
# what a value the store cannot encode raises: it belongs to one run, never to the engine
POISON = (ValueError, TypeError, OverflowError, RecursionError)




def _driver() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_started(os.getpid())}


def _driver_alive(driver: dict[str, Any]) -> bool:
    """Whether the process recorded as driving a run is still alive on this host."""
    pid = driver.get("pid")
    if driver.get("host") != socket.gethostname() or not pid or pid == os.getpid():
        return False
    return process_alive(pid, driver.get("started"))


def _clean_text(text: str | None) -> str | None:
    """Text safe to store: lone surrogates (from undecodable bytes) become escapes."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class ResumeReport:
    """What ``Engine.resume`` did: the runs it took over, and those it left alone with why."""

    resumed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class Engine:
    """Runs workflows. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, store: EventStore, executor: Executor, scheduler: Scheduler,
                 registry: Any = None, config: MazeConfig | None = None, actor: str = "local"):
        if registry is None:
            from .registry import task_registry as registry
        self.store, self.executor, self.scheduler, self.registry = store, executor, scheduler, registry
        self.config = config or MazeConfig()
        self.actor = actor
        self._isolated = bool(getattr(executor, "isolates_inputs", False))
        self._holds = bool(getattr(executor, "holds_results", False))
        ec = self.config.engine
        self._backoff, self._backoff_max = ec.retry_backoff, ec.retry_backoff_max
        self._inline_limit, self._max_batch = ec.inline_result_limit, ec.max_batch
        self._max_interruptions = ec.max_interruptions
        self._validate_events = ec.validate_events
        self._driver = _driver()
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._runs: dict[str, RunState] = {}          # active runs, owned by the loop thread
        self._live: dict[str, dict[str, Any]] = {}    # run -> task -> result value (cache)
        self._unserved: dict[str, dict[str, int]] = {}  # run -> task -> consumers not yet dispatched
        self._funcs: OrderedDict[str, Callable[..., Any]] = OrderedDict()  # blob hash -> function
        self._timers: list[tuple] = []
        self._timer_seq = itertools.count()
        self._timers_compact_at = TIMERS_COMPACT_MIN
        self._batch: list[tuple[RunState | None, NewEvent]] = []
        self._batch_streams: set[str] = set()
        self._urgent = False                          # the batch holds more than TaskStarted events
        self._active = 0                              # attempts queued or running (all runs)
        self._flush_at: float | None = None
        self._blobs: dict[str, bytes] = {}
        self._touched: dict[str, RunState] = {}
        self._to_submit: list[Invocation] = []
        self._replies: list[tuple[_Reply, Any]] = []
        self._cond = threading.Condition()
        self._subscribers: list[Callable[[list[ev.Event]], None]] = []
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._life = threading.Lock()     # guards _state and every post to the inbox
        self._state = "new"               # new -> running -> stopping -> stopped | failed
        self._observers: _ObserverThread | None = None
        self._registry_unsubscribe: Callable[[], None] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: MazeConfig | None = None, *, executor: Executor | None = None,
                    store: EventStore | None = None, scheduler: Scheduler | None = None,
                    registry: Any = None, actor: str = "local") -> Engine:
        """Build an engine from the plugins named in ``[engine]``."""
        from . import plugins
        config = config or load_config()
        ensure_logging(config.logging.level, config.logging.format)
        ec = config.engine
        if registry is None:
            from .registry import task_registry as registry
            from .runtime import load_tools
            load_tools(config, registry)
        store = store or plugins.pick("store", ec.store)(config)
        executor = executor or plugins.pick("executor", ec.executor)(config)
        scheduler = scheduler or plugins.pick("scheduler", ec.scheduler)(config)
        return cls(store, executor, scheduler, registry=registry, config=config, actor=actor)

    # ------------------------------------------------------------------ lifecycle
    def start(self, resume: bool | None = None) -> list[str]:
        """Start the loop and the executor; resume unfinished runs (``[engine] resume_on_start``).
        Returns the ids of resumed runs. An engine starts once: after ``stop`` make a new one."""
        with self._life:
            if self._state != "new":
                raise EngineError(f"this engine is {self._state}; an engine starts once")
            self._state = "running"
        self.executor.start(self._report)
        try:
            self.scheduler.learn_from(self.store)
        except Exception:  # noqa: BLE001 - a policy that cannot learn still schedules
            log.exception("the scheduling policy could not learn from the store")
        self._observers = _ObserverThread.maybe_start()
        self._thread = threading.Thread(target=self._loop, name="maze-engine", daemon=True)
        self._thread.start()
        self.sync_tools()
        if hasattr(self.registry, "subscribe"):
            self._registry_unsubscribe = self.registry.subscribe(self._on_tool_change)
        if resume if resume is not None else self.config.engine.resume_on_start:
            return self.resume().resumed
        return []

    def stop(self, wait: bool = True) -> None:
        """Stop the loop and the executor. Runs still active stay ``running`` in the log and are
        resumed by the next engine that starts on this store. ``wait=False`` does not wait for
        task bodies still running."""
        with self._life:
            if self._state == "running":
                self._state = "stopping"
                self._inbox.put(("stop",))   # the last message: nothing is posted after it
        if self._thread is None:
            return
        if self._registry_unsubscribe:
            self._registry_unsubscribe()
        self._thread.join()
        self._thread = None
        with self._life:
            if self._state == "stopping":
                self._state = "stopped"
        self.executor.shutdown(wait=wait)
        if self._observers:
            self._observers.stop()
        with self._cond:
            self._cond.notify_all()

    @property
    def state(self) -> str:
        """``new``, ``running``, ``stopping``, ``stopped`` or ``failed``."""
        return "failed" if self._failure is not None else self._state

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _require_running(self) -> None:
        if self._failure is not None:
            raise EngineError(f"the engine stopped after an error: {self._failure}")
        if self._state != "running":
            raise EngineError(f"the engine is {self._state}; call start() or use it as a context manager")

    def _post(self, msg: tuple) -> None:
        """Hand a caller's message to the loop, which will answer it: refused once the engine is
        stopping or failed, so that no caller ever waits for an answer that cannot come."""
        with self._life:
            self._require_running()
            self._inbox.put(msg)

    # ------------------------------------------------------------------ public API
    def submit(self, dag: Any, name: str | None = None, actor: str | None = None,
               workdir: str | None = None) -> str:
        """Validate ``dag`` (a ``maze_core.dag.DAG``), record it as a run and start it.

        ``workdir``: the run's own directory (a server's sandbox); executors that run task bodies
        in processes make it their working directory.

        Returns the run id once ``RunSubmitted`` is durable. Raises ``DAGValidationError`` listing
        every problem, before anything runs."""
        self._require_running()
        dag.validate(capacity_check=self._capacity_check, registry=self.registry)
        tasks: dict[str, dict[str, Any]] = {}
        blobs: dict[str, bytes] = {}
        funcs: dict[str, Callable[..., Any]] = {}
        pickled: dict[int, str] = {}
        problems = []
        for tid, node in dag.tasks.items():
            tool = self._registered_tool(node.func_name)
            if tool is not None and tool.func is node.func:
                func_ref, tool_version = None, tool.version
            else:
                func_ref = pickled.get(id(node.func))
                if func_ref is None:
                    try:
                        data = cloudpickle.dumps(node.func)
                    except Exception as exc:
                        problems.append(f"task {tid}: function {node.func_name!r} cannot be pickled: {exc}")
                        continue
                    func_ref = blob_hash(data)
                    blobs[func_ref] = data
                    funcs[func_ref] = node.func
                    pickled[id(node.func)] = func_ref
                tool_version = None
            try:
                text = compact_json(node.inputs)
                text.encode("utf-8")
                inputs = json.loads(text)
            except (TypeError, ValueError, RecursionError) as exc:
                problems.append(f"task {tid}: inputs are not JSON-serialisable ({exc}); pass file paths "
                                f"or JSON values")
                continue
            meta = node.meta
            retries = node.retries if node.retries is not None else meta.retries
            timeout = node.timeout if node.timeout is not None else meta.timeout
            tasks[tid] = {
                "func_name": node.func_name, "task_name": node.task_name, "func_ref": func_ref,
                "tool_version": tool_version, "dependencies": list(node.dependencies), "inputs": inputs,
                "resources": node.resources,
                "retries": self.config.engine.retries if retries is None else int(retries),
                "timeout": self.config.engine.default_timeout if timeout is None else float(timeout),
            }
        run_name = name if name is not None else dag.name
        if not isinstance(run_name, str) or _clean_text(run_name) != run_name:
            problems.append(f"run name must be text, got {run_name!r}")
        for tid, spec in tasks.items():   # what the log must hold (the server's door checked it too)
            problems += json_problems({k: spec[k] for k in ("task_name", "inputs", "resources")}, f"task {tid}")
        if problems:
            raise DAGValidationError("; ".join(problems), problems)
        run_id = str(uuid.uuid4())
        data = {"name": run_name, "tasks": tasks, "driver": self._driver}
        if workdir is not None:
            data["workdir"] = str(workdir)
        reply = _Reply()
        self._post(("submit", run_id, data, blobs, funcs, _clean_text(actor or self.actor), reply))
        reply.wait()
        return run_id

    def cancel(self, run_id: str, task_id: str | None = None, reason: str = "cancelled by user") -> list[str]:
        """Cancel one task (and skip what depends on it) or, without ``task_id``, the whole run.
        Returns the ids of the tasks cancelled. Running tasks are stopped best-effort."""
        reply = _Reply()
        self._post(("cancel", run_id, task_id, _clean_text(str(reason)), reply))
        return reply.wait()

    def resume(self, run_ids: Iterable[str] | None = None, force: bool = False) -> ResumeReport:
        """Take over unfinished runs from the log: fold each, re-dispatch tasks that were queued or
        running, and carry on.

        A run is left alone, with the reason in ``ResumeReport.skipped``, when the process that
        drives it is still alive on this host (unless ``force``), when one of its open tasks needs
        more than this engine's executor can ever provide, or when a task's function cannot be
        loaded here (say, its module is not importable in this process). Such runs stay unfinished
        in the log, for an engine that can take them."""
        self._require_running()
        explicit = run_ids is not None
        if run_ids is None:
            run_ids = [r["run_id"] for r in self._iter_runs("running")]
        report = ResumeReport()
        states, funcs = [], {}
        for run_id in run_ids:
            stream = self.store.read_stream(ev.run_stream(run_id))
            if not stream:
                raise NotFoundError(f"run {run_id!r} does not exist")
            try:
                state = RunState.from_events(run_id, stream)
            except Exception as exc:  # noqa: BLE001 - a run that cannot be folded fails alone
                reason = f"the run could not be resumed: its events cannot be folded: {type(exc).__name__}: {exc}"
                log.exception("run could not be resumed", run_id=run_id)
                reply = _Reply()
                self._post(("fail", run_id, stream[-1].version, reason, reply))
                reply.wait()
                report.skipped[run_id] = reason + " (marked failed)"
                continue
            if state.finished:
                if explicit:
                    report.skipped[run_id] = f"it has already {state.status}"
                continue
            reason = self._resume_obstacle(state, force, funcs)
            if reason is not None:
                report.skipped[run_id] = reason
                log.warning("run not resumed", run_id=run_id, reason=reason)
                continue
            states.append(state)
        if states:
            reply = _Reply()
            self._post(("resume", states, funcs, reply))
            report.resumed = reply.wait()
            for state in states:
                if state.run_id not in report.resumed:
                    report.skipped[state.run_id] = (
                        "this engine is already driving it" if state.run_id in self._runs
                        else "another process took it over first")
        return report

    def _resume_obstacle(self, state: RunState, force: bool, funcs: dict[str, Any]) -> str | None:
        if state.run_id in self._runs:
            return "this engine is already driving it"
        if not force and _driver_alive(state.driver):
            return (f"process {state.driver.get('pid')} on this host is still driving it "
                    f"(use force to take it over)")
        for tid, task in state.tasks.items():
            if task.status in TERMINAL:
                continue
            reason = self.executor.check(task.spec["resources"])
            if reason is not None:
                return f"task {tid}: {reason} (executor {self.executor.name!r})"
            ref = task.spec.get("func_ref")
            try:
                if ref is None:
                    tool = self._registered_tool(task.spec["func_name"])
                    if tool is None:
                        return f"task {tid}: tool {task.spec['func_name']!r} is not registered here"
                    recorded = task.spec.get("tool_version")
                    if not force and recorded is not None and str(tool.version) != recorded:
                        return (f"task {tid}: tool {task.spec['func_name']!r} is version {tool.version} "
                                f"here, the run used {recorded} (use force to run it anyway)")
                elif ref not in funcs and ref not in self._funcs:
                    funcs[ref] = cloudpickle.loads(self.store.get_blob(ref))
            except Exception as exc:
                return (f"task {tid}: cannot load function {task.spec['func_name']!r} here: "
                        f"{type(exc).__name__}: {exc}")
        return None

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run has finished; return its ``runs`` row (with ``task_counts``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._failure is not None:
                    raise EngineError(f"the engine stopped after an error: {self._failure}")
                stopped = self._state in ("stopping", "stopped")
                if stopped or run_id not in self._runs:  # finished, never ours, or no one drives it
                    row = self.store.get_run(run_id)
                    if row is None:
                        raise NotFoundError(f"run {run_id!r} does not exist")
                    if row["status"] in RUN_FINISHED:
                        return row
                    if stopped or self._state == "new":
                        raise EngineError(f"the engine is {self._state} and run {run_id} is "
                                          f"{row['status']}; resume it with a running engine")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"run {run_id} did not finish within {timeout}s")
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))

    def result(self, run_id: str, task_id: str) -> Any:
        """The value a finished task returned (decoded from the log or a blob)."""
        stream = self.store.read_stream(ev.run_stream(run_id))
        if not stream:
            raise NotFoundError(f"run {run_id!r} does not exist")
        for event in reversed(stream):
            if event.type == ev.TASK_SUCCEEDED and event.data["task_id"] == task_id:
                return results.decode(event.data.get("result"), event.data.get("result_ref"),
                                      self.store.get_blob)
        state = RunState.from_events(run_id, stream)
        if task_id not in state.tasks:
            raise NotFoundError(f"run {run_id} has no task {task_id!r}")
        raise RunStateError(f"task {task_id} of run {run_id} has no result: it is {state.tasks[task_id].status}")

    def subscribe(self, callback: Callable[[list[ev.Event]], None]) -> Callable[[], None]:
        """Call ``callback(events)`` on the engine thread after each commit. Keep it quick, and
        treat the events as read-only: their payloads are the engine's own."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def sync_tools(self) -> None:
        """Record the registry's tools as events where the log does not already say the same."""
        from .runtime import tool_sync_events
        new_events = tool_sync_events(self.store, self.registry, self.actor)
        if new_events:
            reply = _Reply()
            self._post(("tools", new_events, reply))
            reply.wait()

    # ------------------------------------------------------------------ helpers for callers
    def _iter_runs(self, status: str) -> Iterable[dict[str, Any]]:
        offset = 0
        while True:
            page = self.store.list_runs(status=status, limit=500, offset=offset)
            yield from page
            if len(page) < 500:
                return
            offset += 500

    def _registered_tool(self, name: str) -> Any:
        return self.registry.get(name) if name in self.registry else None

    def _capacity_check(self, task_id: str, resources: dict[str, Any]) -> str | None:
        reason = self.executor.check(resources)
        return None if reason is None else f"{reason} (executor {self.executor.name!r})"

    def _on_tool_change(self, change: str, entry: Any) -> None:
        """A registration or removal in the registry (any thread) becomes an event, appended by
        the loop like every other event, so observers see the log in order."""
        reply = _Reply()
        try:
            self._post(("tools", [tool_event(change, entry, self.actor)], reply))
        except EngineError:
            return  # stopping: the next engine's sync_tools records it
        if threading.current_thread() is not self._thread:
            reply.wait()  # the registration is durable when register_task returns

    def _report(self, update: TaskUpdate) -> None:
        self._inbox.put(("update", update))

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        try:
            while True:
                msgs = self._take()
                stop = False
                for msg in msgs:
                    if msg[0] == "stop":
                        stop = True
                    else:
                        self._handle(msg)
                self._fire_timers()
                if not stop:
                    self._dispatch()
                self._finish_runs()
                self._commit(force=stop)
                if stop:
                    return
        except BaseException as exc:  # persisting failed: nothing may run on an unrecorded state
            with self._life:
                self._failure = exc
                self._state = "failed"
            log.exception("engine loop stopped", error=str(exc))
            for reply, _ in self._replies:
                reply.set(error=EngineError(f"engine failed: {exc}"))
            self._drain_replies(exc)
            with self._cond:
                self._cond.notify_all()

    def _take(self) -> list[tuple]:
        timeout = None
        wake = [t for t in (self._timers[0][0] if self._timers else None, self._flush_at) if t is not None]
        if wake:
            timeout = min(LONGEST_SLEEP_S, max(0.0, min(wake) - time.monotonic()))
        try:
            msgs = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(msgs) < self._max_batch:
            try:
                msgs.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return msgs

    def _drain_replies(self, exc: BaseException) -> None:
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if msg and isinstance(msg[-1], _Reply):
                msg[-1].set(error=EngineError(f"engine failed: {exc}"))

    def _handle(self, msg: tuple) -> None:
        try:
            self._handle_one(msg)
        except Exception as exc:  # a bug or a poison value must cost one task, not the engine
            log.exception("engine could not handle a message", kind=msg[0])
            if msg[0] == "update":
                self._internal_failure(msg[1], exc)
            elif isinstance(msg[-1], _Reply):
                msg[-1].set(error=EngineError(f"{type(exc).__name__}: {exc}"))

    def _internal_failure(self, u: TaskUpdate, exc: Exception) -> None:
        state = self._runs.get(u.run_id)
        task = state.tasks.get(u.task_id) if state else None
        if task is not None and task.status not in TERMINAL:
            self._give_up(state, u.task_id, u.attempt, f"MazeInternalError: {type(exc).__name__}: {exc}",
                          tb_mod.format_exc(), u.duration_s)

    def _handle_one(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "update":
            self._on_update(msg[1])
        elif kind == "submit":
            _, run_id, data, blobs, funcs, actor, reply = msg
            state = RunState(run_id)
            self._runs[run_id] = state
            self._live[run_id] = {}
            self._remember_funcs(funcs)
            self._blobs.update(blobs)
            self.scheduler.plan(run_id, data["tasks"])   # the policy sees the DAG before its roots
            self._emit(state, ev.RUN_SUBMITTED, data, actor)
            self._replies.append((reply, run_id))
            log.info("run submitted", run_id=run_id, name=data["name"], tasks=len(data["tasks"]))
        elif kind == "cancel":
            _, run_id, task_id, reason, reply = msg
            try:
                self._replies.append((reply, self._cancel(run_id, task_id, reason)))
            except MazeError as exc:
                reply.set(error=exc)
        elif kind == "resume":
            _, states, funcs, reply = msg
            self._remember_funcs(funcs)
            # two callers may have folded the same run: only the first takes it
            resumed = []
            for state in states:
                if state.run_id in self._runs:
                    continue
                try:
                    resumed.append(self._resume(state))
                except Exception as exc:  # noqa: BLE001 - one run that cannot resume fails alone
                    log.exception("run could not be resumed", run_id=state.run_id)
                    stream = ev.run_stream(state.run_id)
                    self._batch = [(s, ne) for s, ne in self._batch if ne.stream != stream]
                    self._batch_streams.discard(stream)
                    self._forget_run(state.run_id)
                    self._record_failure(state.run_id, state.version,
                                         f"the run could not be resumed: {type(exc).__name__}: {exc}")
            self._replies.append((reply, resumed))
        elif kind == "fail":
            _, run_id, version, reason, reply = msg
            if run_id not in self._runs:
                self._record_failure(run_id, version, reason)
            self._replies.append((reply, None))
        elif kind == "tools":
            _, new_events, reply = msg
            for new in new_events:
                self._batch.append((None, new))
            self._urgent = True
            self._replies.append((reply, None))

    def _record_failure(self, run_id: str, version: int, reason: str) -> None:
        """``RunFailed`` for a run this engine does not drive, after its ``version``-th event."""
        new = NewEvent(ev.run_stream(run_id), ev.RUN_FAILED,
                       {"status": "failed", "error": _clean_text(reason), "failed_tasks": []}, self.actor)
        new.expected_version = version
        self._batch.append((None, new))
        self._batch_streams.add(new.stream)
        self._urgent = True

    # ------------------------------------------------------------------ events
    def _emit(self, state: RunState, type_: str, data: dict[str, Any], actor: str | None = None) -> None:
        if self._validate_events:
            ev.validate_event(type_, data)
        stream = ev.run_stream(state.run_id)
        new = NewEvent(stream, type_, data, actor or self.actor)
        if stream not in self._batch_streams:
            new.expected_version = state.version
            self._batch_streams.add(stream)
        self._batch.append((state, new))
        if type_ != ev.TASK_STARTED:
            self._urgent = True
        self._touched[state.run_id] = state
        task = state.tasks.get(data.get("task_id")) if "task_id" in data else None
        was_active = task is not None and task.status in ACTIVE
        for task_id in state.apply(type_, data):
            self._make_ready(state, task_id)
        if task is not None:
            self._active += (task.status in ACTIVE) - was_active

    def _make_ready(self, state: RunState, task_id: str) -> None:
        spec = state.tasks[task_id].spec
        self.scheduler.add(ReadyTask(state.run_id, task_id, spec["func_name"], spec["resources"],
                                     state.order, time.monotonic()))

    def _commit(self, force: bool = False) -> None:
        if self._batch and not (force or self._urgent or self._replies or self._to_submit):
            # only TaskStarted events: nothing waits on them, so hold them briefly to share a
            # transaction with the task's end or the next dispatch (one commit per task, not two)
            now = time.monotonic()
            if self._flush_at is None:
                self._flush_at = now + STARTED_FLUSH_DELAY
            if now < self._flush_at:
                return
        elif (self._batch and not (force or self._replies)
              and self._active - len(self._to_submit) >= GROUP_COMMIT_ACTIVE
              and len(self._batch) < self._max_batch):
            # group commit: with many tasks running in the executor their ends trickle in one by
            # one (a process executor reports each as it comes); a commit per end would cost more
            # than the tasks. Gathering them for a moment costs no throughput: the executor has
            # work meanwhile. (Tasks waiting in _to_submit do not count: they wait for this commit.)
            now = time.monotonic()
            due = now + GROUP_COMMIT_S
            if self._flush_at is None or self._flush_at > due:
                self._flush_at = due
            if now < self._flush_at:
                return
        self._flush_at = None
        self._urgent = False
        if self._batch:
            committed = self._append()
            for (state, _), event in zip(self._batch, committed, strict=True):
                if state is not None:
                    state.version = event.version
            self._batch, self._blobs = [], {}
            self._batch_streams.clear()
            self._notify(committed)
        for reply, value in self._replies:
            reply.set(value)
        self._replies = []
        if self._to_submit:
            invocations = []
            for inv in self._to_submit:   # one cancelled while the commit was held stays unsent
                state = self._runs.get(inv.run_id)
                task = state.tasks.get(inv.task_id) if state else None
                if task is not None and task.attempt == inv.attempt and task.status in ACTIVE:
                    invocations.append(inv)
                else:
                    self.executor.release(inv.resources, inv.grant)
            self._to_submit = []
            for inv, exc in self.executor.submit_many(invocations):
                self.executor.release(inv.resources, inv.grant)
                self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed",
                                        error=f"{type(exc).__name__}: executor refused the task: {exc}",
                                        traceback="".join(tb_mod.format_exception(exc))))

    def _append(self) -> list[ev.Event]:
        """Append the batch; returns its events as committed, ``self._batch`` left holding the
        entries they belong to (a run another process drives, or one whose events cannot be
        stored, is dropped from it)."""
        while True:
            try:
                return self.store.append([ne for _, ne in self._batch], self._blobs)
            except ConcurrencyError as exc:
                run_id = exc.stream[4:]
                log.error("another process is driving this run; leaving it", run_id=run_id,
                          expected=exc.expected, actual=exc.actual)
                self._forget_run(run_id)
                self._batch = [(s, ne) for s, ne in self._batch if ne.stream != exc.stream]
                if not self._batch:
                    return []
            except POISON as exc:
                # a value the store cannot take (text that is not UTF-8, a number JSON cannot
                # hold, nesting past the encoder's depth): it belongs to one run. Store the batch
                # stream by stream, and fail the run whose events cannot be stored
                log.error("a batch of events could not be stored; storing it run by run", error=repr(exc))
                return self._append_by_stream()

    def _append_by_stream(self) -> list[ev.Event]:
        groups: dict[str, list[tuple[RunState | None, NewEvent]]] = {}
        for entry in self._batch:
            groups.setdefault(entry[1].stream, []).append(entry)
        kept: list[tuple[RunState | None, NewEvent]] = []
        committed: list[ev.Event] = []
        blobs = self._blobs
        for stream, group in groups.items():
            try:
                done = self.store.append([ne for _, ne in group], blobs)
            except POISON as exc:
                failure = self._poisoned(stream, group, exc)
                if failure is None:
                    continue
                group, done = failure
            except ConcurrencyError as exc:
                log.error("another process is driving this run; leaving it", run_id=stream[4:],
                          expected=exc.expected, actual=exc.actual)
                self._forget_run(stream[4:])
                continue
            blobs = {}
            kept.extend(group)
            committed.extend(done)
        self._batch = kept
        return committed

    def _poisoned(self, stream: str, group: list[tuple[RunState | None, NewEvent]], exc: BaseException
                  ) -> tuple[list[tuple[None, NewEvent]], list[ev.Event]] | None:
        """The events of ``stream`` cannot be stored. A run that exists in the log is failed with
        the reason (its work stopped); a submission that cannot be recorded is refused to its
        caller; what is left of the batch goes on. Returns the entry and event recorded instead."""
        reason = f"MazeInternalError: an event of this run could not be stored: {type(exc).__name__}: {exc}"
        log.error("events could not be stored", stream=stream, error=repr(exc))
        if not stream.startswith("run:"):
            return None
        run_id = stream[4:]
        state = next((s for s, _ in group if s is not None), None) or self._runs.get(run_id)
        version = group[0][1].expected_version
        if version is None:
            version = state.version if state is not None else 0
        running = [(run_id, tid) for tid, t in state.tasks.items() if t.status in ACTIVE] if state else []
        self._forget_run(run_id, reason=f"the run could not be recorded: {type(exc).__name__}: {exc}")
        if running:
            self.executor.cancel_many(running)
        if version == 0:                       # nothing of it is in the log: the submitter hears why
            return None
        new = NewEvent(stream, ev.RUN_FAILED, {"status": "failed", "error": _clean_text(reason),
                                               "failed_tasks": []}, self.actor)
        new.expected_version = version
        try:
            return [(None, new)], self.store.append([new])
        except (ConcurrencyError, *POISON):
            log.exception("could not record the failure of a run", run_id=run_id)
            return None

    def _forget_run(self, run_id: str, reason: str = "") -> None:
        state = self._runs.pop(run_id, None)
        if state is not None:
            self._active -= sum(1 for t in state.tasks.values() if t.status in ACTIVE)
        self._live.pop(run_id, None)
        self._unserved.pop(run_id, None)
        self._touched.pop(run_id, None)
        keep = []
        for inv in self._to_submit:
            if inv.run_id == run_id:
                self.executor.release(inv.resources, inv.grant)
            else:
                keep.append(inv)
        self._to_submit = keep
        replies = []
        for reply, value in self._replies:
            if value == run_id:  # a submission (cannot happen: new ids) or a cancel of this run
                reply.set(error=RunStateError(reason or f"run {run_id} is being driven by another process"))
                continue
            if isinstance(value, list) and run_id in value:  # resume: report the others
                value = [v for v in value if v != run_id]
            replies.append((reply, value))
        self._replies = replies

    def _notify(self, committed: list[ev.Event]) -> None:
        if not committed:
            return
        ended = False
        for event in committed:
            self.scheduler.observe(event)
            if event.type in ev.RUN_TERMINAL:
                run_id = event.stream[4:]
                log.info("run finished", run_id=run_id, status=event.data.get("status"))
                self._runs.pop(run_id, None)
                self._live.pop(run_id, None)
                self._unserved.pop(run_id, None)
                ended = True
        for callback in list(self._subscribers):
            try:
                callback(committed)
            except Exception:
                log.exception("event subscriber failed")
        if self._observers:
            self._observers.put(committed)
        if ended:
            with self._cond:
                self._cond.notify_all()

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        if not len(self.scheduler):
            return
        grants: dict[int, list[Any]] = {}
        try_reserve = self.executor.try_reserve

        def reserve(resources: dict[str, Any]) -> bool:
            grant = try_reserve(resources)
            if grant:
                grants.setdefault(id(resources), []).append(grant)
            return bool(grant)

        for ready in self.scheduler.select(reserve):
            grant = grants[id(ready.resources)].pop(0)
            state = self._runs.get(ready.run_id)
            task = state.tasks.get(ready.task_id) if state else None
            if task is None or task.status not in (PENDING, RETRYING):
                self.executor.release(ready.resources, grant)
                continue
            spec = task.spec
            attempt = task.attempt + 1
            try:
                func = self._load_func(spec)
                kwargs, held = self._resolve_inputs(state, spec, attempt)
            except Exception as exc:
                self.executor.release(ready.resources, grant)
                self._emit(state, ev.TASK_QUEUED, {"task_id": ready.task_id, "attempt": attempt})
                self._give_up(state, ready.task_id, attempt, f"{type(exc).__name__}: {exc}",
                              tb_mod.format_exc(), None)
                continue
            self._emit(state, ev.TASK_QUEUED, {"task_id": ready.task_id, "attempt": attempt})
            if attempt == 1:
                self._served(state.run_id, spec.get("dependencies") or ())
            self._to_submit.append(Invocation(
                state.run_id, ready.task_id, attempt, func, kwargs, spec["resources"],
                spec.get("timeout"), spec["func_name"], grant, state.workdir, held))

    def _load_func(self, spec: dict[str, Any]) -> Callable[..., Any]:
        ref = spec.get("func_ref")
        if ref is None:
            tool = self._registered_tool(spec["func_name"])
            if tool is None:
                raise NotFoundError(f"tool {spec['func_name']!r} is not registered in this process")
            return tool.func
        func = self._funcs.get(ref)
        if func is None:
            func = cloudpickle.loads(self.store.get_blob(ref))
        self._remember_funcs({ref: func})
        return func

    def _remember_funcs(self, funcs: dict[str, Callable[..., Any]]) -> None:
        """Keep recently used functions (LRU); any other is loaded again from its blob. A function
        already known by its blob hash keeps its first object: the same bytes are the same code,
        and executors cache per function object (Ray exports each new one to the cluster)."""
        for ref, func in funcs.items():
            self._funcs.setdefault(ref, func)
            self._funcs.move_to_end(ref)
        while len(self._funcs) > FUNC_CACHE_SIZE:
            self._funcs.popitem(last=False)

    def _resolve_inputs(self, state: RunState, spec: dict[str, Any], attempt: int = 1
                        ) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The task's inputs with references resolved, and the executor's handles among them (a
        result the executor holds is passed as a ``Pick`` of it; a retry gets the logged value,
        in case the executor's copy is what failed)."""
        from .dag import resolve_inputs
        deps = spec.get("dependencies") or ()
        if not deps:  # each attempt gets its own copy: a task mutating its inputs changes nothing else
            return (spec["inputs"] if self._isolated else copy.deepcopy(spec["inputs"])), ()
        live = self._live.setdefault(state.run_id, {})
        outputs = {}
        held = []
        for dep in deps:
            value = live.get(dep, _MISSING)
            if value is not _MISSING and not (attempt > 1 and type(value) is Held):
                outputs[dep] = value
                if type(value) is Held:
                    held.append(value.handle)
                continue
            t = state.tasks[dep]
            outputs[dep] = results.decode(None if t.result is _MISSING else t.result,
                                          t.result_ref, self.store.get_blob)
            if value is _MISSING and self._unserved.get(state.run_id, {}).get(dep, 1) > 0:
                live[dep] = outputs[dep]   # after a resume: consumers may still come
        kwargs = resolve_inputs(spec["inputs"], state.tasks.keys(), outputs)
        if held:   # only the results the inputs pick from (not every dependency) travel
            picked: dict[Any, None] = {}

            def note(pick: Any) -> Any:
                picked[pick.handle] = None
                return pick

            kwargs = map_picks(kwargs, note)
            held = list(picked)
        return (kwargs if self._isolated else copy.deepcopy(kwargs)), tuple(held)

    def _served(self, run_id: str, deps: Iterable[str]) -> None:
        """A consumer of ``deps`` was dispatched for the first time: once every consumer of a
        result has been, the engine stops holding it (a retry decodes it from the log again)."""
        unserved = self._unserved.get(run_id)
        if unserved is None:
            return
        for dep in deps:
            if dep not in unserved:
                continue
            unserved[dep] = max(unserved[dep] - 1, 0)
            if unserved[dep] == 0:   # 0 stays: "served", so a retry's decode is not cached again
                self._live.get(run_id, {}).pop(dep, None)

    # ------------------------------------------------------------------ executor reports
    def _on_update(self, u: TaskUpdate) -> None:
        state = self._runs.get(u.run_id)
        task = state.tasks.get(u.task_id) if state else None
        if task is None or task.attempt != u.attempt or task.status not in ACTIVE:
            return  # a late report for an attempt that was cancelled, timed out or superseded
        if u.kind == "started":
            if task.status == QUEUED:
                self._emit(state, ev.TASK_STARTED, {"task_id": u.task_id, "attempt": u.attempt,
                                                    "worker": u.worker})
                timeout = task.spec.get("timeout")
                if timeout:
                    self._add_timer(time.monotonic() + timeout, "timeout", state.run_id, u.task_id,
                                    u.attempt)
            return
        if task.status == QUEUED:  # the executor skipped "started": record it for the audit trail
            self._emit(state, ev.TASK_STARTED, {"task_id": u.task_id, "attempt": u.attempt,
                                                "worker": u.worker})
        duration = round(u.duration_s or 0.0, 6)
        if u.kind == "succeeded":
            if u.encoded is not None:       # encoded where it ran
                fields, blobs = u.encoded
            else:
                try:
                    fields, blobs = results.encode(u.value, self._inline_limit)
                except results.ResultEncodingError as exc:
                    self._fail_attempt(state, u.task_id, u.attempt, f"ResultError: {exc}", None,
                                       duration, retryable=False)
                    return
            self._blobs.update(blobs)
            if task.children:  # kept for the consumers to come, not beyond: exactly what the log holds
                if self._holds and u.handle is not None and "result_ref" in fields:
                    kept: Any = Held(u.handle)   # large: the executor hands its copy on
                else:
                    kept = results.decode(fields.get("result"), fields.get("result_ref"),
                                          blobs.__getitem__)
                self._live.setdefault(state.run_id, {})[u.task_id] = kept
                self._unserved.setdefault(state.run_id, {})[u.task_id] = len(task.children)
            self._emit(state, ev.TASK_SUCCEEDED, {"task_id": u.task_id, "attempt": u.attempt,
                                                  "duration_s": duration, **fields})
        else:
            self._fail_attempt(state, u.task_id, u.attempt, _clean_text(u.error) or "failed",
                               _clean_text(u.traceback), duration, retryable=u.retryable,
                               free=u.lost_input)

    def _fail_attempt(self, state: RunState, task_id: str, attempt: int, error: str,
                      traceback: str | None, duration: float | None, retryable: bool = True,
                      free: bool = False) -> None:
        """``free``: the executor lost an upstream result it held for this attempt; the task is
        tried again whatever its retries (a retry takes its inputs from the log, so only the
        first attempt can fail this way)."""
        retries = int(state.tasks[task_id].spec.get("retries") or 0)
        if retryable and (attempt <= retries or (free and attempt == 1)):
            delay = min(self._backoff * (2 ** (attempt - 1)), self._backoff_max)
            self._emit(state, ev.TASK_RETRYING, {"task_id": task_id, "attempt": attempt, "error": error,
                                                 "traceback": traceback, "delay_s": delay})
            self._add_timer(time.monotonic() + delay, "retry", state.run_id, task_id, attempt)
            log.warning("task failed; retrying", run_id=state.run_id, task_id=task_id, attempt=attempt,
                        error=error, delay_s=delay)
            return
        self._give_up(state, task_id, attempt, error, traceback, duration)

    def _give_up(self, state: RunState, task_id: str, attempt: int, error: str, traceback: str | None,
                 duration: float | None) -> None:
        self._emit(state, ev.TASK_FAILED, {"task_id": task_id, "attempt": attempt, "error": error,
                                           "traceback": traceback, "duration_s": duration})
        log.warning("task failed", run_id=state.run_id, task_id=task_id, attempt=attempt, error=error)
        self._skip_downstream(state, task_id, f"upstream task {task_id} failed")

    def _skip_downstream(self, state: RunState, task_id: str, reason: str) -> None:
        for tid in state.descendants(task_id):
            if state.tasks[tid].status not in TERMINAL:
                self.scheduler.remove(state.run_id, tid)
                self._emit(state, ev.TASK_SKIPPED, {"task_id": tid, "reason": reason, "upstream": task_id})
                self._never_dispatched(state, tid)

    def _never_dispatched(self, state: RunState, task_id: str) -> None:
        """A task ended (skipped, cancelled) before its first dispatch: it will not consume its
        upstream results, so they are released as if it had."""
        task = state.tasks[task_id]
        if task.attempt == 0:
            self._served(state.run_id, task.spec.get("dependencies") or ())

    # ------------------------------------------------------------------ cancel and resume
    def _cancel(self, run_id: str, task_id: str | None, reason: str) -> list[str]:
        state = self._runs.get(run_id)
        if state is None:
            row = self.store.get_run(run_id)
            if row is None:
                raise NotFoundError(f"run {run_id!r} does not exist")
            if row["status"] in RUN_FINISHED:
                raise RunStateError(f"run {run_id} has already {row['status']}")
            raise RunStateError(f"run {run_id} is not driven by this engine; resume it first")
        if task_id is not None:
            task = state.tasks.get(task_id)
            if task is None:
                raise NotFoundError(f"run {run_id} has no task {task_id!r}")
            if task.status in TERMINAL:
                raise RunStateError(f"task {task_id} of run {run_id} has already {task.status}")
            targets = [task_id]
        else:
            targets = [tid for tid, t in state.tasks.items() if t.status not in TERMINAL]
        running = [(run_id, tid) for tid in targets if state.tasks[tid].status in ACTIVE]
        if running:
            self.executor.cancel_many(running)
        for tid in targets:
            task = state.tasks[tid]
            if task.status in TERMINAL:
                continue
            if task.status not in ACTIVE:
                self.scheduler.remove(run_id, tid)
            self._emit(state, ev.TASK_CANCELLED, {"task_id": tid, "reason": reason})
            self._never_dispatched(state, tid)
        if task_id is not None:
            self._skip_downstream(state, task_id, f"upstream task {task_id} was cancelled")
        log.info("cancelled", run_id=run_id, task_id=task_id, tasks=len(targets))
        return targets

    def _resume(self, state: RunState) -> str:
        self._runs[state.run_id] = state
        self._live[state.run_id] = {}
        requeued = [tid for tid, t in state.tasks.items() if t.status in ACTIVE]
        self._emit(state, ev.RUN_RESUMED, {"driver": self._driver, "requeued": requeued})
        requeued_set = set(requeued)
        for tid, t in state.tasks.items():
            if tid in requeued_set:
                if t.interruptions > self._max_interruptions:
                    # it keeps taking its process down (a segfault, the OOM killer): give up on it
                    self.scheduler.remove(state.run_id, tid)
                    self._give_up(state, tid, t.attempt + 1,
                                  f"WorkerLost: the process running task {tid} died "
                                  f"{t.interruptions} times while running it", None, None)
                continue
            if (t.status == PENDING and t.waiting == 0) or t.status == RETRYING:
                self._make_ready(state, tid)
        # consumers still to be dispatched, so that results are released after them
        self._unserved[state.run_id] = {
            tid: sum(1 for c in t.children if state.tasks[c].status in (PENDING, RETRYING)
                     and state.tasks[c].attempt == 0)
            for tid, t in state.tasks.items() if t.status == "succeeded" and t.children}
        log.info("run resumed", run_id=state.run_id, requeued=requeued, open=state.open)
        return state.run_id

    def _finish_runs(self) -> None:
        for state in self._touched.values():
            if state.status == "running" and state.open == 0:
                status, failed = state.outcome()
                error = None
                if failed:
                    first = state.tasks[failed[0]]
                    error = f"task {failed[0]} ({first.spec['func_name']}) failed: {first.error}"
                elif status == "failed":
                    error = "tasks were skipped"
                type_ = {"succeeded": ev.RUN_SUCCEEDED, "failed": ev.RUN_FAILED,
                         "cancelled": ev.RUN_CANCELLED}[status]
                self._emit(state, type_, {"status": status, "error": error, "failed_tasks": failed})
        self._touched = {}

    # ------------------------------------------------------------------ timers
    def _add_timer(self, when: float, kind: str, run_id: str, task_id: str, attempt: int) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_seq), kind, run_id, task_id, attempt))
        if len(self._timers) > self._timers_compact_at:
            # timeouts of tasks that finished long before their deadline pile up: drop them
            self._timers = [t for t in self._timers if self._timer_live(t)]
            heapq.heapify(self._timers)
            self._timers_compact_at = max(TIMERS_COMPACT_MIN, 2 * len(self._timers))

    def _timer_live(self, timer: tuple) -> bool:
        _, _, kind, run_id, task_id, attempt = timer
        state = self._runs.get(run_id)
        task = state.tasks.get(task_id) if state else None
        if task is None or task.attempt != attempt:
            return False
        return task.status == RETRYING if kind == "retry" else task.status in (QUEUED, RUNNING)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, run_id, task_id, attempt = heapq.heappop(self._timers)
            state = self._runs.get(run_id)
            task = state.tasks.get(task_id) if state else None
            if task is None or task.attempt != attempt:
                continue
            if kind == "retry" and task.status == RETRYING:
                self._make_ready(state, task_id)
            elif kind == "timeout" and task.status in (QUEUED, RUNNING):
                self.executor.cancel(run_id, task_id)
                limit = task.spec.get("timeout")
                self._fail_attempt(state, task_id, attempt,
                                   f"TimeoutError: task {task_id} ({task.spec['func_name']}) ran longer "
                                   f"than its timeout of {limit:g}s", None, limit)


class _ObserverThread:
    """Delivers committed events to ``on_event`` hook implementations without blocking the engine."""

    def __init__(self, hook: Any):
        self._hook = hook
        self._queue: queue.Queue[list[ev.Event] | None] = queue.Queue(maxsize=10000)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="maze-observers", daemon=True)
        self._thread.start()

    @classmethod
    def maybe_start(cls) -> _ObserverThread | None:
        from .plugins import load_plugins
        hook = load_plugins().hook.on_event
        return cls(hook) if hook.get_hookimpls() else None

    def put(self, events: list[ev.Event]) -> None:
        # observers run on their own thread: they get copies, never the engine's own payloads
        events = [e._replace(data=copy.deepcopy(e.data)) for e in events]
        try:
            self._queue.put_nowait(events)
        except queue.Full:
            if self.dropped == 0:
                log.warning("on_event observers fall behind; events are dropped for them")
            self.dropped += len(events)

    def _run(self) -> None:
        while (events := self._queue.get()) is not None:
            for event in events:
                try:
                    self._hook(event=event)
                except Exception:
                    log.exception("on_event observer failed", seq=event.seq)

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._thread.join(timeout=5)
