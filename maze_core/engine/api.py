"""``Engine``: the public face of the engine. Its lifecycle, and the calls of its users, each a
message to the loop thread (which owns every run) answered once what it changed is committed."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import events as ev
from .. import results
from ..config import MazeConfig, load_config
from ..errors import DAGValidationError, NotFoundError
from ..events import NewEvent, clean_text
from ..executor import Executor, TaskUpdate
from ..logging import ensure_logging, get_logger
from ..scheduler import Scheduler
from ..state import RUN_FINISHED, RunState
from ..store import EventStore, blob_hash
from ..tools import tool_event
from . import resume as planner
from .compiler import compile_dag
from .dispatch import Dispatcher, FunctionCache
from .loop import Loop
from .messages import (
    Cancel,
    EngineError,
    EngineStats,
    Inspect,
    MarkFailed,
    Record,
    Reply,
    Resume,
    Stop,
    Submit,
)
from .observers import ObserverThread, Subscribers
from .resume import ResumeReport
from .runs import Runs

log = get_logger("maze.engine")


class Engine:
    """Runs workflows. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, store: EventStore, executor: Executor, scheduler: Scheduler,
                 registry: Any = None, config: MazeConfig | None = None, actor: str = "local"):
        if registry is None:
            from ..registry import task_registry as registry
        self.store, self.executor, self.scheduler, self.registry = store, executor, scheduler, registry
        self.config = config or MazeConfig()
        self.actor = actor
        self._process = planner.this_process()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._funcs = FunctionCache()
        self._runs = Runs(store=store, executor=executor, scheduler=scheduler, funcs=self._funcs,
                          actor=actor, process=self._process, config=self.config)
        self._subscribers = Subscribers()
        self._loop = Loop(self._inbox, self._runs,
                          Dispatcher(self._runs, scheduler, executor, self._funcs, self._registered_tool,
                                     store.get_blob, self._report),
                          scheduler, self._subscribers, self._loop_failed, self._wake_waiters)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._life = threading.Lock()     # guards _state and every post to the inbox
        self._state = "new"               # new -> running -> stopping -> stopped | failed
        self._registry_unsubscribe: Callable[[], None] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: MazeConfig | None = None, *, executor: Executor | None = None,
                    store: EventStore | None = None, scheduler: Scheduler | None = None,
                    registry: Any = None, actor: str = "local") -> Engine:
        """Build an engine from the plugins named in ``[engine]``."""
        from .. import plugins
        config = config or load_config()
        ensure_logging(config.logging.level, config.logging.format)
        ec = config.engine
        if registry is None:
            from ..registry import task_registry as registry
            from ..tools import load_tools
            load_tools(config, registry)
        store = store or plugins.pick("store", ec.store)(config)
        executor = executor or plugins.pick("executor", ec.executor)(config)
        scheduler = scheduler or plugins.pick("scheduler", ec.scheduler)(config)
        return cls(store, executor, scheduler, registry=registry, config=config, actor=actor)

    # ------------------------------------------------------------------ lifecycle
    def start(self, resume: bool | None = None, *, follow_registry: bool = True) -> list[str]:
        """Start the loop and the executor; resume unfinished runs (``[engine] resume_on_start``).
        Returns the ids of resumed runs. An engine starts once: after ``stop`` make a new one.

        ``follow_registry``: record the registry's tools where the log does not say the same, and
        each registration or removal as it happens. ``False`` for an engine that only records
        what it is given (``maze tools reload`` in a process of its own)."""
        with self._life:
            if self._state != "new":
                raise EngineError(f"this engine is {self._state}; an engine starts once")
            self._state = "running"
        self.executor.start(self._report)
        try:
            self.scheduler.learn_from(self.store)
        except Exception:  # noqa: BLE001 - a policy that cannot learn still schedules
            log.exception("the scheduling policy could not learn from the store")
        self._loop.observers = ObserverThread.maybe_start()
        self._thread = threading.Thread(target=self._loop.run, name="maze-engine", daemon=True)
        self._thread.start()
        if follow_registry:
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
                self._inbox.put(Stop())   # the last message: nothing is posted after it
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
        if self._loop.observers:
            self._loop.observers.stop()
        self._wake_waiters()

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

    def _post(self, msg: Any) -> None:
        """Hand a caller's message to the loop, which will answer it: refused once the engine is
        stopping or failed, so that no caller ever waits for an answer that cannot come."""
        with self._life:
            self._require_running()
            self._inbox.put(msg)

    def _loop_failed(self, exc: BaseException) -> None:
        with self._life:
            self._failure = exc
            self._state = "failed"

    def _wake_waiters(self) -> None:
        with self._cond:
            self._cond.notify_all()

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
        ec = self.config.engine
        run = compile_dag(dag, registered_tool=self._registered_tool, default_retries=ec.retries,
                          default_timeout=ec.default_timeout, name=name if name is not None else dag.name,
                          process=self._process, workdir=workdir)
        if run.problems:
            raise DAGValidationError("; ".join(run.problems), run.problems)
        run_id = str(uuid.uuid4())
        reply = Reply()
        self._post(Submit(run_id, run.data, run.blobs, run.funcs, clean_text(actor or self.actor), reply))
        reply.wait()
        return run_id

    def cancel(self, run_id: str, task_id: str | None = None, reason: str = "cancelled by user") -> list[str]:
        """Cancel one task (and skip what depends on it) or, without ``task_id``, the whole run.
        Returns the ids of the tasks cancelled. Running tasks are stopped best-effort."""
        reply = Reply()
        self._post(Cancel(run_id, task_id, clean_text(str(reason)), reply))
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
                reply = Reply()
                self._post(MarkFailed(run_id, stream[-1].version, reason, reply))
                reply.wait()
                report.skipped[run_id] = reason + " (marked failed)"
                continue
            if state.finished:
                if explicit:
                    report.skipped[run_id] = f"it has already {state.status}"
                continue
            if state.run_id in self._runs.states:
                reason = "this engine is already driving it"
            else:
                reason = planner.obstacle(state, force=force, executor=self.executor,
                                          registered_tool=self._registered_tool, known_funcs=self._funcs,
                                          get_blob=self.store.get_blob, funcs=funcs)
            if reason is not None:
                report.skipped[run_id] = reason
                log.warning("run not resumed", run_id=run_id, reason=reason)
                continue
            states.append(state)
        if states:
            reply = Reply()
            self._post(Resume(states, funcs, reply))
            report.resumed = reply.wait()
            for state in states:
                if state.run_id not in report.resumed:
                    report.skipped[state.run_id] = (
                        "this engine is already driving it" if state.run_id in self._runs.states
                        else "another process took it over first")
        return report

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run has finished; return its ``runs`` row (with ``task_counts``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._failure is not None:
                    raise EngineError(f"the engine stopped after an error: {self._failure}")
                stopped = self._state in ("stopping", "stopped")
                if stopped or run_id not in self._runs.states:  # finished, never ours, or no one drives it
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
        """The value a finished task returned (decoded from the log or a blob): the read model's
        ``queries.task_result``, which the CLI and the API use too."""
        from .. import queries
        return queries.task_result(self.store, run_id, task_id, results.decode)

    def subscribe(self, callback: Callable[[list[ev.Event]], None]) -> Callable[[], None]:
        """Call ``callback(events)`` on the engine thread after each commit. Keep it quick, and
        treat the events as read-only: their payloads are the engine's own."""
        return self._subscribers.add(callback)

    def record(self, events: Iterable[NewEvent], blobs: Mapping[str, bytes] | None = None) -> list[ev.Event]:
        """Append events that the engine does not make itself: the one door into the log for
        routes, commands and plugins. Each is checked against its model (``events.py``), then
        the loop appends them in its next commit, in order, and projections, ``on_event``
        observers and subscribers see them like every other event. Returns them as committed.
        ``blobs`` (``{blob_hash(data): data}``, content addressed: a key that is not its bytes'
        hash raises ``ValueError``) are stored in the same append as the events.

        Refused (``RunStateError``) for a run this engine drives; a stale ``expected_version``
        raises ``ConcurrencyError`` and records nothing of that stream. Not from the engine
        thread (a subscriber): it would wait on itself."""
        events = list(events)
        for new in events:
            ev.validate_event(new.type, new.data)
        blobs = dict(blobs or {})
        for digest, data in blobs.items():
            if blob_hash(data) != digest:
                raise ValueError(f"blob {digest!r} is not the hash of its bytes (blobs are content addressed)")
        if not events:
            return []
        if threading.current_thread() is self._thread:
            raise EngineError("Engine.record cannot be called on the engine thread (from a subscriber)")
        reply = Reply()
        self._post(Record(events, reply, blobs))
        return reply.wait()

    def sync_tools(self) -> None:
        """Record the registry's tools as events where the log does not already say the same."""
        from ..tools import tool_sync_events
        self.record(tool_sync_events(self.store, self.registry, self.actor))

    def stats(self) -> EngineStats:
        """What the engine holds now: runs, attempts in flight, results kept, timers, subscribers."""
        if threading.current_thread() is not self._thread:
            reply = Reply()
            with self._life:
                posted = self._state == "running" and self._failure is None
                if posted:
                    self._inbox.put(Inspect(reply))
            if posted:
                return reply.wait()
            thread = self._thread
            if thread is not None:
                thread.join()   # stopping or failed: the loop is about to end
        return self._loop.stats()

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
        new = tool_event(change, entry, self.actor)
        reply = Reply()
        try:
            self._post(Record([new], reply))
        except EngineError:
            return  # stopping: the next engine's sync_tools records it
        if threading.current_thread() is not self._thread:
            reply.wait()  # the registration is durable when register_task returns

    def _report(self, update: TaskUpdate) -> None:
        self._inbox.put(update)
