"""Errors become ``{"detail": ...}`` with the right status; anything unexpected is a 500 whose
traceback is logged (never sent)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
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


def _json(status: int, detail: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def install_handlers(app: Any) -> None:
    """Map Maze's exceptions to statuses."""

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(404, str(exc))

    async def state(request: Request, exc: Exception) -> Response:
        return _json(400, str(exc))

    async def invalid_dag(request: Request, exc: Exception) -> Response:
        return _json(422, str(exc), problems=list(getattr(exc, "problems", None) or [str(exc)]))

    async def archive(request: Request, exc: Exception) -> Response:
        return _json(getattr(exc, "status", 400), str(exc))

    async def conflict(request: Request, exc: Exception) -> Response:
        return _json(409, str(exc))

    async def bad(request: Request, exc: Exception) -> Response:
        return _json(400, str(exc))

    async def unprocessable(request: Request, exc: Exception) -> Response:
        return _json(422, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.error("engine unavailable", path=request.url.path, error=str(exc))
        return _json(503, f"the engine is not available: {exc}")

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
            except Exception as exc:
                log.error("request failed", method=request.method, path=request.url.path,
                          error=f"{type(exc).__name__}: {exc}", exc_info=True)
                return _json(500, "internal server error (the server log has the traceback)")

        return logged
