"""Request body limits: a declared ``Content-Length`` over the limit is refused before anything is
read, and the bytes actually received are counted (chunked bodies, lying headers) as they stream in.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_LIMIT = 8 * 1024 * 1024  # bytes read and dropped before a 413, so the client can see it


class BodyTooLarge(HTTPException):
    """413. An ``HTTPException`` so that FastAPI's body parsing passes it on unchanged."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the server's limit of {limit} bytes "
                              f"([server] max_body_mb)")


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _respond(send, 400, "Content-Length is not a number")
                    return
        if declared is not None and declared > self.max_bytes:
            # read (and drop) a moderate body so the client reads our answer rather than a reset
            if declared <= DRAIN_LIMIT:
                await _drain(receive, DRAIN_LIMIT)
            await _respond(send, 413, BodyTooLarge(self.max_bytes).detail)
            return
        received = 0
        limit = self.max_bytes

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_LIMIT)
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


async def _drain(receive: Receive, cap: int) -> None:
    seen = 0
    while seen <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _respond(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
