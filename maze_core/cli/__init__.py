"""The ``maze`` command line, a package of one job per module:

- ``base``: the click group ``cli``, its context ``_Ctx``, the usage error, the listing group
- ``running``: ``maze run`` / ``demo`` / ``resume`` and loading a workflow file
- ``runs``: ``maze runs`` (list, show) and ``maze events`` (show, verify, replay)
- ``tools``: ``maze tools`` (list, show, reload, new)
- ``settings``: ``maze plugins`` and ``maze config``
- ``output``: what the commands print (tables, events, progress bars)

Plugins add commands with ``register_commands(cli)``, called by :func:`main`.

Exit codes: 0 success; 1 a run ended failed or cancelled, or an operation failed; 2 bad input
(configuration, workflow file, validation).
"""

from __future__ import annotations

import sys

import click

from ..errors import MazeError
from . import running, runs, settings, tools  # noqa: F401 - each registers its commands on ``cli``
from .base import ListingGroup, UsageFailure, _Ctx, cli, pass_ctx
from .output import RunProgress
from .running import DEMO_EXAMPLES, _load_workflow_file, _run_dag

__all__ = ["DEMO_EXAMPLES", "ListingGroup", "RunProgress", "UsageFailure", "_Ctx", "_load_workflow_file",
           "_run_dag", "cli", "main", "pass_ctx"]


def _register_plugin_commands() -> None:
    from ..plugins import load_plugins
    load_plugins().hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    _register_plugin_commands()
    try:
        cli.main(args=argv, prog_name="maze", standalone_mode=True)
    except MazeError as exc:  # anything not already turned into a clean CLI error
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
