"""The ``maze`` command line.

Exit codes: 0 success; 1 a run ended failed or cancelled, or an operation failed; 2 bad input
(configuration, workflow file, validation).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
from click_default_group import DefaultGroup

from . import __version__
from . import events as ev
from .errors import ConfigError, DAGValidationError, MazeError, TaskDefinitionError


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
            from .logging import ensure_logging
            level = self._config.logging.level
            if not self.verbose and level in ("DEBUG", "INFO"):
                level = "WARNING"  # the command prints what happens; -v shows the engine's log too
            ensure_logging(level, self._config.logging.format)
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


# ---------------------------------------------------------------------------- progress
class RunProgress:
    """Progress of the runs this engine submits or resumes, from its committed events: a rich bar
    per run on a terminal (the commands print the outcome themselves). Runs are picked up from their
    ``RunSubmitted``/``RunResumed`` events, so no task that ends early is missed."""

    def __init__(self, engine: Any, enabled: bool = True, console: Any = None):
        from rich.console import Console
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.engine = engine
        self._bars: dict[str, Any] = {}
        self._done: dict[str, int] = {}
        self._progress = None
        self._unsubscribe = None

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
                                      console=self.console)
            self._progress.start()
        self._unsubscribe = self.engine.subscribe(self._on_events)
        return self

    def _track(self, run_id: str, name: str, total: int, done: int) -> None:
        self._done[run_id] = done
        if self._progress is not None:
            self._bars[run_id] = self._progress.add_task(f"{name or 'run'} {run_id[:8]}", total=total,
                                                         completed=done, state="")

    def _on_events(self, events: list[ev.Event]) -> None:
        for i, event in enumerate(events):
            run_id = event.run_id
            if event.type == ev.RUN_SUBMITTED:
                self._track(run_id, event.data.get("name", ""), len(event.data.get("tasks", {})), 0)
                continue
            if event.type == ev.RUN_RESUMED:
                # the store already holds this whole batch: count the ends before this event only
                row = self.engine.store.get_run(run_id) or {}
                counts = row.get("task_counts", {})
                ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled", "skipped"))
                later = sum(1 for e in events[i + 1:] if e.run_id == run_id and e.type in ev.TASK_TERMINAL_EVENTS)
                self._track(run_id, row.get("name", ""), row.get("tasks_total", 0), ended - later)
                continue
            if run_id not in self._done:
                continue
            if event.type in ev.TASK_TERMINAL_EVENTS:
                self._done[run_id] += 1
                if run_id in self._bars:
                    self._progress.update(self._bars[run_id], completed=self._done[run_id])
            elif event.type == ev.TASK_RETRYING and run_id in self._bars:
                self._progress.update(self._bars[run_id],
                                      state=f"retrying {event.data['task_id']}")
            elif event.type in ev.RUN_TERMINAL:
                status = event.data.get("status")
                if run_id in self._bars:
                    self._progress.update(self._bars[run_id], state=status)

    def __exit__(self, *exc: object) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._progress is not None:
            self._progress.stop()


@contextlib.contextmanager
def _log_progress(what: str):
    """A ``progress(done, total)`` callback drawing a bar on a terminal (nothing elsewhere)."""
    from rich.console import Console
    from rich.progress import Progress
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(console=console, transient=True) as bar:
        task_id = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task_id, completed=done, total=total)


# ---------------------------------------------------------------------------- output helpers
def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _task_results(store: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Per task: status and result (JSON view) or error, from the log."""
    from . import results
    out: dict[str, dict[str, Any]] = {}
    for row in store.list_tasks(run_id):
        out[row["task_id"]] = {"name": row["task_name"] or row["func_name"], "status": row["status"],
                               "attempt": row["attempt"], "duration_s": row["duration_s"]}
        if row["error"]:
            out[row["task_id"]]["error"] = row["error"]
    for event in store.read_stream(ev.run_stream(run_id)):
        if event.type == ev.TASK_SUCCEEDED:
            out[event.data["task_id"]]["result"] = results.public(
                event.data.get("result"), event.data.get("result_ref"), store.get_blob)
    return out


def _print_run(store: Any, run_id: str, as_json: bool) -> dict[str, dict[str, Any]]:
    """Print one run with every task; return the tasks (status, result or error) by id."""
    run = store.get_run(run_id)
    if run is None:
        raise click.ClickException(f"run {run_id!r} does not exist")
    tasks = _task_results(store, run_id)
    if as_json:
        _echo_json({**run, "tasks": tasks})
        return tasks
    from rich.console import Console
    from rich.table import Table
    console = Console()
    console.print(f"[bold]run {run['run_id']}[/bold]  {run['name'] or ''}  status: [bold]{run['status']}"
                  f"[/bold]  created {_fmt_ts(run['created_at'])}  finished {_fmt_ts(run['finished_at'])}")
    if run.get("error"):
        console.print(f"[red]error:[/red] {run['error']}")
    table = Table("task", "name", "status", "attempt", "seconds", "result / error")
    for tid, t in tasks.items():
        detail = t.get("error") if t["status"] != "succeeded" else _short(t.get("result"))
        secs = f"{t['duration_s']:.3f}" if t["duration_s"] is not None else "-"
        table.add_row(tid, t["name"], t["status"], str(t["attempt"]), secs, detail or "")
    console.print(table)
    return tasks


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
        with RunProgress(engine, enabled=progress and not as_json):
            try:
                run_id = engine.submit(dag, name=name)
            except DAGValidationError as exc:
                raise UsageFailure("invalid workflow:\n  " + "\n  ".join(exc.problems)) from None
            if not as_json:
                click.echo(f"run {run_id} submitted ({len(dag.tasks)} tasks)", err=True)
            try:
                run = engine.wait(run_id)
            except KeyboardInterrupt:
                click.echo(f"\ninterrupted: run {run_id} stays unfinished in the log; "
                           f"`maze resume {run_id}` finishes it", err=True)
                sys.exit(130)
    finally:
        engine.stop(wait=False)
    tasks = _print_run(engine.store, run_id, as_json)
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
        _run_dag(obj, build_demo_dag(key=uuid.uuid4().hex), "maze-demo", executor, progress, as_json)
        return
    from .demo import rag
    try:
        rag.require_tools()  # before the engine starts: a clear message, nothing recorded
    except RuntimeError as exc:
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
    """Finish unfinished runs (all of them, or RUN_IDS) without re-running finished tasks."""
    engine = obj.engine(executor)
    engine.start(resume=False)
    failed = False
    try:
        with RunProgress(engine, enabled=progress):
            try:
                report = engine.resume(list(run_ids) or None, force=force)
            except MazeError as exc:
                raise click.ClickException(str(exc)) from None
            for run_id, reason in report.skipped.items():
                click.echo(f"run {run_id} not resumed: {reason}", err=True)
            resumed = report.resumed
            if not resumed:
                click.echo("nothing to resume")
                if report.skipped:
                    sys.exit(1)
                return
            rows = [engine.wait(run_id) for run_id in resumed]
    finally:
        engine.stop(wait=False)
    for row in rows:
        click.echo(f"run {row['run_id']} {row['status']}")
        failed = failed or row["status"] != "succeeded"
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------------------- maze runs / events
@cli.group("runs", cls=DefaultGroup, default="list", default_if_no_args=True)
def runs_group() -> None:
    """List runs, or show one (maze runs show RUN)."""


@runs_group.command("list")
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "cancelled"]))
@click.option("--name", help="Only runs whose name contains this text.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def runs_list(obj: _Ctx, status: str | None, name: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List runs, newest first."""
    store = obj.store()
    rows = store.list_runs(status=status, name=name, limit=limit, offset=offset)
    total = store.count_runs(status=status, name=name)
    if as_json:
        _echo_json({"total": total, "runs": rows})
        return
    from rich.console import Console
    from rich.table import Table
    table = Table("run", "name", "status", "tasks", "created", "finished")
    for r in rows:
        table.add_row(r["run_id"], r["name"] or "", r["status"], str(r["tasks_total"]),
                      _fmt_ts(r["created_at"]), _fmt_ts(r["finished_at"]))
    Console().print(table)
    click.echo(f"{len(rows)} of {total} runs")


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def runs_show(obj: _Ctx, run_id: str, as_json: bool) -> None:
    """Show one run: every task with its status, attempts, duration and result or error."""
    _print_run(obj.store(), _expand_run_id(obj.store(), run_id), as_json)


def _expand_run_id(store: Any, prefix: str) -> str:
    if store.get_run(prefix) is not None:
        return prefix
    matches = [r["run_id"] for r in store.list_runs(limit=10000) if r["run_id"].startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise click.ClickException(f"run {prefix!r} does not exist")
    raise click.ClickException(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches[:5])}")


@cli.group("events", cls=DefaultGroup, default="show")
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
    for event in store.read_stream(ev.run_stream(run_id)):
        if as_json:
            click.echo(json.dumps(event.to_dict(), ensure_ascii=False, default=str))
            continue
        data = dict(event.data)
        if event.type == ev.RUN_SUBMITTED:
            data = {"name": data.get("name"), "tasks": list(data.get("tasks", {}))}
        data.pop("traceback", None)
        click.echo(f"{event.seq:>8} v{event.version:<5} {_fmt_ts(event.ts)} {event.type:<14} {_short(data, 100)}")


@events_group.command("verify")
@pass_ctx
def events_verify(obj: _Ctx) -> None:
    """Prove that no event was edited, dropped or reordered (recompute the hash chain)."""
    from .audit import verify_chain
    with _log_progress("verifying the hash chain") as progress:
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
    with _log_progress("replaying the log") as progress:
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
        _echo_json(plugins)
        return
    for p in plugins:
        status = f"  ERROR: {p['error']}" if p.get("error") else ""
        click.echo(f"{p['name']:<12} {p['package'] or '-'} {p['version'] or ''}  hooks: "
                   f"{', '.join(p['hooks']) or '-'}{status}")


@cli.group("tools", cls=DefaultGroup, default="list", default_if_no_args=True)
def tools_group() -> None:
    """Registered tools (@task functions from packages, tool folders and uploads)."""


@tools_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tools_list(obj: _Ctx, as_json: bool) -> None:
    """Every registered tool (name@version) with its type, source and description."""
    from .registry import task_registry
    from .runtime import load_tools, tool_sync_events
    problems = load_tools(obj.config, task_registry)
    store = obj.store()
    store.append(tool_sync_events(store, task_registry, "cli"))  # what is installed is on record
    tools = task_registry.list_tasks()
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if as_json:
        _echo_json(tools)
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
    from .runtime import load_tools
    load_tools(obj.config, task_registry)
    tool_name, _, version = name.partition("@")
    try:
        entry = task_registry.get(tool_name)
    except MazeError as exc:
        raise click.ClickException(str(exc)) from None
    if version and version != entry.version:
        raise click.ClickException(f"tool {tool_name!r} is version {entry.version} here, not {version}")
    _echo_json({"ref": f"{entry.name}@{entry.version}", "source": entry.source, "digest": entry.digest,
                **entry.meta.to_dict()})


@tools_group.command("reload")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def tools_reload(obj: _Ctx, as_json: bool) -> None:
    """Re-read installed tool packages and [tools] paths and record what changed.

    Packages installed, upgraded or uninstalled (pip) since the log last saw them, and tool files
    added, changed or removed in the tool folders, become ToolRegistered / ToolRemoved events, plus
    one ToolsReloaded event with this report. A running server picks them up with POST /tools/reload."""
    from .registry import task_registry
    from .runtime import reload_tools
    report = reload_tools(obj.config, task_registry, store=obj.store(), actor="cli")
    if as_json:
        _echo_json(report.to_dict())
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
    from .scaffold import ScaffoldError, scaffold_tool_package
    try:
        target = scaffold_tool_package(name, parent, force=force)
    except ScaffoldError as exc:
        raise UsageFailure(str(exc)) from None
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    click.echo(f"created {target}/: {', '.join(files)}")
    click.echo(f"next:\n  cd {target} && python -m pytest      # its test passes as it is\n"
               f"  pip install -e {target} && maze tools reload   # its tools appear in `maze tools`")


@cli.command("config")
@pass_ctx
def config_cmd(obj: _Ctx) -> None:
    """Print the effective configuration (file + MAZE_* overrides) as JSON."""
    cfg = obj.config
    _echo_json({"source": cfg.source, **cfg.model_dump(), "data_dir (resolved)": str(cfg.data_dir)})


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
