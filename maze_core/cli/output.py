"""What the ``maze`` command prints, and how: consoles sized for a terminal or a pipe, durations
and times, a run with its tasks (and, for each failed task, the user's traceback and a hint), the
events listing, and progress bars that keep the rest of the output off their line.

Text that comes from a task (errors, tracebacks, results) is shown as plain text: terminal colour
codes are stripped and rich markup in it is never interpreted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import events as ev
from ..state import TERMINAL

# ---------------------------------------------------------------------------- consoles
PIPE_WIDTH = 10_000   # columns of a console that writes to a pipe or file: nothing is cut or wrapped


def make_console(stderr: bool = False, **kwargs: Any) -> Any:
    """A rich console for stdout (or stderr). On a terminal it has the terminal's width; into a
    pipe or a file (``maze runs | cat``, a test's subprocess) it is as wide as the text, so that
    nothing (a run id) is cut at 80 columns, and prints no colour codes."""
    from rich.console import Console
    console = Console(stderr=stderr, **kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console = Console(stderr=stderr, width=PIPE_WIDTH, **kwargs)
    return console


class CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time of the write.

    Logging keeps the stream it was configured with; a live progress bar replaces ``sys.stderr``
    with a proxy that prints above the bar. A log line written to the original stream while a bar
    is drawn lands at the end of the bar's line and the bar is redrawn below it: the bar "runs
    into the next line". Handing logging this stream sends such lines through the proxy."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())


def setup_cli_logging(level: str, fmt: str) -> None:
    """Configure logging for a command (once): on stderr as it is at each write."""
    import structlog

    from ..logging import setup_logging
    if not structlog.is_configured():
        setup_logging(level, fmt, stream=CurrentStderr())


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


# ---------------------------------------------------------------------------- text
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]"          # CSI: colours, cursor moves
                   r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, links
                   r"|\x1b[@-Z\\-_]")                   # other two-character escapes


def strip_ansi(text: str | None) -> str:
    """``text`` without terminal escape sequences (Ray colours the errors it raises)."""
    return _ANSI.sub("", text) if text else ""


def short(value: Any, limit: int = 80) -> str:
    text = strip_ansi(json.dumps(value, default=str, ensure_ascii=False))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt_ts(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def fmt_duration(seconds: float | None) -> str:
    """A duration a person reads at a glance: ``0.04 ms``, ``0.4 ms``, ``12 ms``, ``1.52 s``,
    ``2m 05s``, ``1h 02m``."""
    if seconds is None:
        return "-"
    ms = seconds * 1000
    if ms < 0.1:
        return f"{ms:.2f} ms"
    if ms < 9.95:
        return f"{ms:.1f} ms"
    if ms < 999.5:
        return f"{ms:.0f} ms"
    if seconds < 59.995:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(int(round(seconds)) // 60, 60)
    return f"{hours}h {minutes:02d}m"


def first_line(text: str | None, limit: int = 200) -> str:
    line = next((s for s in strip_ansi(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ---------------------------------------------------------------------------- failures
_FRAME = re.compile(r'^(\s*)File "([^"]+)", line \d+')
_RUNNER_PACKAGES = ("maze_core", "maze_local", "maze_ray", "maze_sqlite", "maze_daps", "maze_server",
                    "maze_api", "ray", "cloudpickle")
_runner_dirs: tuple[str, ...] | None = None


def _runner_roots() -> tuple[str, ...]:
    """Folders of the code that runs a task (Maze, Ray), as installed here."""
    global _runner_dirs
    if _runner_dirs is None:
        roots = []
        for name in _RUNNER_PACKAGES:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            for location in (spec.submodule_search_locations or []) if spec else []:
                roots.append(str(Path(location).resolve()) + "/")
        _runner_dirs = tuple(roots)
    return _runner_dirs


def _is_runner_file(path: str) -> bool:
    """A frame of Maze's or Ray's own code (here, or on a worker where the paths differ)."""
    if path.startswith(_runner_roots()):
        return True
    parts = Path(path).parts
    if any(p in ("maze_core", "maze_local", "maze_ray") for p in parts[:-1]):
        return True
    return any(a in ("site-packages", "dist-packages") and b in ("ray", "cloudpickle")
               for a, b in zip(parts, parts[1:], strict=False))


def user_traceback(traceback: str | None) -> str:
    """A task's traceback without the frames of the code that ran it (Maze's executors, Ray), so
    what is left points at the user's files and lines. Returned whole when no frame would be left."""
    lines = strip_ansi(traceback).rstrip().splitlines()
    out: list[str] = []
    dropping_indent: int | None = None   # indentation of the dropped frame's "File" line
    kept = 0
    for line in lines:
        match = _FRAME.match(line)
        if match:
            if _is_runner_file(match.group(2)):
                dropping_indent = len(match.group(1))
                continue
            kept += 1
            dropping_indent = None
        elif dropping_indent is not None:
            if line.strip() and len(line) - len(line.lstrip()) > dropping_indent:
                continue          # the dropped frame's source line and its ^^^ markers
            dropping_indent = None
        out.append(line)
    return "\n".join(out if kept else lines)


_NO_MODULE = re.compile(r"No module named '([^']+)'")
_NO_NAME = re.compile(r"cannot import name '([^']+)' from '([^']+)'")


def failure_hint(error: str | None, traceback: str | None = None) -> str | None:
    """What to try when a failure looks like the workers' environment, not the task's code: a
    module that cannot be imported where the task ran. None otherwise, and None when the error
    already says what to install."""
    if "install" in strip_ansi(error):
        return None
    text = strip_ansi(f"{error or ''}\n{traceback or ''}")
    missing = _NO_MODULE.search(text)
    if missing:
        module = missing.group(1)
        top = module.split(".")[0]
        return (f"module {module!r} cannot be imported where the task ran. If {top!r} is a "
                f"package, install it where the workers run (on a cluster: on every node). If it "
                f"is a module of your own, keep it in the workflow file's folder: `maze run` ships "
                f"the modules a workflow imports from its folder by value.")
    absent = _NO_NAME.search(text)
    if absent:
        return (f"{absent.group(2)!r} where the task ran has no {absent.group(1)!r}: the workers have "
                f"another version of it than the machine that submitted the run; install the same "
                f"version in both environments.")
    if re.search(r"\b(ModuleNotFoundError|ImportError)\b", text):
        return ("an import failed where the task ran: check that the workers' Python environment "
                "has the packages (and versions) the task needs.")
    return None


# ---------------------------------------------------------------------------- one run
def run_tasks(store: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Per task: name, status, attempt, duration and result (JSON view), or error with its
    traceback (from the task's last ``TaskFailed`` event) and a hint, from the log."""
    from ..queries import task_outcomes
    out: dict[str, dict[str, Any]] = {}
    for row in store.list_tasks(run_id):
        out[row["task_id"]] = {"name": row["task_name"] or row["func_name"], "status": row["status"],
                               "attempt": row["attempt"], "duration_s": row["duration_s"]}
        if row["error"]:
            out[row["task_id"]]["error"] = strip_ansi(row["error"])
    for tid, outcome in task_outcomes(store, run_id).items():   # one paged scan of the log
        task = out.get(tid)
        if task is None:
            continue
        if "result" in outcome:
            task["result"] = outcome["result"]
        if "traceback" in outcome:
            task["traceback"] = strip_ansi(outcome["traceback"]) or None
    for task in out.values():
        if task["status"] != "failed":
            task.pop("traceback", None)
            continue
        hint = failure_hint(task.get("error"), task.get("traceback"))
        if hint:
            task["hint"] = hint
    return out


def print_run(store: Any, run_id: str, as_json: bool) -> dict[str, dict[str, Any]]:
    """Print one run with every task, then each failed task's traceback (the user's frames) and
    hint; return the tasks (status, result or error) by id."""
    from rich.table import Table
    from rich.text import Text
    run = store.get_run(run_id)
    if run is None:
        raise click.ClickException(f"run {run_id!r} does not exist")
    tasks = run_tasks(store, run_id)
    if as_json:
        echo_json({**run, "tasks": tasks})
        return tasks
    console = make_console()
    header = Text.assemble(("run ", "bold"), (run["run_id"], "bold"), f"  {run['name'] or ''}  status: ",
                           (run["status"], "bold"),
                           f"  created {fmt_ts(run['created_at'])}  finished {fmt_ts(run['finished_at'])}")
    console.print(header)
    if run.get("error"):
        console.print(Text.assemble(("error: ", "red"), first_line(run["error"], 1000)))
    table = Table("task", "name", "status", "attempt", "duration", "result / error")
    for tid, t in tasks.items():
        detail = first_line(t.get("error")) if t["status"] != "succeeded" else short(t.get("result"))
        table.add_row(Text(tid), Text(t["name"] or ""), t["status"], str(t["attempt"]),
                      fmt_duration(t["duration_s"]), Text(detail or ""))
    console.print(table)
    for tid, t in tasks.items():
        if t["status"] != "failed" or not (t.get("traceback") or t.get("hint")):
            continue
        click.echo(f"\n{tid} ({t['name']}) failed on attempt {t['attempt']}: "
                   f"{first_line(t.get('error'), 10_000)}")
        if t.get("traceback"):
            click.echo("\n".join("  " + line for line in user_traceback(t["traceback"]).splitlines()))
        if t.get("hint"):
            click.echo(f"  hint: {t['hint']}")
    return tasks


# ---------------------------------------------------------------------------- events
EVENT_HEADER = f"{'seq':>8} {'version':<6} {'time':<19} {'type':<14} data"


def event_line(event: ev.Event) -> str:
    """One event as a line of ``maze events RUN`` (under ``EVENT_HEADER``)."""
    data = dict(event.data)
    if event.type == ev.RUN_SUBMITTED:
        data = {"name": data.get("name"), "tasks": list(data.get("tasks", {}))}
    data.pop("traceback", None)
    return f"{event.seq:>8} {'v' + str(event.version):<6} {fmt_ts(event.ts)} {event.type:<14} {short(data, 100)}"


# ---------------------------------------------------------------------------- progress
class RunProgress:
    """Progress of the runs this engine submits or resumes, from its committed events: a rich bar
    per run on a terminal (the commands print the outcome themselves). Runs are picked up from their
    ``RunSubmitted``/``RunResumed`` events, so no task that ends early is missed.

    While the bar is drawn, messages go through ``echo`` and anything written to ``sys.stdout`` or
    ``sys.stderr`` (logs configured with ``setup_cli_logging``, prints of task bodies running in
    this process) is printed above the bar. (``click.echo(err=True)`` would not be: click writes
    to the terminal's own buffer, past rich's proxy, and the bar would be redrawn on the line
    below that text.) A bar line never wraps: its text columns are cut with an ellipsis."""

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
            from rich.table import Column

            def text(template: str, max_width: int | None = None) -> TextColumn:
                return TextColumn(template, table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                max_width=max_width))
            # on a narrow terminal the name and the state give way first, then the bar
            self._progress = Progress(
                text("{task.description}", max(10, self.console.width // 3)),
                BarColumn(table_column=Column(min_width=4)),
                MofNCompleteColumn(table_column=Column(no_wrap=True)),
                text("{task.fields[state]}", 14),
                TimeElapsedColumn(table_column=Column(no_wrap=True)),
                console=self.console)
            self._progress.start()
        self._unsubscribe = self.engine.subscribe(self._on_events)
        return self

    def echo(self, message: str) -> None:
        """Print a line for the user on stderr: above the bar while it is drawn."""
        if self._progress is not None:
            from rich.text import Text
            self._progress.console.print(Text(message), soft_wrap=True)
        else:
            click.echo(message, err=True)

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
                ended = sum(counts.get(s, 0) for s in TERMINAL)
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
def log_progress(what: str):
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
