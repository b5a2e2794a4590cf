"""Serving an app for tests: a real uvicorn server on a free loopback port, in a thread.

    with serve(create_app(config, engine)) as url:
        httpx.get(url + "/health")
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn


class ServerThread:
    """uvicorn in a daemon thread; ``url`` once started."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, graceful_s: float = 1.0):
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                     timeout_graceful_shutdown=graceful_s, access_log=False)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="maze-test-server", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server failed to start (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError("the test server did not start in time")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


@contextlib.contextmanager
def serve(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` on a free port of ``host`` for the duration of the block; yields its URL."""
    server = ServerThread(app, host=host)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Leave structlog and the stdlib root logger as they were: an app or engine built inside
    configures logging once per process (``ensure_logging``), which later tests would inherit."""
    configured = structlog.is_configured()
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        if configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
