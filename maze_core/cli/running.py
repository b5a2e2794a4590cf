"""``maze run``, ``maze demo`` and ``maze resume``: loading a workflow file, running a DAG to its
end with a progress bar, and finishing unfinished runs."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import events as ev
from ..errors import DAGValidationError, MazeError, TaskDefinitionError
from .base import UsageFailure, _Ctx, _expand_run_id, _store_path, cli, pass_ctx
from .output import RunProgress, print_run


def _load_workflow_file(path: Path, dag_name: str | None) -> Any:
    from ..dag import DAG
    from ..loading import own_modules, ship_by_value
    from ..registry import import_file
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
    ship_by_value(own_modules(folder, set(sys.modules) - before))
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


def _run_dag(obj: _Ctx, dag: Any, name: str | None, executor: str | None, progress: bool,
             as_json: bool, show_sinks: bool = True) -> dict[str, dict[str, Any]]:
    """Run ``dag`` (a DAG, or a function of the started engine that builds one) to its end, print
    it and return its tasks; exit 1 if it did not succeed."""
    from ..dag import DAG
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
        from ..demo import build_demo_dag
        _run_dag(obj, build_demo_dag(), "maze-demo", executor, progress, as_json)
        return
    from ..demo.examples import ExampleNotFound, load_example
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
    from ..procs import process_alive
    from ..state import RunState
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
