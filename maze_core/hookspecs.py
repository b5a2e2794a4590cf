"""Every extension point of Maze, as pluggy hookspecs.

Plugins implement them with ``@maze_core.hookimpl`` and are found through the entry-point group
``maze`` (``[project.entry-points.maze] name = "module"``). Hooks named ``register_*`` receive a
``register`` callback: call it once per thing the plugin provides. ``start_cluster_head`` and
``stop_cluster_head`` are ``firstresult`` hooks: the first plugin that returns something answers.
Every hook has a test in ``tests/test_plugins.py`` (``@covers("hook")``); a hook without one fails
``test_every_hook_has_a_test``.
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
    or a dict of its defaults. A model is checked against the file and the ``MAZE_<NAME>_<KEY>``
    variables when the configuration is read (the error names the key), and the plugin reads its
    section as that model: ``config.plugin_section(name, Model)``, or ``config.<name>``."""


@hookspec
def register_tools(register: Any) -> None:
    """Hand over ``@task`` functions from a tool package.

    Call ``register(func)`` for each decorated function; it lands in the task registry with
    ``package:<entry-point name>`` as its source and the version its ``@task`` declares, and the
    registration is recorded as a ``ToolRegistered`` event. A hook that raises is logged and
    skipped; the other packages' tools still register (the task registry's fail-safe rule)."""


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


@hookspec(firstresult=True)
def start_cluster_head(config: Any, port: int, host: str | None, server_host: str) -> str | None:
    """Start the head of a cluster on this machine for ``maze start --head``, and point this
    process's executor at it (by changing ``config``, which the server then uses).

    ``port`` and ``host`` are ``--ray-port`` and ``--ray-host`` (``host`` None: the plugin picks,
    e.g. loopback when ``server_host``, the address the server binds, is loopback). Return the
    head's address (``HOST:PORT``), which ``stop_cluster_head`` gets back; return None to leave it
    to another plugin. The first address returned wins. Raise ``MazeError`` when the head cannot
    start."""


@hookspec(firstresult=True)
def stop_cluster_head(config: Any, address: str) -> bool | None:
    """Stop the cluster head that ``start_cluster_head`` started at ``address``, for ``maze stop``.

    Return True once stopped; None when the head is not this plugin's. Called only when the server
    that ``maze stop`` ends had started a head, so a cluster someone else runs is left alone."""
