"""``maze plugins`` and ``maze config``: what is installed and what is configured."""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigError
from .base import UsageFailure, _Ctx, cli, pass_ctx
from .output import echo_json


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_cmd(as_json: bool) -> None:
    """Installed plugins: name, package, version and the hooks they implement."""
    from ..plugins import get_plugins
    plugins = get_plugins()
    if as_json:
        echo_json(plugins)
        return
    for p in plugins:
        status = f"  ERROR: {p['error']}" if p.get("error") else ""
        click.echo(f"{p['name']:<12} {p['package'] or '-'} {p['version'] or ''}  hooks: "
                   f"{', '.join(p['hooks']) or '-'}{status}")


@cli.command("config")
@pass_ctx
def config_cmd(obj: _Ctx) -> None:
    """Print the effective configuration as JSON: every section, Maze's and the plugins', with
    the defaults, the file's values and MAZE_* overrides."""
    cfg = obj.config
    try:
        sections = cfg.effective(_plugin_config_sections())
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None
    echo_json({"source": cfg.source, **sections, "data_dir (resolved)": str(cfg.data_dir)})


def _plugin_config_sections() -> dict[str, Any]:
    """What the loaded plugins say of their own config sections (``register_config_sections``:
    ``register(name, pydantic model or dict of defaults)``)."""
    from ..plugins import load_plugins
    found: dict[str, Any] = {}
    hook = getattr(load_plugins().hook, "register_config_sections", None)
    if hook is not None:
        hook(register=lambda name, schema: found.setdefault(name, schema))
    return found
