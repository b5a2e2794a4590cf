"""Errors become ``{"detail": ...}`` with the right status; anything unexpected is a 500 whose
traceback is logged (never sent)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from maze_core.errors import (
    ConcurrencyError,
    DAGValidationError,
    NotFoundError,
    RunStateError,
    TaskDefinitionError,
)
from maze_core.logging import get_logger

from .archive import ArchiveError

log = get_logger("maze.api")


class Conflict(Exception):
    """409: the resource exists already (a tool of that name)."""


class BadRequest(Exception):
    """400: a request the server understood and refuses (bad name, wrong kind of tool...)."""


class Unprocessable(Exception):
    """422: well-formed, but its content cannot be used (a tool archive without tasks)."""


def _engine_error_type() -> type[Exception]:
    from maze_core.engine import EngineError
    return EngineError


class SafeJSONResponse(JSONResponse):
    """JSON whose text may hold what a client sent: a lone surrogate (``"\\ud800"``) that cannot
    be encoded as UTF-8 is written as its escape instead of failing the response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "backslashreplace")


def _json(status: int, detail: Any, **extra: Any) -> JSONResponse:
    return SafeJSONResponse({"detail": detail, **extra}, status_code=status)


class PathScrubber:
    """Takes the server's own folders out of error details: an ``ImportError`` names a module by
    its absolute path, an ``OSError`` its file. A run folder becomes ``<run folder>``, the others
    ``<tools>``, ``<data_dir>``, ``<project_root>`` and ``<python>``; what follows them (the file
    within) stays, so the client still learns which of its files failed."""

    def __init__(self, config: Any = None):
        roots: dict[str, str] = {}

        def add(path: Any, label: str) -> None:
            for form in {str(path).rstrip("/"), os.path.realpath(path)}:
                if len(Path(form).parts) > 1 and form not in roots:   # never "/" itself
                    roots[form] = label

        if config is not None:
            runs = config.data_dir / "runs"
            self._run = re.compile("(?:" + "|".join(re.escape(r.rstrip("/")) for r in
                                                    {str(runs), os.path.realpath(runs)}) + r")/[0-9a-f]{32}")
            add(config.project_root / "maze" / "model_cache", "<tools>")
            add(runs, "<data_dir>/runs")
            add(config.data_dir, "<data_dir>")
            add(config.project_root, "<project_root>")
        else:
            self._run = None
        for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
            add(prefix, "<python>")
        ordered = sorted(roots, key=len, reverse=True)   # the most specific folder first
        self._labels = roots
        # a root counts only where its name ends: /srv/maze is not a prefix of /srv/maze2
        self._roots = re.compile("(?:" + "|".join(map(re.escape, ordered)) + r")(?![\w.-])") if ordered else None

    def __call__(self, text: str) -> str:
        if self._run is not None:
            text = self._run.sub("<run folder>", text)
        if self._roots is not None:
            text = self._roots.sub(lambda m: self._labels[m.group(0)], text)
        return text


def install_handlers(app: Any) -> None:
    """Map Maze's exceptions to statuses, their details free of server paths."""
    scrub = PathScrubber(getattr(app.state, "maze_config", None))

    def detail(exc: Exception) -> str:
        return scrub(str(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(404, detail(exc))

    async def state(request: Request, exc: Exception) -> Response:
        return _json(400, detail(exc))

    async def invalid_dag(request: Request, exc: Exception) -> Response:
        problems = [scrub(str(p)) for p in getattr(exc, "problems", None) or [str(exc)]]
        return _json(422, detail(exc), problems=problems)

    async def archive(request: Request, exc: Exception) -> Response:
        return _json(getattr(exc, "status", 400), detail(exc))

    async def conflict(request: Request, exc: Exception) -> Response:
        return _json(409, detail(exc))

    async def bad(request: Request, exc: Exception) -> Response:
        return _json(400, detail(exc))

    async def unprocessable(request: Request, exc: Exception) -> Response:
        return _json(422, detail(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.error("engine unavailable", path=request.url.path, error=str(exc))   # the log keeps it whole
        return _json(503, f"the engine is not available: {detail(exc)}")

    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own answer, rendered so that a value it quotes back cannot break it
        return _json(422, jsonable_encoder(exc.errors()))

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(NotFoundError, not_found)
    app.add_exception_handler(RunStateError, state)
    app.add_exception_handler(DAGValidationError, invalid_dag)
    app.add_exception_handler(TaskDefinitionError, invalid_dag)
    app.add_exception_handler(ArchiveError, archive)
    app.add_exception_handler(Conflict, conflict)
    app.add_exception_handler(ConcurrencyError, conflict)
    app.add_exception_handler(BadRequest, bad)
    app.add_exception_handler(Unprocessable, unprocessable)
    app.add_exception_handler(_engine_error_type(), unavailable)


_HANDLED = (HTTPException, RequestValidationError, NotFoundError, RunStateError, DAGValidationError,
            TaskDefinitionError, ArchiveError, Conflict, ConcurrencyError, BadRequest, Unprocessable)


class LoggedRoute(APIRoute):
    """A route whose unexpected exceptions become a logged 500 with a generic detail."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        engine_error = _engine_error_type()

        async def logged(request: Request) -> Response:
            try:
                return await handler(request)
            except (*_HANDLED, engine_error):
                raise
            except (RecursionError, OverflowError) as exc:   # a value too deep or too large
                log.info("request refused", method=request.method, path=request.url.path,
                         error=type(exc).__name__)
                return _json(400, f"the request holds a value nested too deeply or too large "
                                  f"({type(exc).__name__})")
            except Exception as exc:
                log.error("request failed", method=request.method, path=request.url.path,
                          error=f"{type(exc).__name__}: {exc}", exc_info=True)
                return _json(500, "internal server error (the server log has the traceback)")

        return logged
