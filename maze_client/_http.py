"""HTTP plumbing of the SDK: one pooled ``httpx.Client``, retries with backoff, errors mapped to types.

Retry rules (those of the original client, made safe):

- only *idempotent* requests are retried: GET, HEAD, PUT, DELETE, OPTIONS, and POSTs the caller
  marks idempotent because they only read (``POST /get/``, ``POST /files/download/{run_id}``);
  a submit, cancel, upload or destroy is never sent twice by the SDK;
- only on 429, 502, 503 and 504 responses and on connection errors (refused, reset, broken
  connection, connect and pool timeouts); a read timeout is not retried (the server may still be
  working on it), nor is any other status;
- the wait before retry ``n`` (0-based) is ``min(backoff_max, backoff_factor * 2**n)`` shortened by
  a random fraction of up to ``jitter`` of itself, unless the response carries ``Retry-After``
  (seconds or an HTTP date), which is honoured up to ``retry_after_max`` seconds.

``sleep`` and ``random`` are injectable so tests can check the waits without waiting.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random as _random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import httpx

from .exceptions import (
    MazeAPIError,
    MazeConnectionError,
    MazeTimeoutError,
    error_for_status,
)

__all__ = ["IDEMPOTENT_METHODS", "RETRY_STATUSES", "HTTP", "RetryPolicy", "parse_retry_after"]

logger = logging.getLogger("maze.client")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})

# Transport failures after which the request is worth sending again (if it is idempotent):
# nothing came back because the connection could not be made or broke.
_RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending an idempotent request again."""

    max_retries: int = 3
    backoff_factor: float = 0.25
    backoff_max: float = 8.0
    jitter: float = 0.5
    retry_after_max: float = 60.0
    statuses: frozenset[int] = field(default=RETRY_STATUSES)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")
        if self.backoff_factor < 0 or self.backoff_max < 0 or self.retry_after_max < 0:
            raise ValueError("backoff_factor, backoff_max and retry_after_max must be >= 0")

    def backoff(self, retry: int, rand: float) -> float:
        """Seconds to wait before retry number ``retry`` (0-based); ``rand`` in [0, 1)."""
        delay = min(self.backoff_max, self.backoff_factor * (2 ** retry))
        return delay * (1.0 - self.jitter * rand)

    def delay(self, retry: int, rand: float, retry_after: float | None) -> float:
        """The wait: the server's ``Retry-After`` (capped) when it gave one, else the backoff."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        return self.backoff(retry, rand)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if unreadable.

    A date in the past (or a negative number) gives 0."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def response_detail(response: httpx.Response) -> Any:
    """The ``detail`` of a ``{"detail": ...}`` body, the JSON body, or the text (shortened)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text
        return text[:2000] if text else (response.reason_phrase or None)
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


class HTTP:
    """A pooled HTTP client with the retry rules above; raises ``MazeAPIError`` subclasses."""

    def __init__(self, base_url: str, *, token: str | None, timeout: float | httpx.Timeout | None,
                 policy: RetryPolicy, transport: httpx.BaseTransport | None = None,
                 headers: dict[str, str] | None = None, verify: Any = True,
                 sleep: Callable[[float], None] = time.sleep,
                 random: Callable[[], float] = _random.random,
                 limits: httpx.Limits | None = None) -> None:
        all_headers = {"Accept": "application/json", "User-Agent": "maze-client"}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        kwargs: dict[str, Any] = {}
        if limits is not None:
            kwargs["limits"] = limits
        self.base_url = base_url
        self.policy = policy
        self.sleep = sleep
        self.random = random
        self.client = httpx.Client(base_url=base_url, timeout=timeout, headers=all_headers,
                                   transport=transport, verify=verify, **kwargs)

    def close(self) -> None:
        self.client.close()

    @property
    def closed(self) -> bool:
        return self.client.is_closed

    def request(self, method: str, path: str, *, idempotent: bool | None = None,
                stream: bool = False, **kwargs: Any) -> httpx.Response:
        """Send a request, retrying as the policy allows; return a 2xx/3xx response.

        With ``stream=True`` the body is not read: the caller must close the response."""
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        if self.client.is_closed:
            raise MazeConnectionError("the client is closed", method=method, url=path)
        retries = self.policy.max_retries if idempotent else 0
        attempt = 0
        while True:
            try:
                request = self.client.build_request(method, path, **kwargs)
                response = self.client.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = _transport_error(exc, method, path)
                if attempt >= retries or not isinstance(exc, _RETRY_EXCEPTIONS):
                    raise error from exc
                self._wait(attempt, None, method, path, f"{type(exc).__name__}: {exc}")
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if response.status_code in self.policy.statuses and attempt < retries:
                response.close()
                self._wait(attempt, retry_after, method, path, f"HTTP {response.status_code}")
                attempt += 1
                continue
            if stream:
                response.read()
                response.close()
            raise error_for_status(response.status_code, response_detail(response), method=method,
                                   url=path, retry_after=retry_after)

    def _wait(self, attempt: int, retry_after: float | None, method: str, path: str, why: str) -> None:
        delay = self.policy.delay(attempt, self.random(), retry_after)
        logger.info("retrying %s %s in %.3fs after %s (retry %d of %d)", method, path, delay, why,
                    attempt + 1, self.policy.max_retries)
        if delay > 0:
            self.sleep(delay)

    def json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        """Send a request and return its JSON body (``MazeAPIError`` if it is not JSON)."""
        response = self.request(method, path, idempotent=idempotent, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise MazeAPIError(f"{method} {path}: the server answered {response.status_code} with a "
                               f"body that is not JSON: {response.text[:200]!r}",
                               status_code=response.status_code, method=method, url=path) from None


def _transport_error(exc: httpx.TransportError, method: str, path: str) -> MazeAPIError:
    cls = MazeTimeoutError if isinstance(exc, httpx.TimeoutException) else MazeConnectionError
    what = "timed out" if cls is MazeTimeoutError else "could not reach the server"
    return cls(f"{method} {path}: {what}: {type(exc).__name__}: {exc}", method=method, url=path)


def join_params(params: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Query parameters without the None values."""
    return {key: value for key, value in params if value is not None}
