"""The read model over the store: answers about runs that the engine, the CLI and the API share.

Pure functions of an ``EventStore``: no FastAPI, no Ray, no engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import events as ev
from . import results
from .errors import NotFoundError, RunStateError
from .state import SUCCEEDED
from .store import EventStore

ResultView = Callable[[Any, "dict[str, Any] | None", Callable[[str], bytes]], Any]


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of a run's events: ``events`` after a seq, ``last_seq`` to ask for the next page
    with (the given ``after`` when the page is empty), and whether ``more`` events follow."""

    events: list[ev.Event]
    last_seq: int
    more: bool


def run_events_page(store: EventStore, run_id: str, after: int = 0, limit: int = 1000) -> EventPage:
    """At most ``limit`` events of run ``run_id`` with seq > ``after``, in order: one paged read
    of ``limit + 1`` events (the extra one only says whether there are more), however long the
    run's history."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    found = store.read_stream_page(ev.run_stream(run_id), after_seq=after, limit=limit + 1)
    page = found[:limit]
    return EventPage(page, page[-1].seq if page else after, len(found) > limit)


# ---------------------------------------------------------------------------- task results
PAGE = 5000     # events per read when a query scans a run's stream


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """Why a task failed: the projection's ``error`` and the traceback of its last ``TaskFailed``."""

    error: str | None
    traceback: str | None


def last_task_events(store: EventStore, run_id: str, types: frozenset[str] | set[str],
                     task_id: str | None = None, page: int = PAGE) -> dict[tuple[str, str], ev.Event]:
    """The last event of each ``types`` for each task of run ``run_id`` (only ``task_id`` when
    given), keyed by ``(task_id, type)``. One forward scan of the stream in pages of ``page``
    events (``read_stream_page``), so memory stays bounded however long the run's history."""
    found: dict[tuple[str, str], ev.Event] = {}
    after = 0
    while True:
        chunk = store.read_stream_page(ev.run_stream(run_id), after_seq=after, limit=page)
        for event in chunk:
            if event.type not in types or not isinstance(event.data, dict):
                continue
            tid = event.data.get("task_id")
            if tid is not None and (task_id is None or tid == task_id):
                found[(tid, event.type)] = event
        if len(chunk) < page:
            return found
        after = chunk[-1].seq


def task_row(store: EventStore, run_id: str, task_id: str, run_checked: bool = False) -> dict[str, Any]:
    """The ``tasks`` projection row of one task; ``NotFoundError`` for an unknown run or task
    (``run_checked``: the caller has looked the run up already, which costs a query)."""
    if not run_checked and store.get_run(run_id) is None:
        raise NotFoundError(f"run {run_id!r} does not exist")
    row = next((t for t in store.list_tasks(run_id) if t["task_id"] == task_id), None)
    if row is None:
        raise NotFoundError(f"run {run_id} has no task {task_id!r}")
    return row


def stored_result(store: EventStore, run_id: str, task_id: str, view: ResultView = results.public,
                  default: Any = None) -> Any:
    """``view(result, result_ref, get_blob)`` of the task's last ``TaskSucceeded`` event
    (``results.public``: a JSON view; ``results.decode``: the Python value), or ``default``
    when it has none. Checks nothing else: see ``task_result``."""
    event = last_task_events(store, run_id, {ev.TASK_SUCCEEDED}, task_id).get((task_id, ev.TASK_SUCCEEDED))
    if event is None:
        return default
    return view(event.data.get("result"), event.data.get("result_ref"), store.get_blob)


def task_result(store: EventStore, run_id: str, task_id: str, view: ResultView = results.public) -> Any:
    """The result of a task that succeeded, through ``view`` (see ``stored_result``).
    ``NotFoundError`` for an unknown run or task, ``RunStateError`` for a task without a result."""
    row = task_row(store, run_id, task_id)
    missing = object()
    value = stored_result(store, run_id, task_id, view, missing) if row["status"] == SUCCEEDED else missing
    if value is missing:
        raise RunStateError(f"task {task_id} of run {run_id} has no result: it is {row['status']}")
    return value


def task_failure(store: EventStore, run_id: str, task_id: str,
                 row: dict[str, Any] | None = None) -> TaskFailure:
    """The error of the task's projection ``row`` (looked up when not given: ``NotFoundError``
    for an unknown run or task) and the traceback of its last ``TaskFailed`` event (``None``
    when it has none)."""
    error = (row if row is not None else task_row(store, run_id, task_id)).get("error")
    event = last_task_events(store, run_id, {ev.TASK_FAILED}, task_id).get((task_id, ev.TASK_FAILED))
    return TaskFailure(error, event.data.get("traceback") if event is not None else None)


def task_outcomes(store: EventStore, run_id: str,
                  view: ResultView = results.public) -> dict[str, dict[str, Any]]:
    """For every task of a run, in one scan: ``{"result": view(...)}`` from its last
    ``TaskSucceeded`` and ``{"traceback": ...}`` from its last ``TaskFailed`` (whichever it has)."""
    out: dict[str, dict[str, Any]] = {}
    for (tid, type_), event in last_task_events(store, run_id, {ev.TASK_SUCCEEDED, ev.TASK_FAILED}).items():
        if type_ == ev.TASK_SUCCEEDED:
            out.setdefault(tid, {})["result"] = view(event.data.get("result"), event.data.get("result_ref"),
                                                     store.get_blob)
        else:
            out.setdefault(tid, {})["traceback"] = event.data.get("traceback")
    return out
