"""``create_app``: the FastAPI application of the Maze server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from maze_core import __version__
from maze_core.config import MazeConfig
from maze_core.logging import ensure_logging, get_logger

from .auth import TokenTable, check_exposure
from .context import MB, ServerContext
from .errors import install_handlers
from .limits import BodyLimitMiddleware
from .routes import events, files, runs, system, tools
from .tools import UploadedTools

log = get_logger("maze.api")

DESCRIPTION = """\
The Maze server: submit workflows of Python functions, follow their runs, fetch results and files,
manage tools. Authenticate with `Authorization: Bearer <token>` (tokens from `[server] tokens`).

**Submitting a workflow runs its code on the server and its workers.** A token is the right to run
code there: give tokens only to people you would give a shell. Tool upload, deletion and reload
need an admin token. A run is visible only to the token that submitted it (and to admins).
"""


def create_app(config: MazeConfig, engine: Any = None) -> FastAPI:
    """The API app. With ``engine=None`` it builds ``Engine.from_config(config, actor="server")``,
    starts it in the lifespan (resuming unfinished runs) and stops it on shutdown; a given engine
    belongs to the caller, who starts and stops it.

    Raises ``ConfigError`` for a bad token configuration, and when ``[server] host`` is not a
    loopback address and no token is configured."""
    ensure_logging(config.logging.level, config.logging.format)
    tokens = TokenTable.from_config(config)
    check_exposure(config, tokens)
    owns_engine = engine is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng = engine
        if owns_engine:
            eng = await run_in_threadpool(_start_engine, config)
        ctx = ServerContext(config, eng, tokens)
        if not owns_engine:
            await run_in_threadpool(UploadedTools(ctx.tools_root, eng.registry, ctx.archive_limits, eng).load_all)
        app.state.maze = ctx
        log.info("server ready", executor=getattr(eng.executor, "name", None), auth=tokens.enabled,
                 tokens=len(tokens))
        try:
            yield
        finally:
            app.state.maze = None
            if owns_engine:
                await run_in_threadpool(_stop_engine, eng)

    app = FastAPI(title="Maze", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.maze = None
    app.state.maze_tokens = tokens
    app.state.maze_config = config
    install_handlers(app)
    for module in (runs, files, tools, events, system):
        app.include_router(module.router)
    if config.server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.server.cors_origins),
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                           allow_credentials=False, max_age=600)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(config.server.max_body_mb * MB), tokens=tokens)
    from maze_core.plugins import load_plugins
    load_plugins().hook.register_routes(app=app)
    return app


def _start_engine(config: MazeConfig) -> Any:
    from maze_core.engine import Engine
    eng = Engine.from_config(config, actor="server")
    # uploaded tools are registered before the engine starts, so that its tool sync sees them
    UploadedTools(ServerContext.tools_root_of(config), eng.registry,
                  ServerContext.archive_limits_of(config), eng).load_all()
    try:
        resumed = eng.start(resume=True)
    except BaseException:
        eng.store.close()
        raise
    if resumed:
        log.info("runs resumed", runs=resumed)
    return eng


def _stop_engine(eng: Any) -> None:
    try:
        eng.stop()
    finally:
        eng.store.close()
