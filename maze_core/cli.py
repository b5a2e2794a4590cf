"""The ``maze`` command line.

Exit codes: 0 success; 1 a run ended failed or cancelled, or an operation failed; 2 bad input
(configuration, workflow file, validation).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
from click_default_group import DefaultGroup

from . import __version__
from . import events as ev
from .cli_output import RunProgress, echo_json, event_line, log_progress, print_run, setup_cli_logging
from .errors import ConfigError, DAGValidationError, MazeError, TaskDefinitionError
from .state import RUN_STATUSES

__all__ = ["RunProgress", "cli", "main"]


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
            from .config import load_config
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
        from . import plugins
        try:
            return plugins.pick("store", self.config.engine.store)(self.config)
        except MazeError as exc:
            raise click.ClickException(str(exc)) from None

    def engine(self, executor: str | None = None):
        from .engine import Engine
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


# ---------------------------------------------------------------------------- maze run / demo / resume
def _load_workflow_file(path: Path, dag_name: str | None) -> Any:
    import cloudpickle

    from .dag import DAG
    from .registry import import_file
    if not path.is_file():
        raise UsageFailure(f"{path}: no such file")
    folder = path.resolve().parent
    sys.path.insert(0, str(folder))
    before = set(sys.modules)
    try:
        module = import_file(path.resolve())
    except (DAGValidationError, TaskDefinitionError) as exc:
        raise UsageFailure(f"{path}: {exc}") from None
    except Exception as exc:
        raise UsageFailure(f"{path}: failed to load: {type(exc).__name__}: {exc}") from None
    # The file and the modules it imported from its own folder are not importable by name in
    # another process: ship their functions by value, so that a resumed run (or a remote worker)
    # can still load them from the log.
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder) and not _installed(Path(file)):
            cloudpickle.register_pickle_by_value(mod)
    dags = {name: value for name, value in vars(module).items() if isinstance(value, DAG)}
    if dag_name:
        if dag_name not in dags:
            raise UsageFailure(f"{path}: no DAG named {dag_name!r}; found: {', '.join(dags) or 'none'}")
        return dags[dag_name]
    if "dag" in dags:
        return dags["dag"]
    if len(dags) == 1:
        return next(iter(dags.values()))
    if not dags:
        raise UsageFailure(f"{path}: defines no DAG; build one at module level, e.g. dag = DAG('name')")
    raise UsageFailure(f"{path}: defines several DAGs ({', '.join(dags)}); choose one with --dag")


def _installed(file: Path) -> bool:
    """A module from an installed distribution (a virtualenv inside the project folder)."""
    return any(part in ("site-packages", "dist-packages") for part in file.parts)


def _run_dag(obj: _Ctx, dag: Any, name: str | None, executor: str | None, progress: bool,
             as_json: bool, show_sinks: bool = True) -> dict[str, dict[str, Any]]:
    """Run ``dag`` (a DAG, or a function of the started engine that builds one) to its end, print
    it and return its tasks; exit 1 if it did not succeed."""
    from .dag import DAG
    engine = obj.engine(executor)
    engine.start(resume=False)
    try:
        if not isinstance(dag, DAG):
            try:
                dag = dag(engine)
            except (RuntimeError, ValueError) as exc:
                raise UsageFailure(str(exc)) from None
        with RunProgress(engine, enabled=progress and not as_json) as bar:
            try:
                run_id = engine.submit(dag, name=name)
            except DAGValidationError as exc:
                raise UsageFailure("invalid workflow:\n  " + "\n  ".join(exc.problems)) from None
            if not as_json:
                bar.echo(f"run {run_id} submitted ({len(dag.tasks)} tasks)")
            try:
                run = engine.wait(run_id)
            except KeyboardInterrupt:
                bar.echo(f"interrupted: run {run_id} stays unfinished in the log; "
                         f"`maze resume {run_id}` finishes it")
                sys.exit(130)
    finally:
        engine.stop(wait=False)
    tasks = print_run(engine.store, run_id, as_json)
    if not as_json and show_sinks and run["status"] == "succeeded":
        for sink in dag.sinks():
            click.echo(f"{sink} -> {json.dumps(tasks[sink].get('result'), ensure_ascii=False)}")
    if run["status"] != "succeeded":
        sys.exit(1)
    return tasks


@cli.command("run")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dag", "dag_name", help="Name of the DAG variable, if the file defines several.")
@click.option("--name", help="Name of the run (default: the DAG's name).")
@click.option("--executor", help="Executor plugin to use (overrides [engine] executor).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on a terminal.")
@click.option("--json", "as_json", is_flag=True, help="Print the run and its results as JSON.")
@pass_ctx
def run_cmd(obj: _Ctx, file: Path, dag_name: str | None, name: str | None, executor: str | None,
            progress: bool, as_json: bool) -> None:
    """Run the workflow defined in a Python FILE and print its results."""
    obj.config  # noqa: B018 - configuration errors first
    dag = _load_workflow_file(file, dag_name)
    _run_dag(obj, dag, name, executor, progress, as_json)


DEMO_EXAMPLES = {
    "basic": "fan-out, fan-in, a retried failure and a summary",
    "rag": "read documents, chunk, embed (a real model, one branch per document), index, answer "
           "questions with sources (needs the maze-tool-* packages and torch)",
}


@cli.command("demo")
@click.option("--example", type=click.Choice(sorted(DEMO_EXAMPLES)), default="basic", show_default=True,
              help="Which example: " + "; ".join(f"{k}: {v}" for k, v in DEMO_EXAMPLES.items()) + ".")
@click.option("--docs", type=click.Path(file_okay=False, path_type=Path),
              help="rag: folder of documents to read (default: the bundled ones).")
@click.option("-q", "--question", "questions", multiple=True,
              help="rag: a question to answer (repeatable; default: the bundled ones).")
@click.option("--executor", help="Executor plugin to use (overrides [engine] executor).")
@click.option("--progress/--no-progress", default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def demo_cmd(obj: _Ctx, example: str, docs: Path | None, questions: tuple[str, ...],
             executor: str | None, progress: bool, as_json: bool) -> None:
    """Run a bundled example workflow (default: fan-out, fan-in, a retried failure and a summary)."""
    if example == "basic":
        from .demo import build_demo_dag
        _run_dag(obj, build_demo_dag(), "maze-demo", executor, progress, as_json)
        return
    from .demo.examples import ExampleNotFound, load_example
    try:
        rag = load_example("rag")   # examples/rag/rag_pipeline.py, by its path: the core imports no example
        rag.require_tools()  # before the engine starts: a clear message, nothing recorded
    except (ExampleNotFound, RuntimeError) as exc:
        raise UsageFailure(str(exc)) from None
    obj.config  # noqa: B018 - configuration errors first
    started = time.perf_counter()
    tasks = _run_dag(obj, lambda engine: rag.build_rag_dag(
        docs if docs is not None else rag.DOCS, list(questions) or None,
        on_gpu=rag.gpu_available(engine.executor)), "maze-demo-rag", executor, progress, as_json,
        show_sinks=False)
    if not as_json:
        report = next(t["result"] for t in tasks.values() if t["name"] == "report")
        click.echo("\n" + rag.format_report(report, time.perf_counter() - started))


@cli.command("resume")
@click.argument("run_ids", nargs=-1)
@click.option("--force", is_flag=True, help="Resume even runs whose owning process looks alive.")
@click.option("--executor", help="Executor plugin to use (overrides [engine] executor).")
@click.option("--progress/--no-progress", default=True)
@pass_ctx
def resume_cmd(obj: _Ctx, run_ids: tuple[str, ...], force: bool, executor: str | None, progress: bool) -> None:
    """Finish unfinished runs (all of them, or RUN_IDS; a prefix is enough) without re-running
    finished tasks."""
    where = _store_path(obj.config)
    if not run_ids and where is not None and not where.exists():   # no store here: nothing ran
        click.echo("nothing to resume")
        return
    store = obj.store()
    try:   # the log first: no engine (no Ray) is started when there is nothing to take over
        candidates, skipped = _resumable(store, run_ids, force)
    finally:
        store.close()
    for run_id, reason in skipped.items():
        click.echo(f"run {run_id} not resumed: {reason}", err=True)
    rows: list[dict[str, Any]] = []
    if candidates:
        engine = obj.engine(executor)
        engine.start(resume=False)
        try:
            with RunProgress(engine, enabled=progress) as bar:
                try:
                    report = engine.resume(candidates, force=force)
                except MazeError as exc:
                    raise click.ClickException(str(exc)) from None
                for run_id, reason in report.skipped.items():
                    bar.echo(f"run {run_id} not resumed: {reason}")
                skipped.update(report.skipped)
                rows = [engine.wait(run_id) for run_id in report.resumed]
        finally:
            engine.stop(wait=False)
    if not rows:
        click.echo("nothing to resume")
        if skipped:
            sys.exit(1)
        return
    failed = False
    for row in rows:
        click.echo(f"run {row['run_id']} {row['status']}")
        failed = failed or row["status"] != "succeeded"
    if failed:
        sys.exit(1)


def _resumable(store: Any, run_ids: tuple[str, ...], force: bool) -> tuple[list[str], dict[str, str]]:
    """From the log alone: the unfinished runs worth starting an engine for, and the runs left
    alone with the reason (already finished; driven by a live process on this host, unless
    ``force``). The engine checks again, and checks more, when it takes them over."""
    from .procs import process_alive
    from .state import RunState
    if run_ids:
        wanted = [_expand_run_id(store, run_id) for run_id in run_ids]
    else:
        wanted, offset = [], 0
        while True:
            page = store.list_runs(status="running", limit=500, offset=offset)
            wanted += [r["run_id"] for r in page]
            if len(page) < 500:
                break
            offset += 500
    here = socket.gethostname()
    candidates, skipped = [], {}
    for run_id in dict.fromkeys(wanted):
        state = RunState.from_events(run_id, store.read_stream(ev.run_stream(run_id)))
        if state.finished:
            skipped[run_id] = f"it has already {state.status}"
            continue
        driver = state.driver
        if (not force and driver.get("host") == here and driver.get("pid") != os.getpid()
                and process_alive(driver.get("pid"), driver.get("started"))):
            skipped[run_id] = (f"process {driver.get('pid')} on this host is still driving it "
                               f"(use --force to take it over)")
            continue
        candidates.append(run_id)
    return candidates, skipped


# ---------------------------------------------------------------------------- maze runs / events
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


@cli.group("runs", cls=ListingGroup, default="list", default_if_no_args=True)
def runs_group() -> None:
    """List runs, newest first (maze runs [OPTIONS]), or show one (maze runs show RUN)."""


@runs_group.command("list")
@click.option("--status", type=click.Choice(list(RUN_STATUSES)),
              help="Only runs with this status (running: unfinished).")
@click.option("--name", help="Only runs whose name contains this text.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="Most runs to list.")
@click.option("--offset", type=click.IntRange(0), default=0, help="Runs to skip (paging).")
@click.option("--json", "as_json", is_flag=True, help="Print {total, runs} as JSON.")
@pass_ctx
def runs_list(obj: _Ctx, status: str | None, name: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List runs, newest first."""
    where = _store_path(obj.config)
    if where is not None and not where.exists():   # nothing recorded there: don't create a store
        rows, total, stored = [], 0, 0
    else:
        store = obj.store()
        try:
            rows = store.list_runs(status=status, name=name, limit=limit, offset=offset)
            total = store.count_runs(status=status, name=name)
            stored = total if status is None and name is None else store.count_runs()
        finally:
            store.close()
    shown_where = where or obj.config.data_dir
    if stored == 0:
        click.echo(f"no runs recorded in {shown_where}" + (
            "" if where != _usual_store_path() else
            " (a folder without a config.toml keeps its runs in its own .maze/: run `maze runs` in "
            "the folder you ran them from, or point --config or MAZE_PATHS_DATA_DIR at their store)"),
            err=True)
    elif where != _usual_store_path():
        click.echo(f"store: {shown_where}", err=True)
    if as_json:
        echo_json({"total": total, "runs": rows})
        return
    from rich.table import Table
    from rich.text import Text

    from .cli_output import fmt_ts, make_console
    table = Table("run", "name", "status", "tasks", "created", "finished")
    for r in rows:
        table.add_row(r["run_id"], Text(r["name"] or ""), r["status"], str(r["tasks_total"]),
                      fmt_ts(r["created_at"]), fmt_ts(r["finished_at"]))
    make_console().print(table)
    click.echo(f"{len(rows)} of {total} runs")


def _store_path(config: Any) -> Path | None:
    """The file of the configured store when Maze knows it (SQLite), else None."""
    if config.engine.store != "sqlite":
        return None
    return config.data_dir / config.sqlite.filename


def _usual_store_path() -> Path:
    """Where runs are recorded with no config.toml and no MAZE_PATHS_* set, from this folder."""
    from .config import MazeConfig
    return (Path.cwd() / MazeConfig().paths.data_dir / MazeConfig().sqlite.filename).resolve()


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def runs_show(obj: _Ctx, run_id: str, as_json: bool) -> None:
    """Show one run: every task with its status, attempts, duration and result or error."""
    store = obj.store()
    print_run(store, _expand_run_id(store, run_id), as_json)


def _expand_run_id(store: Any, prefix: str) -> str:
    if store.get_run(prefix) is not None:
        return prefix
    matches = [r["run_id"] for r in store.list_runs(limit=10000) if r["run_id"].startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise click.ClickException(f"run {prefix!r} does not exist")
    raise click.ClickException(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches[:5])}")


@cli.group("events", cls=ListingGroup, default="show")
def events_group() -> None:
    """The event log: maze events RUN, maze events verify, maze events replay."""


@events_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def events_show(obj: _Ctx, run_id: str, as_json: bool) -> None:
    """Every event of one run, in order."""
    store = obj.store()
    run_id = _expand_run_id(store, run_id)
    events = store.read_stream(ev.run_stream(run_id))
    if as_json:
        for event in events:
            click.echo(json.dumps(event.to_dict(), ensure_ascii=False, default=str))
        return
    from .cli_output import EVENT_HEADER
    click.echo(EVENT_HEADER)
    for event in events:
        click.echo(event_line(event))


@events_group.command("verify")
@pass_ctx
def events_verify(obj: _Ctx) -> None:
    """Prove that no event was edited, dropped or reordered (recompute the hash chain)."""
    from .audit import verify_chain
    with log_progress("verifying the hash chain") as progress:
        report = verify_chain(obj.store(), progress)
    if report.ok:
        click.echo(f"ok: {report.events} events, hash chain intact")
        return
    raise click.ClickException(f"hash chain broken at seq {report.first_bad_seq}: {report.problem}")


@events_group.command("replay")
@click.option("--fix", is_flag=True, help="Rebuild the projections from the log if they differ.")
@pass_ctx
def events_replay(obj: _Ctx, fix: bool) -> None:
    """Fold the whole log again and compare with the stored projections."""
    from .audit import replay_check
    store = obj.store()
    with log_progress("replaying the log") as progress:
        diffs = replay_check(store, progress)
    if not diffs:
        click.echo("ok: projections match the log")
        return
    for line in diffs[:50]:
        click.echo(line)
    if fix:
        store.rebuild_projections()
        click.echo(f"rebuilt projections ({len(diffs)} differences fixed)")
        return
    raise click.ClickException(f"{len(diffs)} differences; run with --fix to rebuild")


# ---------------------------------------------------------------------------- plugins / tools / config
@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_cmd(as_json: bool) -> None:
    """Installed plugins: name, package, version and the hooks they implement."""
    from .plugins import get_plugins
    plugins = get_plugins()
    if as_json:
        echo_json(plugins)
        return
    for p in plugins:
        status = f"  ERROR: {p['error']}" if p.get("error") else ""
        click.echo(f"{p['name']:<12} {p['package'] or '-'} {p['version'] or ''}  hooks: "
                   f"{', '.join(p['hooks']) or '-'}{status}")


@cli.group("tools", cls=ListingGroup, default="list", default_if_no_args=True)
def tools_group() -> None:
    """Registered tools (@task functions from packages, tool folders and uploads)."""


@tools_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tools as JSON.")
@pass_ctx
def tools_list(obj: _Ctx, as_json: bool) -> None:
    """Every registered tool (name@version) with its type, source and description."""
    from .registry import task_registry
    from .tools import load_tools
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
    from .registry import task_registry
    from .tools import load_tools
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
    from . import plugins
    from .engine import Engine
    from .registry import task_registry
    from .tools import reload_tools
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
    from .scaffold import ScaffoldError, next_steps, scaffold_tool_package
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
    from .plugins import load_plugins
    found: dict[str, Any] = {}
    hook = getattr(load_plugins().hook, "register_config_sections", None)
    if hook is not None:
        hook(register=lambda name, schema: found.setdefault(name, schema))
    return found


def _register_plugin_commands() -> None:
    from .plugins import load_plugins
    load_plugins().hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    _register_plugin_commands()
    try:
        cli.main(args=argv, prog_name="maze", standalone_mode=True)
    except MazeError as exc:  # anything not already turned into a clean CLI error
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
