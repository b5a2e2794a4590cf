"""The commit batcher: the events of a loop turn go to the store in one transaction.

Nothing waits on a batch of only ``TaskStarted`` events, so it is held a few milliseconds to
share a transaction with the task's end or the next dispatch (one commit per task, not two).
With many attempts in flight, their ends arrive one by one; a batch is then held a moment to
gather them (group commit), which costs no throughput: the executor has work meanwhile. A batch
that someone waits on (a reply, tasks to hand to the executor) is never held.

A run's first event in a batch carries the version its stream had: if another process moved
the stream, the store refuses it (``ConcurrencyError``) and that run is dropped from the batch.
A value the store cannot encode belongs to one run: the batch is then stored stream by stream,
and the run whose events cannot be stored is failed instead (``on_unstorable``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import events as ev
from ..errors import ConcurrencyError
from ..events import NewEvent
from ..logging import get_logger
from ..state import RunState
from ..store import EventStore
from .messages import EngineError, Reply

log = get_logger("maze.engine")

STARTED_FLUSH_DELAY = 0.005  # seconds a batch of only TaskStarted events may wait for company
GROUP_COMMIT_S = 0.002       # with many tasks in flight, ends arrive one by one: gather them this long
GROUP_COMMIT_ACTIVE = 4      # ... when at least this many attempts are queued or running
# what a value the store cannot encode raises: it belongs to one run, never to the engine
POISON = (ValueError, TypeError, OverflowError, RecursionError)

Entry = tuple[RunState | None, NewEvent]   # the run state the event moves (None: not a driven run)


class Recorded:
    """The answer to a ``Record`` message: its events as committed, or why they were not."""

    __slots__ = ("error", "events", "new")

    def __init__(self, new: list[NewEvent]):
        self.new = new
        self.events: list[ev.Event] | None = None
        self.error: BaseException | None = None


class CommitBatch:
    """The events and blobs of the current turn, and the replies that wait for their commit.

    ``on_moved_run(run_id)``: another writer moved the run's stream. ``on_unstorable(stream,
    entries, exc)``: the events of ``stream`` cannot be stored; returns the event to record in
    their place (the run's failure) or None."""

    def __init__(self, store: EventStore, max_batch: int, on_moved_run: Callable[[str], None],
                 on_unstorable: Callable[[str, list[Entry], BaseException], NewEvent | None]):
        self._store = store
        self.max_batch = max_batch
        self._on_moved_run = on_moved_run
        self._on_unstorable = on_unstorable
        self.entries: list[Entry] = []
        self.checked_streams: set[str] = set()   # streams whose first event here carries its version
        self.blobs: dict[str, bytes] = {}
        self.more_than_started = False           # it holds more than TaskStarted events
        self.flush_at: float | None = None       # when a held batch is committed anyway
        self.answers: list[tuple[Reply, Any]] = []   # replies set once the batch is committed
        self._recorded: list[Recorded] = []
        self._dropped: dict[str, BaseException] = {}  # stream -> why its events were not stored

    # ------------------------------------------------------------------ filling
    def add_run_event(self, state: RunState, new: NewEvent) -> None:
        """An event of a run this engine drives; the run's first in the batch checks its version."""
        if new.stream not in self.checked_streams:
            new.expected_version = state.version
            self.checked_streams.add(new.stream)
        self.entries.append((state, new))
        if new.type != ev.TASK_STARTED:
            self.more_than_started = True

    def add_checked(self, new: NewEvent) -> None:
        """An event of a run this engine does not drive, carrying its own expected version."""
        self.entries.append((None, new))
        self.checked_streams.add(new.stream)
        self.more_than_started = True

    def add_recorded(self, new: list[NewEvent]) -> Recorded:
        """Events handed to ``Engine.record``; the returned answer is filled in at commit."""
        self.entries.extend((None, n) for n in new)
        self.more_than_started = True
        recorded = Recorded(new)
        self._recorded.append(recorded)
        return recorded

    def answer(self, reply: Reply, value: Any) -> None:
        """Set ``reply`` to ``value`` once the batch is committed."""
        self.answers.append((reply, value))

    def drop_stream(self, stream: str) -> None:
        """Take the events of ``stream`` out of the batch (a run that could not be taken over)."""
        self.entries = [(s, ne) for s, ne in self.entries if ne.stream != stream]
        self.checked_streams.discard(stream)

    # ------------------------------------------------------------------ committing
    def hold(self, force: bool, active: int, unsent: int) -> bool:
        """Whether to keep the batch open a little longer (see the module's docstring).
        ``active``: attempts queued or running; ``unsent``: those waiting for this commit."""
        if self.entries and not (force or self.more_than_started or self.answers or unsent):
            now = time.monotonic()
            if self.flush_at is None:
                self.flush_at = now + STARTED_FLUSH_DELAY
            if now < self.flush_at:
                return True
        elif (self.entries and not (force or self.answers)
              and active - unsent >= GROUP_COMMIT_ACTIVE and len(self.entries) < self.max_batch):
            # (attempts waiting for this very commit do not count: they are not in flight yet)
            now = time.monotonic()
            due = now + GROUP_COMMIT_S
            if self.flush_at is None or self.flush_at > due:
                self.flush_at = due
            if now < self.flush_at:
                return True
        return False

    def commit(self, force: bool, active: int, unsent: int) -> list[ev.Event] | None:
        """Append the batch unless it is held (None). Returns the committed events; each run
        state's version follows its stream's."""
        if self.hold(force, active, unsent):
            return None
        self.flush_at = None
        self.more_than_started = False
        committed = self._append() if self.entries else []
        for (state, _), event in zip(self.entries, committed, strict=True):
            if state is not None:
                state.version = event.version
        if self._recorded:
            self._settle_recorded(committed)
        self.entries, self.blobs = [], {}
        self.checked_streams.clear()
        self._dropped = {}
        return committed

    def answer_all(self) -> None:
        for reply, value in self.answers:
            if type(value) is Recorded:
                reply.set(value.events, value.error)
            else:
                reply.set(value)
        self.answers = []

    def _settle_recorded(self, committed: list[ev.Event]) -> None:
        by_new = {id(new): event for (_, new), event in zip(self.entries, committed, strict=True)}
        for recorded in self._recorded:
            events = [by_new.get(id(n)) for n in recorded.new]
            missing = [n.stream for n, e in zip(recorded.new, events, strict=True) if e is None]
            if missing:
                recorded.error = self._dropped.get(missing[0]) or EngineError(
                    f"events of stream {missing[0]!r} were not recorded")
            else:
                recorded.events = events
        self._recorded = []

    def _append(self) -> list[ev.Event]:
        """Append the batch; returns its events as committed, ``entries`` left holding the
        entries they belong to (a run another process drives, or one whose events cannot be
        stored, is dropped from it)."""
        while True:
            try:
                return self._store.append([ne for _, ne in self.entries], self.blobs)
            except ConcurrencyError as exc:
                self._moved(exc.stream, exc)
                self.entries = [(s, ne) for s, ne in self.entries if ne.stream != exc.stream]
                if not self.entries:
                    return []
            except POISON as exc:
                # a value the store cannot take (text that is not UTF-8, a number JSON cannot
                # hold, nesting past the encoder's depth): it belongs to one run. Store the batch
                # stream by stream, and fail the run whose events cannot be stored
                log.error("a batch of events could not be stored; storing it run by run", error=repr(exc))
                return self._append_by_stream()

    def _append_by_stream(self) -> list[ev.Event]:
        groups: dict[str, list[Entry]] = {}
        for entry in self.entries:
            groups.setdefault(entry[1].stream, []).append(entry)
        kept: list[Entry] = []
        committed: list[ev.Event] = []
        blobs = self.blobs
        for stream, group in groups.items():
            try:
                done = self._store.append([ne for _, ne in group], blobs)
            except POISON as exc:
                self._dropped[stream] = exc
                failure = self._on_unstorable(stream, group, exc)
                if failure is None:
                    continue
                try:
                    done = self._store.append([failure])
                except (ConcurrencyError, *POISON):
                    log.exception("could not record the failure of a run", run_id=ev.stream_run_id(stream))
                    continue
                group = [(None, failure)]
            except ConcurrencyError as exc:
                self._moved(stream, exc)
                continue
            blobs = {}
            kept.extend(group)
            committed.extend(done)
        self.entries = kept
        return committed

    def _moved(self, stream: str, exc: ConcurrencyError) -> None:
        self._dropped[stream] = exc
        run_id = ev.stream_run_id(stream)
        if run_id is None:
            log.error("another writer moved this stream; its events are dropped", stream=stream,
                      expected=exc.expected, actual=exc.actual)
            return
        log.error("another process is driving this run; leaving it", run_id=run_id,
                  expected=exc.expected, actual=exc.actual)
        self._on_moved_run(run_id)
