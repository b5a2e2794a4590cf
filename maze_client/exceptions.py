"""The SDK's exceptions: one class per kind of failure, all below :class:`MazeAPIError`.

::

    MazeAPIError                      every error the SDK raises for a request
    ├── MazeConnectionError           the server could not be reached (also a builtin ConnectionError)
    │   └── MazeTimeoutError          the request timed out (also a builtin TimeoutError)
    ├── MazeBadRequestError           400, 422: the request is invalid (bad DAG, destroy of an active run)
    │   └── MazePayloadTooLargeError  413: the body is over the server's limit
    ├── MazeAuthenticationError       401, 403: no token, a wrong token, or not allowed
    │   └── MazePermissionError       403
    ├── MazeNotFoundError             404: no such run, task or tool (or another token's run)
    ├── MazeConflictError             409: conflict (a tool of that name exists already)
    ├── MazeRateLimitError            429: too many requests (``retry_after`` in seconds, if given)
    ├── MazeServerError               5xx: the server failed
    └── MazeWaitTimeoutError          ``wait()`` gave up before the run finished (also a TimeoutError)

Each keeps ``status_code`` (None when no response came) and ``detail`` (the ``detail`` of the
server's ``{"detail": ...}`` body, or its text), plus ``method`` and ``url`` of the request.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "MazeAPIError",
    "MazeAuthenticationError",
    "MazeBadRequestError",
    "MazeConflictError",
    "MazeConnectionError",
    "MazeNotFoundError",
    "MazePayloadTooLargeError",
    "MazePermissionError",
    "MazeRateLimitError",
    "MazeServerError",
    "MazeTimeoutError",
    "MazeWaitTimeoutError",
    "error_for_status",
]


class MazeAPIError(Exception):
    """A request to the Maze server failed. ``status_code`` is None when no response came."""

    default_status: int | None = None

    def __init__(self, message: str | None = None, *, status_code: int | None = None,
                 detail: Any = None, method: str | None = None, url: str | None = None) -> None:
        self.status_code = status_code if status_code is not None else self.default_status
        self.detail = detail
        self.method = method
        self.url = url
        if message is None:
            message = _describe(self.status_code, detail, method, url)
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:  # picklable with its keyword arguments
        return (_rebuild, (type(self), self.message, self.status_code, self.detail, self.method,
                           self.url), dict(self.__dict__))


def _rebuild(cls: type[MazeAPIError], message: str, status_code: int | None, detail: Any,
             method: str | None, url: str | None) -> MazeAPIError:
    return cls(message, status_code=status_code, detail=detail, method=method, url=url)


class MazeConnectionError(MazeAPIError, ConnectionError):
    """The server could not be reached, or the connection broke before a response came."""


class MazeTimeoutError(MazeConnectionError, TimeoutError):
    """The request timed out (connect, read, write or waiting for a pooled connection)."""


class MazeBadRequestError(MazeAPIError):
    """400 or 422: the request is invalid; ``detail`` says why (422: pydantic's list of problems)."""

    default_status = 400


class MazePayloadTooLargeError(MazeBadRequestError):
    """413: the request body (workflow, archive, upload) is over the server's limit."""

    default_status = 413


class MazeAuthenticationError(MazeAPIError):
    """401 or 403: the token is missing or wrong, or it may not do this (tool upload needs admin)."""

    default_status = 401


class MazePermissionError(MazeAuthenticationError):
    """403: the token is valid but not allowed to do this."""

    default_status = 403


class MazeNotFoundError(MazeAPIError):
    """404: no such run, task or tool (a run submitted with another token is not found either)."""

    default_status = 404


class MazeConflictError(MazeAPIError):
    """409: the request conflicts with the server's state (e.g. a tool of that name exists)."""

    default_status = 409


class MazeRateLimitError(MazeAPIError):
    """429: too many requests; ``retry_after`` is the server's ``Retry-After`` in seconds, if any."""

    default_status = 429

    def __init__(self, message: str | None = None, *, retry_after: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class MazeServerError(MazeAPIError):
    """5xx: the server failed (its log has the traceback)."""

    default_status = 500


class MazeWaitTimeoutError(MazeAPIError, TimeoutError):
    """``MazeClient.wait`` gave up before the run reached a final state."""


_BY_STATUS: dict[int, type[MazeAPIError]] = {
    400: MazeBadRequestError,
    401: MazeAuthenticationError,
    403: MazePermissionError,
    404: MazeNotFoundError,
    409: MazeConflictError,
    413: MazePayloadTooLargeError,
    422: MazeBadRequestError,
    429: MazeRateLimitError,
}


def error_class(status_code: int) -> type[MazeAPIError]:
    """The exception class for an HTTP error status (other 4xx: ``MazeBadRequestError``...)."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return MazeServerError
    if 400 <= status_code < 500:
        return MazeBadRequestError
    return MazeAPIError


def error_for_status(status_code: int, detail: Any, *, method: str | None = None,
                     url: str | None = None, retry_after: float | None = None) -> MazeAPIError:
    """The exception (not raised) for an error response."""
    cls = error_class(status_code)
    kwargs: dict[str, Any] = {"status_code": status_code, "detail": detail, "method": method, "url": url}
    if cls is MazeRateLimitError:
        kwargs["retry_after"] = retry_after
    return cls(**kwargs)


def _describe(status_code: int | None, detail: Any, method: str | None, url: str | None) -> str:
    where = f"{method} {url}" if method and url else (url or "")
    if isinstance(detail, str):
        text = detail
    elif detail is None:
        text = ""
    else:
        text = _detail_text(detail)
    head = f"HTTP {status_code}" if status_code is not None else "request failed"
    parts = [head]
    if where:
        parts.append(f"({where})")
    message = " ".join(parts)
    return f"{message}: {text}" if text else message


def _detail_text(detail: Any) -> str:
    """FastAPI's 422 detail (a list of {loc, msg}) as one line; anything else as JSON."""
    if isinstance(detail, list) and all(isinstance(d, dict) and "msg" in d for d in detail):
        items = []
        for d in detail:
            loc = ".".join(str(p) for p in d.get("loc", ()) if p != "body")
            items.append(f"{loc}: {d['msg']}" if loc else str(d["msg"]))
        return "; ".join(items)
    try:
        return json.dumps(detail, ensure_ascii=False, default=str)[:2000]
    except (TypeError, ValueError):
        return repr(detail)[:2000]
