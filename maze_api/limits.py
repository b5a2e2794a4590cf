"""Request body limits: a declared ``Content-Length`` over the limit is refused before anything is
read, and the bytes actually received are counted (chunked bodies, lying headers) as they stream in.

A server with tokens reads at most ``UNAUTHENTICATED_BODY`` bytes of a request that carries no valid
token: endpoints with a JSON body read and parse it before their token check runs, so anybody could
otherwise make the server read ``max_body_mb`` per request (or wait on a body that never ends).
Beyond that the answer is the 401 the endpoint would give, and nothing more is read.

An answer sent before the request's body was read to its end (a 413 or 401 past a limit, or any
answer an endpoint gives without reading the body: a 404 for an unknown run, a 401 from the token
check) carries ``Connection: close``, which makes uvicorn close the connection once the answer is
out. Otherwise the server goes on reading and dropping whatever the client sends, however much and
however long (HTTP/1.1 must reach the end of a body before the next request). With a valid token, up
to ``DRAIN_LIMIT`` bytes of the rest are read first, so that a client still sending a moderate body
reads the answer rather than a reset.
"""

from __future__ import annotations

import json

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import TokenTable

DRAIN_LIMIT = 8 * 1024 * 1024  # bytes read and dropped before a 413, so the client can see it
DRAIN_SECONDS = 10.0           # ... for at most this long
UNAUTHENTICATED_BODY = 64 * 1024   # the most read of a request without a valid token


class BodyTooLarge(HTTPException):
    """413. An ``HTTPException`` so that FastAPI's body parsing passes it on unchanged."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the server's limit of {limit} bytes "
                              f"([server] max_body_mb)")


class Unauthenticated(HTTPException):
    """401 for a body sent without a valid token, past ``UNAUTHENTICATED_BODY``."""

    def __init__(self, detail: str):
        super().__init__(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _token_problem(scope: Scope, tokens: TokenTable | None) -> str | None:
    """Why the request has no valid token (as the endpoint would say), or None."""
    if tokens is None or not tokens.enabled:
        return None
    header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
    scheme, _, credentials = header.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return "a bearer token is required (Authorization: Bearer <token>)"
    return None if tokens.identify(credentials) is not None else "invalid token"


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``; 401 for bodies over
    ``UNAUTHENTICATED_BODY`` without a valid token (when ``tokens`` has any); ``Connection: close``
    on any answer sent before the body was read to its end."""

    def __init__(self, app: ASGIApp, max_bytes: int, tokens: TokenTable | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.tokens = tokens

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
        has_body = declared != 0 and (declared is not None or any(
            k == b"transfer-encoding" for k, _ in scope.get("headers", ())))
        anonymous = _token_problem(scope, self.tokens) if has_body else None
        body = _Body(complete=not has_body)
        # with a token, a moderate rest of the body is read before an early answer; a declared
        # length beyond that is answered at once, and so is a client waiting for "100 Continue"
        expects = any(k == b"expect" for k, _ in scope.get("headers", ()))
        body.drain = DRAIN_LIMIT if anonymous is None and not expects and (declared or 0) <= DRAIN_LIMIT else 0
        receive = body.tracking(receive)
        send = body.closing(send, receive)
        if anonymous is not None:
            if declared is not None and declared > UNAUTHENTICATED_BODY:
                await _respond(send, 401, anonymous, [(b"www-authenticate", b"Bearer")])   # nothing read
                return
            await self.app(scope, _counting(receive, UNAUTHENTICATED_BODY, Unauthenticated(anonymous)), send)
            return
        if declared is not None and declared > self.max_bytes:
            await _respond(send, 413, BodyTooLarge(self.max_bytes).detail)   # drained (moderate) and closed
            return
        await self.app(scope, _counting(receive, self.max_bytes, BodyTooLarge(self.max_bytes)), send)


class _Body:
    """Whether a request's body was read to its end; closes the connection of an answer sent
    before."""

    __slots__ = ("complete", "drain")

    def __init__(self, complete: bool):
        self.complete = complete
        self.drain = 0   # bytes of the rest read (and dropped) before an early answer

    def tracking(self, receive: Receive) -> Receive:
        async def tracked() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self.complete = True   # the last part, or the client left
            return message

        return tracked

    def closing(self, send: Send, receive: Receive) -> Send:
        async def closed(message: Message) -> None:
            if message["type"] == "http.response.start" and not self.complete:
                if self.drain:   # a moderate rest is read, so that the client reads the answer
                    with anyio.move_on_after(DRAIN_SECONDS):
                        await _drain(receive, self.drain)
                if not self.complete:   # the rest is never read: the connection ends with the answer
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return closed


def _counting(receive: Receive, limit: int, error: HTTPException) -> Receive:
    """``receive`` raising ``error`` once more than ``limit`` body bytes came."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise error
        return message

    return counted


async def _drain(receive: Receive, cap: int) -> None:
    seen = 0
    while seen <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _respond(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})
