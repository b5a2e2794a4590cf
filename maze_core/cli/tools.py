"""``maze tools``: list, show, reload and scaffold (new) tools."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import MazeError
from .base import ListingGroup, UsageFailure, _Ctx, cli, pass_ctx
from .output import echo_json


@cli.group("tools", cls=ListingGroup, default="list", default_if_no_args=True)
def tools_group() -> None:
    """Registered tools (@task functions from packages, tool folders and uploads)."""


@tools_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tools as JSON.")
@pass_ctx
def tools_list(obj: _Ctx, as_json: bool) -> None:
    """Every registered tool (name@version) with its type, source and description."""
    from ..registry import task_registry
    from ..tools import load_tools
    problems = load_tools(obj.config, task_registry)   # a listing only reads: `tools reload` records
    tools = task_registry.list_tasks()
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if as_json:
        echo_json(tools)
        return
    if not tools:
        click.echo("no tools registered (install a maze-tool-* package or set [tools] paths)")
    for t in tools:
        ref = f"{t['name']}@{t['version']}"
        click.echo(f"{ref:<32} {t['type']:<4} {t['source']:<24} {t['description']}")


@tools_group.command("show")
@click.argument("name")
@pass_ctx
def tools_show(obj: _Ctx, name: str) -> None:
    """One tool's metadata as JSON: NAME or NAME@VERSION (refused if another version is installed)."""
    from ..registry import task_registry
    from ..tools import load_tools
    load_tools(obj.config, task_registry)
    tool_name, _, version = name.partition("@")
    try:
        entry = task_registry.get(tool_name)
    except MazeError as exc:
        raise click.ClickException(str(exc)) from None
    if version and version != entry.version:
        raise click.ClickException(f"tool {tool_name!r} is version {entry.version} here, not {version}")
    echo_json({"ref": f"{entry.name}@{entry.version}", "source": entry.source, "digest": entry.digest,
                **entry.meta.to_dict()})


@tools_group.command("reload")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def tools_reload(obj: _Ctx, as_json: bool) -> None:
    """Re-read installed tool packages and [tools] paths and record what changed.

    Packages installed, upgraded or uninstalled (pip) since the log last saw them, and tool files
    added, changed or removed in the tool folders, become ToolRegistered / ToolRemoved events, plus
    one ToolsReloaded event with this report. A running server picks them up with POST /tools/reload."""
    from .. import plugins
    from ..engine import Engine
    from ..registry import task_registry
    from ..tools import reload_tools
    config = obj.config
    # the one door into the log is an engine: here one that runs nothing (local threads, idle)
    # and follows no registry, so the report compares with the log as it was before the reload
    engine = Engine(obj.store(), plugins.pick("executor", "local")(config),
                    plugins.pick("scheduler", "fifo")(config), config=config, actor="cli")
    engine.start(resume=False, follow_registry=False)
    try:
        report = reload_tools(config, task_registry, engine, actor="cli")
    finally:
        engine.stop()
        engine.store.close()
    if as_json:
        echo_json(report.to_dict())
        return
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)
    for name, error in report.packages.failed.items():
        click.echo(f"package {name} failed to load: {error}", err=True)
    for label, names in (("registered", report.registered), ("updated", report.updated),
                         ("removed", report.removed)):
        for name in names:
            version = f"@{task_registry.get(name).version}" if name in task_registry else ""
            click.echo(f"{label:<10} {name}{version}")
    changed = len(report.registered) + len(report.updated) + len(report.removed)
    click.echo(f"{changed} changed, {len(report.unchanged)} unchanged, {len(task_registry)} tools")
    if report.packages.failed:
        sys.exit(1)


@tools_group.command("new")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder in which maze-tool-NAME/ is created.")
@click.option("--force", is_flag=True, help="Overwrite the scaffold's files in an existing folder.")
def tools_new(name: str, parent: Path, force: bool) -> None:
    """Scaffold a tool package maze-tool-NAME: pyproject with an entry point, one @task, one test.

    NAME: lowercase letters and digits, words joined by '-' or '_' (e.g. sentiment, pdf-tables).
    The package passes its own test as it is (python -m pytest in its folder)."""
    from ..scaffold import ScaffoldError, next_steps, scaffold_tool_package
    try:
        target = scaffold_tool_package(name, parent, force=force)
    except ScaffoldError as exc:
        raise UsageFailure(str(exc)) from None
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    click.echo(f"created {target}/: {', '.join(files)}")
    steps = next_steps(target)  # each line works as typed, in order, from this folder
    width = max(len(command) for command, _ in steps)
    click.echo("next, from this folder:\n" + "\n".join(f"  {command:<{width}}  # {comment}"
                                                       for command, comment in steps))
