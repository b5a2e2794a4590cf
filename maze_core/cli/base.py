"""What every ``maze`` command shares: the click group ``cli``, its context object (the
configuration, a store, an engine), the usage error (exit 2), the listing group (a default
command with options of its own), and where runs are recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click_default_group import DefaultGroup

from .. import __version__
from ..errors import ConfigError, MazeError
from .output import setup_cli_logging


class UsageFailure(click.ClickException):
    exit_code = 2


class _Ctx:
    def __init__(self, config_path: str | None, verbose: bool = False):
        self.config_path = config_path
        self.verbose = verbose
        self._config = None

    @property
    def config(self):
        if self._config is None:
            from ..config import load_config
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise UsageFailure(str(exc)) from None
            level = self._config.logging.level
            if not self.verbose and level in ("DEBUG", "INFO", "WARNING"):
                # the command prints what happens (a failed task is in its table, with its
                # traceback); -v shows the engine's log too
                level = "ERROR"
            setup_cli_logging(level, self._config.logging.format)
        return self._config

    def store(self):
        from .. import plugins
        try:
            return plugins.pick("store", self.config.engine.store)(self.config)
        except MazeError as exc:
            raise click.ClickException(str(exc)) from None

    def engine(self, executor: str | None = None):
        from ..engine import Engine
        config = self.config
        if executor:
            config.engine.executor = executor
        try:
            return Engine.from_config(config, actor="cli")
        except MazeError as exc:
            raise click.ClickException(str(exc)) from None


pass_ctx = click.make_pass_decorator(_Ctx)


@click.group()
@click.version_option(__version__, prog_name="maze")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="MAZE_CONFIG",
              help="Path to config.toml (default: ./config.toml, else built-in defaults).")
@click.option("-v", "--verbose", is_flag=True, help="Show the engine's log ([logging] level) on stderr.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Maze: run workflows of Python functions, recorded as events."""
    ctx.obj = _Ctx(config_path, verbose)


class ListingGroup(DefaultGroup):
    """A group whose default command takes options of its own (``maze runs --status failed`` is
    ``maze runs list --status failed``): ``--help`` shows them next to the subcommands."""

    def _default(self) -> click.Command | None:
        return self.commands.get(self.default_cmd_name) if self.default_cmd_name else None

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        default = self._default()
        if default is None:
            return super().format_usage(ctx, formatter)
        formatter.write_usage(ctx.command_path, " ".join(default.collect_usage_pieces(ctx)))
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="       ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        default = self._default()
        records = []
        if default is not None:
            helps = {p.name for p in (self.get_help_option(ctx), default.get_help_option(ctx)) if p}
            records += [r for p in default.get_params(ctx) if isinstance(p, click.Option)
                        and p.name not in helps and (r := p.get_help_record(ctx)) is not None]
        records += [r for p in self.get_params(ctx) if (r := p.get_help_record(ctx)) is not None]
        if records:
            title = f"Options (of {self.default_cmd_name}, the default)" if default is not None else "Options"
            with formatter.section(title):
                formatter.write_dl(records)
        self.format_commands(ctx, formatter)


def _store_path(config: Any) -> Path | None:
    """The file of the configured store when Maze knows it (SQLite), else None."""
    if config.engine.store != "sqlite":
        return None
    return config.data_dir / config.sqlite.filename


def _usual_store_path() -> Path:
    """Where runs are recorded with no config.toml and no MAZE_PATHS_* set, from this folder."""
    from ..config import MazeConfig
    return (Path.cwd() / MazeConfig().paths.data_dir / MazeConfig().sqlite.filename).resolve()


def _expand_run_id(store: Any, prefix: str) -> str:
    if store.get_run(prefix) is not None:
        return prefix
    matches = [r["run_id"] for r in store.list_runs(limit=10000) if r["run_id"].startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise click.ClickException(f"run {prefix!r} does not exist")
    raise click.ClickException(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches[:5])}")
