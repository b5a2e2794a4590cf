"""Serves maze_api with uvicorn: ``maze start``, ``maze stop`` and ``maze token new``.

``maze start`` runs the engine, the store and the executor in the server's own process, resuming
unfinished runs, and writes ``{data_dir}/server.json`` (pid, host, port, url) once it accepts
connections; the file is removed when it exits. ``maze stop`` sends SIGTERM to the process named
there, waits for it to finish, then stops the cluster head that ``maze start --head`` started.

``--head`` is the business of whichever plugin implements the ``start_cluster_head`` and
``stop_cluster_head`` hooks (the Ray plugin, ``maze_ray``): this one names no executor.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from maze_core import hookimpl
from maze_core.procs import process_alive, process_started

SERVER_FILE = "server.json"


def _alive(info: dict[str, Any]) -> bool:
    """Whether the process recorded in server.json is still that process."""
    return process_alive(info.get("pid"), info.get("process_started"))


def read_server_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((data_dir / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _write_server_file(data_dir: Path, info: dict[str, Any]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{SERVER_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, data_dir / SERVER_FILE)


def _remove_server_file(data_dir: Path) -> None:
    info = read_server_file(data_dir)
    if info is not None and info.get("pid") == os.getpid():
        (data_dir / SERVER_FILE).unlink(missing_ok=True)


def _serve(config: Any, host: str, port: int, ray_head: str | None = None) -> None:
    import uvicorn

    from maze_api import create_app

    app = create_app(config)
    data_dir = config.data_dir

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # a requested stop is a normal exit: clean up and return 0 rather than have uvicorn
            # re-raise the signal once it has shut down
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            _own_sigterm()
            if self.should_exit or not self.servers:
                return
            bound = self.servers[0].sockets[0].getsockname()
            url_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            _write_server_file(data_dir, {
                "pid": os.getpid(), "process_started": process_started(os.getpid()),
                "host": bound[0], "port": bound[1], "url": f"http://{url_host}:{bound[1]}",
                "started_at": time.time(), "config": config.source, "ray_head": ray_head})

    level = config.logging.level.lower()
    server = Server(uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=level,
                                   log_config=None, timeout_graceful_shutdown=5, server_header=False))
    try:
        server.run()
    finally:
        _remove_server_file(data_dir)
    if not server.started:
        raise click.ClickException(f"the server could not start on {host}:{port} (see the log above)")


def _reexec_without_tokens() -> None:
    """Start this command again without ``MAZE_SERVER_TOKENS`` in its environment, the tokens
    handed over through a pipe (``MAZE_SERVER_TOKENS_FD``). Removing the variable from
    ``os.environ`` is not enough: ``/proc/<pid>/environ`` keeps the environment a process started
    with, and any task could read every plain token there."""
    from maze_core.config import TOKENS_FD_VAR
    data = os.environ["MAZE_SERVER_TOKENS"].encode("utf-8")
    if len(data) > 60000:    # what a pipe holds before a reader takes it
        raise click.UsageError("MAZE_SERVER_TOKENS is too long; use [server] tokens_file")
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    os.set_inheritable(read, True)
    env = {k: v for k, v in os.environ.items() if k != "MAZE_SERVER_TOKENS"}
    env[TOKENS_FD_VAR] = str(read)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def _own_sigterm() -> None:
    """Starting Ray installs its C++ failure handler for SIGTERM in this process, which prints a
    stack dump ("*** SIGTERM received ...") before passing the signal on: a requested stop then
    looks like a crash. Give SIGTERM back to the Python handler uvicorn set (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


HEAD_MISSING = ("--head needs the Ray plugin (maze_ray), or another plugin that implements the "
                "start_cluster_head hook; none is loaded")


def _start_head(config: Any, port: int, host: str | None, server_host: str) -> str:
    """``--head``: the plugin that starts a cluster head does, and points ``config`` at it."""
    from maze_core.errors import MazeError
    from maze_core.plugins import load_plugins
    hook = load_plugins().hook.start_cluster_head
    if not hook.get_hookimpls():
        raise click.ClickException(HEAD_MISSING + _restricted())
    try:
        address = hook(config=config, port=port, host=host, server_host=server_host)
    except MazeError as exc:
        raise click.ClickException(str(exc)) from None
    if not address:
        raise click.ClickException(HEAD_MISSING + _restricted())
    return str(address)


def _restricted() -> str:
    from maze_core.plugins import allowed_plugins
    return " (MAZE_LOAD_PLUGINS is set)" if allowed_plugins() is not None else ""


def _stop_head(config: Any, address: str) -> bool:
    """Stop the head ``maze start --head`` started, through the plugin that started it."""
    from maze_core.plugins import load_plugins
    return bool(load_plugins().hook.stop_cluster_head(config=config, address=address))


@hookimpl
def register_commands(cli: Any) -> None:
    @cli.command("start")
    @click.option("--host", default=None, help="Address to bind (default: [server] host, 127.0.0.1).")
    @click.option("--port", type=click.IntRange(0, 65535), default=None,
                  help="Port to listen on (default: [server] port, 8000).")
    @click.option("--head", is_flag=True, help="Also start a Ray head node here and run tasks on it.")
    @click.option("--ray-port", type=click.IntRange(1, 65535), default=6379, show_default=True,
                  help="Port of the Ray head (with --head).")
    @click.option("--ray-host", default=None,
                  help="Address the Ray head listens on (with --head; default: 127.0.0.1 when the "
                       "server binds loopback, else this machine's address, so workers can join).")
    @click.pass_obj
    def start_cmd(obj: Any, host: str | None, port: int | None, head: bool, ray_port: int,
                  ray_host: str | None) -> None:
        """Serve the Maze API (engine, store and executor in this process) until stopped."""
        from maze_core.errors import ConfigError, MazeError
        from maze_core.logging import setup_logging

        if "MAZE_SERVER_TOKENS" in os.environ and os.path.basename(sys.argv[0]) == "maze":
            _reexec_without_tokens()
        config = obj.config
        setup_logging(config.logging.level, config.logging.format)   # the server logs at its level
        if host is not None:
            config.server.host = host
        if port:
            config.server.port = port
        host, port = config.server.host, port if port is not None else config.server.port
        data_dir = config.data_dir
        running = read_server_file(data_dir)
        if running is not None and _alive(running):
            raise click.ClickException(f"a Maze server is already running from {data_dir} "
                                       f"(pid {running['pid']}, {running.get('url')}); `maze stop` first")
        try:   # check the security settings before starting anything
            from maze_api.auth import TokenTable, check_exposure
            check_exposure(config, TokenTable.from_config(config))   # hashes the tokens in config
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        # plain tokens given through the environment must not reach the processes this one starts
        # (executor workers inherit its environment)
        os.environ.pop("MAZE_SERVER_TOKENS", None)
        address = None
        if head:   # the plugin that starts the head also points the executor at it
            address = _start_head(config, ray_port, ray_host, host)
            click.echo(f"Ray head started at {address}; workers join with `maze worker --address {address}`",
                       err=True)
        try:
            _serve(config, host, port, ray_head=address)
        except MazeError as exc:
            raise click.ClickException(str(exc)) from None

    @cli.command("stop")
    @click.option("--timeout", type=float, default=30.0, show_default=True,
                  help="Seconds to wait for the server to finish.")
    @click.pass_obj
    def stop_cmd(obj: Any, timeout: float) -> None:
        """Stop the server started by `maze start` (and the Ray head `maze start --head` started)."""
        data_dir = obj.config.data_dir
        info = read_server_file(data_dir)
        if info is None:
            click.echo(f"no Maze server is running from {data_dir}")
            return
        elif not _alive(info):
            (data_dir / SERVER_FILE).unlink(missing_ok=True)
            click.echo(f"the server (pid {info.get('pid')}) was not running; removed its stale {SERVER_FILE}")
        else:
            pid = info["pid"]
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(info) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(info):
                raise click.ClickException(f"the server (pid {pid}) did not stop within {timeout:g}s")
            (data_dir / SERVER_FILE).unlink(missing_ok=True)
            click.echo(f"stopped the Maze server (pid {pid})")
        if not info.get("ray_head"):
            return   # no head of ours: never stop a cluster someone else runs on this machine
        if _stop_head(obj.config, info["ray_head"]):
            click.echo(f"stopped the Ray head ({info['ray_head']})")

    @cli.group("token")
    def token_group() -> None:
        """API tokens for [server] tokens."""

    @token_group.command("new")
    @click.argument("name")
    def token_new(name: str) -> None:
        """Print a fresh token for NAME and the config line holding only its hash."""
        from maze_api.auth import check_token_name, hash_token
        from maze_core.errors import ConfigError
        try:
            check_token_name(name, "maze token new")   # an entry [server] tokens would refuse is no use
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        token = secrets.token_urlsafe(32)
        click.echo(f"token (give it to {name}; it is shown once): {token}")
        click.echo(f'[server] tokens entry: "{name}={hash_token(token)}"')
