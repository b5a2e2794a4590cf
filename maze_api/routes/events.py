"""A run's events: a page of the log, or a live stream (server-sent events).

The stream sends the stored events after ``after`` (or ``Last-Event-ID``), then each new one as
the engine commits it, and ends after the run's last event (``RunSucceeded``, ``RunFailed``,
``RunCancelled``). The engine only *wakes* the stream; events are always read from the store by
version, so none is lost or repeated whatever the timing, and a slow client holds no queue. The
subscription ends with the stream: when the run ends, the client leaves, or the engine stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from maze_core import events as ev

from ..auth import Identity
from ..context import INT_MAX, RUN_FINISHED, ServerContext, engine_state, event_view
from ..deps import current_identity, get_ctx
from ..errors import LoggedRoute

router = APIRouter(route_class=LoggedRoute, tags=["events"])
RETRY_MS = 2000
_EVENT_ID = re.compile(r"[0-9]{1,19}")   # ASCII digits only


@router.get("/runs/{run_id}/events", summary="A run's events after a sequence number")
def run_events(run_id: str, after: int = Query(0, ge=0, le=INT_MAX, description="only events with seq > after"),
               limit: int = Query(1000, ge=1, le=10000),
               identity: Identity = Depends(current_identity),
               ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """``{"run_id", "events": [{"seq", "version", "type", "ts", "actor", "data", "hash"}],
    "last_seq", "more", "finished"}``: page with ``after=last_seq`` while ``more``."""
    row = ctx.run_row(identity, run_id)
    selected = [e for e in ctx.store.read_stream(ev.run_stream(run_id)) if e.seq > after]
    page = selected[:limit]
    return {"run_id": run_id, "events": [event_view(e) for e in page],
            "last_seq": page[-1].seq if page else after, "more": len(selected) > limit,
            "finished": row["status"] in RUN_FINISHED}


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
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`id: <seq>`, `event: <type>`, `data: <event JSON>`"}})
async def stream_events(run_id: str, request: Request,
                        after: int = Query(0, ge=0, le=INT_MAX, description="only events with seq > after"),
                        identity: Identity = Depends(current_identity),
                        ctx: ServerContext = Depends(get_ctx)) -> StreamingResponse:
    await run_in_threadpool(ctx.run_row, identity, run_id)
    last_id = _last_event_id(request.headers.get("last-event-id"))
    if last_id is not None:
        after = max(after, last_id)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    stream = ev.run_stream(run_id)

    def on_events(events: list[ev.Event]) -> None:   # on the engine thread: only a wake-up
        if any(e.stream == stream for e in events):
            with contextlib.suppress(RuntimeError):   # the loop closed: the stream is gone anyway
                loop.call_soon_threadsafe(wake.set)

    async def body() -> AsyncIterator[str]:
        nonlocal after
        version = 0
        # subscribed here, not before: a stream that never starts leaves nothing behind
        unsubscribe = ctx.engine.subscribe(on_events)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            yield f"retry: {RETRY_MS}\n\n"   # how long a client waits before reconnecting
            while True:
                wake.clear()
                events = await run_in_threadpool(ctx.store.read_stream, stream, version)
                ended = False
                for event in events:
                    version = event.version
                    ended = ended or event.type in ev.RUN_TERMINAL
                    if event.seq > after:
                        after = event.seq
                        yield _sse(event)
                if ended:
                    return
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
            unsubscribe()
            gone.cancel()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
