"""The runs this engine drives: their state, and the events that move them.

Owned by the loop thread. Every change is an event, made with ``emit``: it joins the commit
batch and is applied to the run's ``RunState`` at once, so the state always equals the fold of
the events (committed or about to be). Tasks that become ready go to the scheduling policy;
the dispatcher takes them from there."""

from __future__ import annotations

import time
import traceback as tb_mod
from collections.abc import Callable
from typing import Any

from .. import events as ev
from ..errors import NotFoundError, RunStateError
from ..events import NewEvent, clean_text
from ..executor import Executor, Invocation, TaskUpdate
from ..logging import get_logger
from ..results import ResultEncodingError, encode
from ..scheduler import ReadyTask, Scheduler
from ..state import ACTIVE, QUEUED, RETRYING, RUN_FINISHED, RUNNING, TERMINAL, RunState
from ..store import EventStore
from . import resume
from .commits import CommitBatch, Entry, Recorded
from .dispatch import FunctionCache
from .messages import Submit
from .retention import ResultRetention
from .timers import RETRY, TIMEOUT, Timers

log = get_logger("maze.engine")

RUN_END_EVENT = {"succeeded": ev.RUN_SUCCEEDED, "failed": ev.RUN_FAILED, "cancelled": ev.RUN_CANCELLED}


class Runs:
    """Run states (``states``), the attempts in flight (``active``), and the parts of a turn
    that belong to them: the commit batch, result retention, timers, attempts to send."""

    def __init__(self, *, store: EventStore, executor: Executor, scheduler: Scheduler,
                 funcs: FunctionCache, actor: str, process: dict[str, Any], config: Any):
        self.store, self.executor, self.scheduler = store, executor, scheduler
        self.funcs = funcs
        self.actor = actor
        self.process = process    # this process, as the driver recorded in RunResumed
        ec = config.engine
        self._backoff, self._backoff_max = ec.retry_backoff, ec.retry_backoff_max
        self._inline_limit = ec.inline_result_limit
        self._max_interruptions = ec.max_interruptions
        self._validate_events = ec.validate_events
        self.states: dict[str, RunState] = {}
        self.active = 0                                 # attempts queued or running, all runs
        self.changed_this_turn: dict[str, RunState] = {}   # runs that got events this turn
        self.unsent: list[Invocation] = []             # queued attempts waiting for the commit
        self.batch = CommitBatch(store, ec.max_batch, self.forget, self.unstorable)
        self.retention = ResultRetention(store.get_blob, bool(getattr(executor, "isolates_inputs", False)),
                                         bool(getattr(executor, "holds_results", False)))
        self.timers = Timers(self._timer_still_due)

    # ------------------------------------------------------------------ events
    def emit(self, state: RunState, type_: str, data: dict[str, Any], actor: str | None = None) -> None:
        if self._validate_events:
            ev.validate_event(type_, data)
        self.batch.add_run_event(state, NewEvent(ev.run_stream(state.run_id), type_, data, actor or self.actor))
        self.changed_this_turn[state.run_id] = state
        task = state.tasks.get(data.get("task_id")) if "task_id" in data else None
        was_active = task is not None and task.status in ACTIVE
        for task_id in state.apply(type_, data):
            self.make_ready(state, task_id)
        if task is not None:
            self.active += (task.status in ACTIVE) - was_active

    def make_ready(self, state: RunState, task_id: str) -> None:
        spec = state.tasks[task_id].spec
        self.scheduler.add(ReadyTask(state.run_id, task_id, spec["func_name"], spec["resources"],
                                     state.order, time.monotonic()))

    def record(self, events: list[NewEvent]) -> Recorded:
        """Events made outside the engine; never those of a run this engine drives (it records
        its runs' events itself, in order with their state)."""
        for new in events:
            run_id = ev.stream_run_id(new.stream)
            if run_id is not None and run_id in self.states:
                raise RunStateError(f"run {run_id} is driven by this engine, which records its events itself")
        return self.batch.add_recorded(events)

    # ------------------------------------------------------------------ callers' messages
    def submit(self, msg: Submit) -> None:
        state = RunState(msg.run_id)
        self.states[msg.run_id] = state
        self.retention.open(msg.run_id)
        self.funcs.remember(msg.funcs)
        self.batch.blobs.update(msg.blobs)
        self.scheduler.plan(msg.run_id, msg.data["tasks"])   # the policy sees the DAG before its roots
        self.emit(state, ev.RUN_SUBMITTED, msg.data, msg.actor)
        log.info("run submitted", run_id=msg.run_id, name=msg.data["name"], tasks=len(msg.data["tasks"]))

    def cancel(self, run_id: str, task_id: str | None, reason: str) -> list[str]:
        state = self.states.get(run_id)
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
            self.emit(state, ev.TASK_CANCELLED, {"task_id": tid, "reason": reason})
            self._never_dispatched(state, tid)
        if task_id is not None:
            self._skip_downstream(state, task_id, f"upstream task {task_id} was cancelled")
        log.info("cancelled", run_id=run_id, task_id=task_id, tasks=len(targets))
        return targets

    def resume(self, states: list[RunState], funcs: dict[str, Callable[..., Any]]) -> list[str]:
        """Take over runs folded from the log (``funcs``: the functions the planner loaded); two
        callers may have folded the same run: only the first takes it. Returns the runs taken."""
        self.funcs.remember(funcs)
        resumed = []
        for state in states:
            if state.run_id in self.states:
                continue
            try:
                self._take_over(state)
                resumed.append(state.run_id)
            except Exception as exc:  # noqa: BLE001 - one run that cannot resume fails alone
                log.exception("run could not be resumed", run_id=state.run_id)
                self.batch.drop_stream(ev.run_stream(state.run_id))
                self.forget(state.run_id)
                self.record_failure(state.run_id, state.version,
                                    f"the run could not be resumed: {type(exc).__name__}: {exc}")
        return resumed

    def _take_over(self, state: RunState) -> None:
        self.states[state.run_id] = state
        self.retention.open(state.run_id)
        requeued = [tid for tid, t in state.tasks.items() if t.status in ACTIVE]
        self.emit(state, ev.RUN_RESUMED, {"driver": self.process, "requeued": requeued})
        for tid, action in resume.takeover(state, set(requeued), self._max_interruptions):
            if action == resume.READY:
                self.make_ready(state, tid)
                continue
            # it keeps taking its process down (a segfault, the OOM killer): give up on it
            t = state.tasks[tid]
            self.scheduler.remove(state.run_id, tid)
            self.give_up(state, tid, t.attempt + 1,
                         f"WorkerLost: the process running task {tid} died "
                         f"{t.interruptions} times while running it", None, None)
        # consumers still to be dispatched, so that results are released after them
        self.retention.expect(state.run_id, resume.consumers_to_come(state))
        log.info("run resumed", run_id=state.run_id, requeued=requeued, open=state.open)

    def record_failure(self, run_id: str, version: int, reason: str) -> None:
        """``RunFailed`` for a run this engine does not drive, after its ``version``-th event."""
        new = NewEvent(ev.run_stream(run_id), ev.RUN_FAILED,
                       {"status": "failed", "error": clean_text(reason), "failed_tasks": []}, self.actor)
        new.expected_version = version
        self.batch.add_checked(new)

    # ------------------------------------------------------------------ executor reports
    def on_update(self, u: TaskUpdate) -> None:
        state = self.states.get(u.run_id)
        task = state.tasks.get(u.task_id) if state else None
        if task is None or task.attempt != u.attempt or task.status not in ACTIVE:
            return  # a late report for an attempt that was cancelled, timed out or superseded
        if u.kind == "started":
            if task.status == QUEUED:
                self.emit(state, ev.TASK_STARTED, {"task_id": u.task_id, "attempt": u.attempt,
                                                   "worker": u.worker})
                timeout = task.spec.get("timeout")
                if timeout:
                    self.timers.add(time.monotonic() + timeout, TIMEOUT, state.run_id, u.task_id, u.attempt)
            return
        if task.status == QUEUED:  # the executor skipped "started": record it for the audit trail
            self.emit(state, ev.TASK_STARTED, {"task_id": u.task_id, "attempt": u.attempt,
                                               "worker": u.worker})
        duration = round(u.duration_s or 0.0, 6)
        if u.kind == "succeeded":
            if u.encoded is not None:       # encoded where it ran
                fields, blobs = u.encoded
            else:
                try:
                    fields, blobs = encode(u.value, self._inline_limit)
                except ResultEncodingError as exc:
                    self.fail_attempt(state, u.task_id, u.attempt, f"ResultError: {exc}", None,
                                      duration, retryable=False)
                    return
            self.batch.blobs.update(blobs)
            if task.children:  # kept for the consumers to come, not beyond: exactly what the log holds
                self.retention.keep(state.run_id, u.task_id, fields, blobs, u.handle, len(task.children))
            self.emit(state, ev.TASK_SUCCEEDED, {"task_id": u.task_id, "attempt": u.attempt,
                                                 "duration_s": duration, **fields})
        else:
            self.fail_attempt(state, u.task_id, u.attempt, clean_text(u.error) or "failed",
                              clean_text(u.traceback), duration, retryable=u.retryable,
                              lost_input=u.lost_input)

    def internal_failure(self, u: TaskUpdate, exc: Exception) -> None:
        """Handling a report failed (a bug, a poison value): it costs the task, not the engine."""
        state = self.states.get(u.run_id)
        task = state.tasks.get(u.task_id) if state else None
        if task is not None and task.status not in TERMINAL:
            self.give_up(state, u.task_id, u.attempt, f"MazeInternalError: {type(exc).__name__}: {exc}",
                         tb_mod.format_exc(), u.duration_s)

    def fail_attempt(self, state: RunState, task_id: str, attempt: int, error: str,
                     traceback: str | None, duration: float | None, retryable: bool = True,
                     lost_input: bool = False) -> None:
        """``lost_input``: the executor lost an upstream result it held for this attempt; the
        task is tried again whatever its retries (a retry takes its inputs from the log, so only
        the first attempt can fail this way)."""
        retries = int(state.tasks[task_id].spec.get("retries") or 0)
        if retryable and (attempt <= retries or (lost_input and attempt == 1)):
            delay = min(self._backoff * (2 ** (attempt - 1)), self._backoff_max)
            self.emit(state, ev.TASK_RETRYING, {"task_id": task_id, "attempt": attempt, "error": error,
                                                "traceback": traceback, "delay_s": delay})
            self.timers.add(time.monotonic() + delay, RETRY, state.run_id, task_id, attempt)
            log.warning("task failed; retrying", run_id=state.run_id, task_id=task_id, attempt=attempt,
                        error=error, delay_s=delay)
            return
        self.give_up(state, task_id, attempt, error, traceback, duration)

    def give_up(self, state: RunState, task_id: str, attempt: int, error: str, traceback: str | None,
                duration: float | None) -> None:
        self.emit(state, ev.TASK_FAILED, {"task_id": task_id, "attempt": attempt, "error": error,
                                          "traceback": traceback, "duration_s": duration})
        log.warning("task failed", run_id=state.run_id, task_id=task_id, attempt=attempt, error=error)
        self._skip_downstream(state, task_id, f"upstream task {task_id} failed")

    def _skip_downstream(self, state: RunState, task_id: str, reason: str) -> None:
        for tid in state.descendants(task_id):
            if state.tasks[tid].status not in TERMINAL:
                self.scheduler.remove(state.run_id, tid)
                self.emit(state, ev.TASK_SKIPPED, {"task_id": tid, "reason": reason, "upstream": task_id})
                self._never_dispatched(state, tid)

    def _never_dispatched(self, state: RunState, task_id: str) -> None:
        """A task ended (skipped, cancelled) before its first dispatch: it will not consume its
        upstream results, so they are released as if it had."""
        task = state.tasks[task_id]
        if task.attempt == 0:
            self.retention.served(state.run_id, task.spec.get("dependencies") or ())

    # ------------------------------------------------------------------ timers
    def _timer_still_due(self, kind: str, run_id: str, task_id: str, attempt: int) -> bool:
        state = self.states.get(run_id)
        task = state.tasks.get(task_id) if state else None
        if task is None or task.attempt != attempt:
            return False
        return task.status == RETRYING if kind == RETRY else task.status in (QUEUED, RUNNING)

    def fire_timers(self) -> None:
        for kind, run_id, task_id, attempt in self.timers.pop_due(time.monotonic()):
            state = self.states.get(run_id)
            task = state.tasks.get(task_id) if state else None
            if task is None or task.attempt != attempt:
                continue
            if kind == RETRY and task.status == RETRYING:
                self.make_ready(state, task_id)
            elif kind == TIMEOUT and task.status in (QUEUED, RUNNING):
                self.executor.cancel(run_id, task_id)
                limit = task.spec.get("timeout")
                self.fail_attempt(state, task_id, attempt,
                                  f"TimeoutError: task {task_id} ({task.spec['func_name']}) ran longer "
                                  f"than its timeout of {limit:g}s", None, limit)

    # ------------------------------------------------------------------ ends
    def finish_runs(self) -> None:
        """End every run that got events this turn and has no open task left."""
        for state in self.changed_this_turn.values():
            if state.status == "running" and state.open == 0:
                status, failed = state.outcome()
                error = None
                if failed:
                    first = state.tasks[failed[0]]
                    error = f"task {failed[0]} ({first.spec['func_name']}) failed: {first.error}"
                elif status == "failed":
                    error = "tasks were skipped"
                self.emit(state, RUN_END_EVENT[status], {"status": status, "error": error,
                                                         "failed_tasks": failed})
        self.changed_this_turn = {}

    def ended(self, event: ev.Event) -> None:
        """A run's end was committed: this engine stops driving it."""
        run_id = event.run_id
        log.info("run finished", run_id=run_id, status=event.data.get("status"))
        self.states.pop(run_id, None)
        self.retention.forget(run_id)

    def forget(self, run_id: str, reason: str = "") -> None:
        """Stop driving a run at once (another process drives it, or it cannot be recorded):
        its unsent attempts are released, and a caller waiting on it hears why."""
        state = self.states.pop(run_id, None)
        if state is not None:
            self.active -= sum(1 for t in state.tasks.values() if t.status in ACTIVE)
        self.retention.forget(run_id)
        self.changed_this_turn.pop(run_id, None)
        keep = []
        for inv in self.unsent:
            if inv.run_id == run_id:
                self.executor.release(inv.resources, inv.grant)
            else:
                keep.append(inv)
        self.unsent = keep
        answers = []
        for reply, value in self.batch.answers:
            if value == run_id:  # a submission (cannot happen: new ids) or a cancel of this run
                reply.set(error=RunStateError(reason or f"run {run_id} is being driven by another process"))
                continue
            if isinstance(value, list) and run_id in value:  # resume: report the others
                value = [v for v in value if v != run_id]
            answers.append((reply, value))
        self.batch.answers = answers

    def unstorable(self, stream: str, group: list[Entry], exc: BaseException) -> NewEvent | None:
        """The events of ``stream`` cannot be stored. A run that exists in the log is failed with
        the reason (its work stopped); a submission that cannot be recorded is refused to its
        caller; what is left of the batch goes on. Returns the event to record instead."""
        reason = f"MazeInternalError: an event of this run could not be stored: {type(exc).__name__}: {exc}"
        log.error("events could not be stored", stream=stream, error=repr(exc))
        run_id = ev.stream_run_id(stream)
        if run_id is None:
            return None
        state = next((s for s, _ in group if s is not None), None) or self.states.get(run_id)
        version = group[0][1].expected_version
        if version is None:
            version = state.version if state is not None else 0
        running = [(run_id, tid) for tid, t in state.tasks.items() if t.status in ACTIVE] if state else []
        self.forget(run_id, reason=f"the run could not be recorded: {type(exc).__name__}: {exc}")
        if running:
            self.executor.cancel_many(running)
        if version == 0:                       # nothing of it is in the log: the submitter hears why
            return None
        new = NewEvent(stream, ev.RUN_FAILED, {"status": "failed", "error": clean_text(reason),
                                               "failed_tasks": []}, self.actor)
        new.expected_version = version
        return new
