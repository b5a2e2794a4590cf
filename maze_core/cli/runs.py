"""``maze runs`` (list, show) and ``maze events`` (show, verify, replay): reading the log."""

from __future__ import annotations

import json

import click

from .. import events as ev
from ..state import RUN_STATUSES
from .base import ListingGroup, _Ctx, _expand_run_id, _store_path, _usual_store_path, cli, pass_ctx
from .output import echo_json, event_line, log_progress, print_run


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

    from .output import fmt_ts, make_console
    table = Table("run", "name", "status", "tasks", "created", "finished")
    for r in rows:
        table.add_row(r["run_id"], Text(r["name"] or ""), r["status"], str(r["tasks_total"]),
                      fmt_ts(r["created_at"]), fmt_ts(r["finished_at"]))
    make_console().print(table)
    click.echo(f"{len(rows)} of {total} runs")


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def runs_show(obj: _Ctx, run_id: str, as_json: bool) -> None:
    """Show one run: every task with its status, attempts, duration and result or error."""
    store = obj.store()
    print_run(store, _expand_run_id(store, run_id), as_json)


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
    from .output import EVENT_HEADER
    click.echo(EVENT_HEADER)
    for event in events:
        click.echo(event_line(event))


@events_group.command("verify")
@pass_ctx
def events_verify(obj: _Ctx) -> None:
    """Prove that no event was edited, dropped or reordered (recompute the hash chain)."""
    from ..audit import verify_chain
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
    from ..audit import replay_check
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
