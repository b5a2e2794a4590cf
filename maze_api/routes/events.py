"""A run's events: a page of the log, or a live stream (server-sent events).

Both read the store a page at a time (``EventStore.read_stream_page``: seq > after, in seq
order, from an index), never a run's whole history: a run of 50,000 tasks holds some 200,000
events.

The stream sends the stored events after ``after`` (or ``Last-Event-ID``), then each new one as
the engine commits it, and ends after the run's last event (``RunSucceeded``, ``RunFailed``,
``RunCancelled``). The engine only *wakes* the stream; events are always read from the store by
seq, so none is lost or repeated whatever the timing. It holds one page (``STREAM_PAGE`` events)
at most, and lets each event go once it is sent: the next page is read once the client has taken
the last one (uvicorn stops a sender whose client does not read), so a slow client costs a page,
not the run's history. (One event can be large by itself: the ``RunSubmitted`` of 50,000 tasks
is some 20 MB.) The subscription ends with the stream: when the run ends, the client leaves, or
the engine stops.

Each token holds at most ``[server] max_streams_per_token`` streams open at once; one more is a
429 with ``Retry-After``. A stream's slot is freed when it ends or its client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from maze_core import api_models as shapes
from maze_core import events as ev
from maze_core.logging import get_logger
from maze_core.queries import run_events_page

from ..auth import Identity
from ..context import INT_MAX, RUN_FINISHED, ServerContext, engine_state, event_view
from ..deps import current_identity, get_ctx
from ..errors import LoggedRoute

router = APIRouter(route_class=LoggedRoute, tags=["events"])
log = get_logger("maze.api")
RETRY_MS = 2000
STREAM_PAGE = 100          # events a live stream reads (and holds) at a time
STREAM_READS = 2           # pages that the streams of one server read and encode at once
BUSY_RETRY_AFTER_S = 5     # Retry-After of a 429 when a token holds all its stream slots
_EVENT_ID = re.compile(r"[0-9]{1,19}")   # ASCII digits only


class StreamSlots:
    """The live streams each token holds open, at most ``limit`` at a time; and how many of a
    server's streams read the store at once (``reads``): a page holding a large event (the
    ``RunSubmitted`` of 50,000 tasks is 20 MB of JSON, ~150 MB once parsed) costs its memory
    only while it is read and encoded, so a few at a time bound what streams starting together
    cost."""

    def __init__(self, limit: int):
        self.limit = limit
        self.reads = asyncio.Semaphore(STREAM_READS)
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str) -> Callable[[], None] | None:
        """A slot for ``name``: the function that frees it (once, however often it is called),
        or None when ``name`` holds ``limit`` streams already."""
        with self._lock:
            if self._open.get(name, 0) >= self.limit:
                return None
            self._open[name] = self._open.get(name, 0) + 1
        freed = threading.Event()

        def release() -> None:
            with self._lock:
                if freed.is_set():
                    return
                freed.set()
                left = self._open.get(name, 0) - 1
                if left > 0:
                    self._open[name] = left
                else:
                    self._open.pop(name, None)

        return release


_SLOTS: weakref.WeakKeyDictionary[ServerContext, StreamSlots] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()


def stream_slots(ctx: ServerContext) -> StreamSlots:
    """The stream slots of one server (one per ``ServerContext``, made on first use)."""
    with _SLOTS_LOCK:
        slots = _SLOTS.get(ctx)
        if slots is None:
            slots = _SLOTS[ctx] = StreamSlots(ctx.config.server.max_streams_per_token)
        return slots


class _SlotStreamingResponse(StreamingResponse):
    """A stream that frees its slot when it is over, however it ends: the body finished, the
    client left (starlette cancels the body), or sending failed. The body generator is closed
    then too, so its subscription ends at once rather than when the generator is collected. A
    response that is never sent frees its slot when it is collected."""

    def __init__(self, content: AsyncIterator[str | bytes], release: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._release = release
        weakref.finalize(self, release)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):   # still running: it is ending anyway
                    await aclose()


@router.get("/runs/{run_id}/events", summary="A run's events after a sequence number",
            responses=shapes.responses(404, ok=shapes.EventPageBody))
def run_events(run_id: str, after: int = Query(0, ge=0, le=INT_MAX, description="only events with seq > after"),
               limit: int = Query(1000, ge=1, le=10000),
               identity: Identity = Depends(current_identity),
               ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """``{"run_id", "events": [{"seq", "version", "type", "ts", "actor", "data", "hash"}],
    "last_seq", "more", "finished"}``: page with ``after=last_seq`` while ``more``."""
    row = ctx.run_row(identity, run_id)
    page = run_events_page(ctx.store, run_id, after=after, limit=limit)   # one page, from an index
    return {"run_id": run_id, "events": [event_view(e) for e in page.events],
            "last_seq": page.last_seq, "more": page.more, "finished": row["status"] in RUN_FINISHED}


def _sse(event: ev.Event) -> str:
    data = json.dumps(event_view(event), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n"


def _last_event_id(value: str | None) -> int | None:
    """The sequence number a reconnecting client sends back; anything that is not one of ours
    (``'²'.isdigit()`` is true, int() refuses 5,000 digits) is ignored and the stream starts over."""
    if value and _EVENT_ID.fullmatch(value):
        number = int(value)
        if number <= INT_MAX:
            return number
    return None


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.get("/runs/{run_id}/events/stream", summary="A run's events, live (server-sent events)",
            response_class=StreamingResponse,
            responses={**shapes.responses(404, 429),
                       200: {"content": {"text/event-stream": {}},
                             "description": "`id: <seq>`, `event: <type>`, `data: <event JSON>`"},
                       429: {"model": shapes.ErrorBody, "description": "the token holds `[server] max_streams_per_token` "
                                            "streams already (see `Retry-After`)"}})
async def stream_events(run_id: str, request: Request,
                        after: int = Query(0, ge=0, le=INT_MAX, description="only events with seq > after"),
                        identity: Identity = Depends(current_identity),
                        ctx: ServerContext = Depends(get_ctx)) -> StreamingResponse:
    await run_in_threadpool(ctx.run_row, identity, run_id)
    last_id = _last_event_id(request.headers.get("last-event-id"))
    if last_id is not None:
        after = max(after, last_id)
    slots = stream_slots(ctx)
    release = slots.acquire(identity.name)
    if release is None:
        log.warning("event stream refused", actor=identity.name, run_id=run_id, open=slots.limit)
        raise HTTPException(
            429, f"{identity.name!r} has {slots.limit} event streams open, the most one token may "
                 f"hold ([server] max_streams_per_token); close one, or retry in a few seconds",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
    try:
        return _SlotStreamingResponse(_event_stream(ctx, request, run_id, after, release, slots.reads), release,
                                      media_type="text/event-stream",
                                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    except BaseException:
        release()
        raise


def _sse_page(store: Any, stream: str, after: int) -> list[tuple[int, str, bytes]]:
    """The next page of ``stream`` as server-sent messages ``(seq, type, bytes)``, made in a
    worker thread (encoding a large event would stall the event loop); each event's parsed
    payload is let go as soon as it is encoded."""
    events = store.read_stream_page(stream, after_seq=after, limit=STREAM_PAGE)
    events.reverse()
    page = []
    while events:
        event = events.pop()
        page.append((event.seq, event.type, _sse(event).encode()))
    return page


def _run_finished(ctx: ServerContext, run_id: str) -> bool:
    row = ctx.store.get_run(run_id)
    return row is None or row["status"] in RUN_FINISHED


async def _event_stream(ctx: ServerContext, request: Request, run_id: str, after: int,
                        release: Callable[[], None], reads: asyncio.Semaphore) -> AsyncIterator[str | bytes]:
    """The body of a live stream: catch up page by page, then wait for the engine's wake-ups.
    It frees its slot as it ends, before the response is complete: a client that opens its next
    stream once this one ended finds the slot free."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    stream = ev.run_stream(run_id)

    def on_events(events: list[ev.Event]) -> None:   # on the engine thread: only a wake-up
        if any(e.stream == stream for e in events):
            with contextlib.suppress(RuntimeError):   # the loop closed: the stream is gone anyway
                loop.call_soon_threadsafe(wake.set)

    # subscribed here, not before: a stream that never starts leaves nothing behind
    unsubscribe = ctx.engine.subscribe(on_events)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        yield f"retry: {RETRY_MS}\n\n"   # how long a client waits before reconnecting
        finished = False   # the run had ended when last asked: the next catch-up is the last
        while True:
            wake.clear()
            sent = ended = False
            while True:   # catch up, one page at a time; the next is read once this one is sent
                async with reads:
                    page = await run_in_threadpool(_sse_page, ctx.store, stream, after)
                full = len(page) == STREAM_PAGE
                sent = sent or bool(page)
                page.reverse()
                while page:   # each message is let go once sent (a RunSubmitted can weigh 20 MB)
                    after = page[-1][0]
                    ended = ended or page[-1][1] in ev.RUN_TERMINAL
                    yield page.pop()[2]
                if not full or gone.done():
                    break
            if ended or finished or gone.done():
                return
            if not sent:
                # Nothing after `after`: the run may have ended at or before it (a client resuming
                # past the end, or asking for a finished run). Asked before the next catch-up, so
                # whatever was committed until the answer is still sent.
                finished = await run_in_threadpool(_run_finished, ctx, run_id)
                if finished:
                    continue
            if engine_state(ctx.engine) != "running":
                yield "event: end\ndata: {\"reason\": \"the engine stopped\"}\n\n"
                return
            waiter = asyncio.ensure_future(wake.wait())
            done, _ = await asyncio.wait({waiter, gone}, timeout=ctx.heartbeat_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if gone in done:
                return
            if not done:
                yield ": keep-alive\n\n"
    finally:
        release()
        unsubscribe()
        gone.cancel()
