"""Every extension point of Maze, as pluggy hookspecs.

Plugins implement them with ``@maze_core.hookimpl`` and are found through the entry-point group
``maze`` (``[project.entry-points.maze] name = "module"``). Hooks named ``register_*`` receive a
``register`` callback: call it once per thing the plugin provides.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("maze")
hookimpl = pluggy.HookimplMarker("maze")


@hookspec
def register_stores(register: Any) -> None:
    """Provide event-store backends.

    Call ``register(name, factory)``; ``factory(config: MazeConfig) -> EventStore``. The store named
    by ``[engine] store`` is used. Run ``maze_core.testing.store_contract`` against your store."""


@hookspec
def register_executors(register: Any) -> None:
    """Provide executors: where task bodies run.

    Call ``register(name, factory)``; ``factory(config: MazeConfig) -> Executor``. The executor named
    by ``[engine] executor`` is used. Run ``maze_core.testing.executor_contract`` against yours."""


@hookspec
def register_schedulers(register: Any) -> None:
    """Provide scheduling policies that order ready tasks.

    Call ``register(name, factory)``; ``factory(config: MazeConfig) -> Scheduler``. The policy named
    by ``[engine] scheduler`` is used."""


@hookspec
def register_config_sections(register: Any) -> None:
    """Describe the plugin's own sections of config.toml, so that `maze config` shows them with
    their defaults even when no file sets them.

    Call ``register(name, schema)`` per section: ``schema`` is a pydantic model of the section
    (validated against the file and ``MAZE_<NAME>_<KEY>`` variables) or a dict of its defaults."""


@hookspec
def register_tools(register: Any) -> None:
    """Hand over ``@task`` functions from a tool package.

    Call ``register(func)`` for each decorated function; it lands in the task registry with
    ``package:<entry-point name>`` as its source and the version its ``@task`` declares, and the
    registration is recorded as a ``ToolRegistered`` event. A hook that raises is logged and
    skipped; the other packages' tools still register (seed 003's fail-safe rule)."""


@hookspec
def on_event(event: Any) -> None:
    """Observe every committed event (``maze_core.events.Event``).

    Called on a dedicated thread after the event is durable, in the order the engine committed
    them, with a copy of the event's payload. Must not block for long: the engine never waits for observers; if they fall more than
    10,000 batches behind, further batches are dropped for them (and counted)."""


@hookspec
def register_routes(app: Any) -> None:
    """Extend the HTTP server: ``app`` is the FastAPI application; add routers or routes to it."""


@hookspec
def register_commands(cli: Any) -> None:
    """Extend the ``maze`` command line: ``cli`` is the root click group; add commands to it."""
