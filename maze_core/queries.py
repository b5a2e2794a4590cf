"""The read model over the store: answers about runs that the engine, the CLI and the API share.

Pure functions of an ``EventStore``: no FastAPI, no Ray, no engine."""

from __future__ import annotations

from dataclasses import dataclass

from . import events as ev
from .store import EventStore


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
