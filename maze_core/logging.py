"""structlog set-up: pretty console logs on a terminal, JSON lines elsewhere (servers, CI).

Loggers are bound with ``run_id`` and ``task_id`` where they concern one run or task.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR}


def setup_logging(level: str = "INFO", fmt: str = "auto", stream=None) -> None:
    """Configure structlog and the stdlib ``logging`` root (the registry, uvicorn, Ray) once.

    ``fmt``: ``console`` (coloured, for people), ``json`` (one object per line, for machines) or
    ``auto`` (console on a tty, else json). Records of the standard ``logging`` module (uvicorn's,
    Ray's) are rendered by the same renderer, so a server's log is one format. Logs go to stderr
    so command output stays clean."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
                if fmt == "console" else structlog.processors.JSONRenderer())
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_SafePrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if not root.handlers:     # as logging.basicConfig: an application's own set-up stays as it is
        handler = logging.StreamHandler(stream)
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name,
                               structlog.processors.format_exc_info]))
        root.addHandler(handler)
        root.setLevel(_LEVELS[level])


def adopt_library_logger(name: str, level: str) -> None:
    """Let a library's logger (``ray``) speak through Maze's handler, in Maze's format, at
    ``level``: its own stream handler is removed."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler):
            logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(_LEVELS[level])


class _SafePrintLogger(structlog.PrintLogger):
    """A print logger that never raises: a closed or broken log stream (``maze ... | head``) must
    not take the engine down with it."""

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError):
            pass

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _SafePrintLoggerFactory:
    def __init__(self, stream) -> None:
        self._stream = stream

    def __call__(self, *args) -> _SafePrintLogger:
        return _SafePrintLogger(self._stream)


def ensure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure logging unless the application already did."""
    if not structlog.is_configured():
        setup_logging(level, fmt)


def get_logger(name: str, **bound):
    """A lazy structlog logger: configuration applied later (``setup_logging``) still takes effect,
    so modules can create loggers at import time."""
    return structlog.get_logger(name, **bound)
