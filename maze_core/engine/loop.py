"""The engine loop: the one thread that owns run state. It receives messages and hands each to
its handler; then, once per turn, it fires due timers, dispatches ready tasks, ends finished
runs, and commits the turn's events, publishing them and answering callers. Work reaches the
executor only after the commit that queued it, so a crash at any point leaves a log from which
``resume`` finishes every run."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

from .. import events as ev
from ..errors import MazeError
from ..executor import TaskUpdate
from ..logging import get_logger
from ..scheduler import Scheduler
from .dispatch import Dispatcher
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
from .runs import Runs

log = get_logger("maze.engine")

LONGEST_SLEEP_S = 3600.0     # the loop wakes at least this often (a far timer must not overflow a wait)


class Loop:
    """``run`` is the body of the engine thread. ``failed(exc)``: the loop stopped on an error
    (the engine refuses callers from then on); ``runs_ended()``: wake those who wait on runs."""

    def __init__(self, inbox: queue.SimpleQueue[Any], runs: Runs, dispatcher: Dispatcher,
                 scheduler: Scheduler, subscribers: Subscribers, failed: Callable[[BaseException], None],
                 runs_ended: Callable[[], None]):
        self._inbox = inbox
        self._runs = runs
        self._dispatcher = dispatcher
        self._scheduler = scheduler
        self._subscribers = subscribers
        self._failed = failed
        self._runs_ended = runs_ended
        self.observers: ObserverThread | None = None
        self._max_batch = runs.batch.max_batch
        self._handlers: dict[type, Callable[[Any], None]] = {
            TaskUpdate: runs.on_update, Submit: self._submit, Cancel: self._cancel, Resume: self._resume,
            MarkFailed: self._mark_failed, Record: self._record, Inspect: self._inspect}

    # ------------------------------------------------------------------ the thread
    def run(self) -> None:
        runs, dispatcher = self._runs, self._dispatcher
        try:
            while True:
                stop = False
                for msg in self._take():
                    if type(msg) is Stop:
                        stop = True
                    else:
                        self._handle(msg)
                runs.fire_timers()
                if not stop:
                    dispatcher.dispatch()
                runs.finish_runs()
                self._commit(force=stop)
                if stop:
                    return
        except BaseException as exc:  # persisting failed: nothing may run on an unrecorded state
            self._failed(exc)
            log.exception("engine loop stopped", error=str(exc))
            for reply, _ in runs.batch.answers:
                reply.set(error=EngineError(f"engine failed: {exc}"))
            self._drain_replies(exc)
            self._runs_ended()

    def _take(self) -> list[Any]:
        timeout = None
        wake = [t for t in (self._runs.timers.next_at(), self._runs.batch.flush_at) if t is not None]
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
            reply = getattr(msg, "reply", None)
            if isinstance(reply, Reply):
                reply.set(error=EngineError(f"engine failed: {exc}"))

    # ------------------------------------------------------------------ messages
    def _handle(self, msg: Any) -> None:
        try:
            self._handlers[type(msg)](msg)
        except Exception as exc:  # a bug or a poison value must cost one task, not the engine
            log.exception("engine could not handle a message", kind=type(msg).__name__)
            if type(msg) is TaskUpdate:
                self._runs.internal_failure(msg, exc)
            elif isinstance(getattr(msg, "reply", None), Reply):
                msg.reply.set(error=EngineError(f"{type(exc).__name__}: {exc}"))

    def _submit(self, msg: Submit) -> None:
        self._runs.submit(msg)
        self._runs.batch.answer(msg.reply, msg.run_id)

    def _cancel(self, msg: Cancel) -> None:
        try:
            self._runs.batch.answer(msg.reply, self._runs.cancel(msg.run_id, msg.task_id, msg.reason))
        except MazeError as exc:
            msg.reply.set(error=exc)

    def _resume(self, msg: Resume) -> None:
        self._runs.batch.answer(msg.reply, self._runs.resume(msg.states, msg.funcs))

    def _mark_failed(self, msg: MarkFailed) -> None:
        if msg.run_id not in self._runs.states:
            self._runs.record_failure(msg.run_id, msg.version, msg.reason)
        self._runs.batch.answer(msg.reply, None)

    def _record(self, msg: Record) -> None:
        try:
            recorded = self._runs.record(msg.events)
            self._runs.batch.blobs.update(msg.blobs)
            self._runs.batch.answer(msg.reply, recorded)
        except MazeError as exc:
            msg.reply.set(error=exc)

    def _inspect(self, msg: Inspect) -> None:
        msg.reply.set(self.stats())

    def stats(self) -> EngineStats:
        retention = self._runs.retention
        return EngineStats(
            runs=frozenset(self._runs.states), active_attempts=self._runs.active,
            held_results={run: len(values) for run, values in retention.values.items()},
            awaited_results={run: sum(1 for n in counts.values() if n > 0)
                             for run, counts in retention.awaited.items()},
            pending_timers=len(self._runs.timers), subscribers=len(self._subscribers))

    # ------------------------------------------------------------------ commit and publish
    def _commit(self, force: bool = False) -> None:
        runs = self._runs
        committed = runs.batch.commit(force, runs.active, len(runs.unsent))
        if committed is None:
            return   # held for company
        if committed:
            self._publish(committed)
        runs.batch.answer_all()
        self._dispatcher.send()

    def _publish(self, committed: list[ev.Event]) -> None:
        """Committed events reach the policy, the end of their runs, subscribers and observers."""
        ended = False
        observe = self._scheduler.observe
        for event in committed:
            observe(event)
            if event.type in ev.RUN_TERMINAL:
                self._runs.ended(event)
                ended = True
        self._subscribers.deliver(committed)
        if self.observers:
            self.observers.put(committed)
        if ended:
            self._runs_ended()
