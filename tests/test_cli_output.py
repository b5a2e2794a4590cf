"""What the ``maze`` command prints: durations, failures (the user's traceback, hints), colour
codes kept out of tables, and progress bars that keep other output off their line (checked on a
rich console that believes it is a terminal, through a small terminal emulator)."""

from __future__ import annotations

import io
import re
import sys

import pytest
import structlog

from maze_core import events as ev
from maze_core.cli.output import (
    RunProgress,
    failure_hint,
    fmt_duration,
    make_console,
    print_run,
    setup_cli_logging,
    strip_ansi,
    user_traceback,
)


# ---------------------------------------------------------------------------- durations
@pytest.mark.parametrize("seconds, shown", [
    (None, "-"), (0.0, "0.00 ms"), (0.00004, "0.04 ms"), (0.0004, "0.4 ms"), (0.0038, "3.8 ms"),
    (0.012, "12 ms"), (0.38, "380 ms"), (1.52, "1.52 s"), (59.2, "59.20 s"), (125.4, "2m 05s"),
    (3725, "1h 02m"),
])
def test_durations_read_at_a_glance(seconds, shown):
    assert fmt_duration(seconds) == shown


# ---------------------------------------------------------------------------- failures
LOCAL_TRACEBACK = """Traceback (most recent call last):
  File "/srv/venv/lib/python3.11/site-packages/maze_local/executor.py", line 268, in _call
    value = inv.func(**inv.kwargs)
            ^^^^^^^^^^^^^^^^^^^^^^
  File "/home/ada/project/wf.py", line 13, in needs
    import notamodule_xyz
ModuleNotFoundError: No module named 'notamodule_xyz'
"""


def test_user_traceback_keeps_the_users_frames_only():
    shown = user_traceback(LOCAL_TRACEBACK)
    assert "maze_local" not in shown and "inv.func" not in shown and "^^^" not in shown
    assert 'File "/home/ada/project/wf.py", line 13, in needs' in shown
    assert "    import notamodule_xyz" in shown
    assert shown.splitlines()[0] == "Traceback (most recent call last):"
    assert shown.splitlines()[-1] == "ModuleNotFoundError: No module named 'notamodule_xyz'"


def test_user_traceback_of_runner_frames_only_is_left_whole():
    only_runner = ('Traceback (most recent call last):\n  File "/x/site-packages/ray/_private/worker.py", '
                   'line 1, in get\n    raise value\nray.exceptions.WorkerCrashedError: died\n')
    assert user_traceback(only_runner) == only_runner.rstrip()


def test_a_missing_module_gets_a_hint_other_failures_none():
    hint = failure_hint("ModuleNotFoundError: No module named 'helpers'", None)
    assert "'helpers'" in hint and "where the workers run" in hint and "maze run" in hint
    assert failure_hint("RayTaskError: \x1b[36mray::maze_task()\x1b[39m No module named 'torch.nn'",
                        None).startswith("module 'torch.nn'")
    assert "version" in failure_hint("ImportError: cannot import name 'x' from 'lib' (/a/lib.py)")
    assert failure_hint("ModuleNotFoundError: No module named 'h' (install it on the workers)") is None
    assert failure_hint("RuntimeError: disk on fire", LOCAL_TRACEBACK.replace(
        "ModuleNotFoundError: No module named 'notamodule_xyz'", "RuntimeError: disk on fire")) is None


def test_strip_ansi_removes_colours_and_links():
    assert strip_ansi("\x1b[31mred\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b[1;36mok") == "red link ok"


class FakeStore:
    """Just what ``print_run`` reads."""

    def __init__(self, error: str, traceback: str):
        self.run = {"run_id": "r1", "name": "demo", "status": "failed", "created_at": 1.0,
                    "finished_at": 2.0, "error": f"task t1 (f) failed: {error}"}
        self.tasks = [{"task_id": "t1", "task_name": None, "func_name": "f", "status": "failed",
                       "attempt": 1, "duration_s": 0.0004, "error": error}]
        self.events = [ev.Event(1, "run:r1", 1, ev.TASK_FAILED, 1.5, "x",
                                {"task_id": "t1", "attempt": 1, "error": error, "traceback": traceback}, "h")]

    def get_run(self, run_id):
        return dict(self.run)

    def list_tasks(self, run_id):
        return [dict(t) for t in self.tasks]

    def read_stream(self, stream):
        return list(self.events)

    def read_stream_page(self, stream, after_seq=0, limit=None):
        page = [e for e in self.events if e.seq > after_seq]
        return page if limit is None else page[:limit]

    def get_blob(self, digest):
        raise KeyError(digest)


def test_print_run_shows_the_traceback_and_hint_without_colour_codes(capsys):
    error = "\x1b[31mModuleNotFoundError\x1b[0m: No module named 'helpers' [/bold]"   # markup too
    print_run(FakeStore(error, "\x1b[33m" + LOCAL_TRACEBACK), "r1", as_json=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    table_row = next(line for line in out.splitlines() if line.startswith("│ t1"))
    assert "ModuleNotFoundError: No module named 'helpers' [/bold]" in table_row
    assert "0.4 ms" in table_row
    assert 'File "/home/ada/project/wf.py", line 13, in needs' in out and "maze_local" not in out
    assert "hint: module 'helpers' cannot be imported" in out


def test_print_run_json_carries_traceback_and_hint(capsys):
    import json
    print_run(FakeStore("ModuleNotFoundError: No module named 'helpers'", LOCAL_TRACEBACK), "r1", as_json=True)
    task = json.loads(capsys.readouterr().out)["tasks"]["t1"]
    assert task["traceback"] == LOCAL_TRACEBACK          # whole, as recorded
    assert "'helpers'" in task["hint"]


def test_a_console_into_a_pipe_cuts_nothing(monkeypatch):
    from rich.table import Table
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    table = Table("run", "name")
    run_id = "0123456789abcdef-0123456789abcdef-0123456789abcdef-0123456789abcdef"
    name = ("a name that goes on and on " * 3).strip()
    table.add_row(run_id, name)
    make_console().print(table)
    assert run_id in out.getvalue() and name in out.getvalue()
    assert "\x1b" not in out.getvalue()


# ---------------------------------------------------------------------------- progress
def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: text, CR, LF, erase-line and cursor-up are followed;
    other escape sequences (colours, cursor visibility) are dropped."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-?]*[ -/]*[@-~]|\r|\n)", raw):
        if not token:
            continue
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token.startswith("\x1b["):
            arg, final = token[2:-1], token[-1]
            if final == "K":
                lines[row] = "" if arg == "2" else lines[row][:col]
            elif final == "A":
                row = max(0, row - int(arg or 1))
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return [line.rstrip() for line in lines]


class FakeEngine:
    def __init__(self):
        self.listener = None

    def subscribe(self, listener):
        self.listener = listener
        return lambda: None


def event(seq: int, type_: str, data: dict) -> ev.Event:
    return ev.Event(seq, "run:r-0123456789", seq, type_, float(seq), "cli", data, "h")


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal would be, with a binary buffer underneath (as a real one has), and
    logging configured as the CLI configures it; logging is reset afterwards."""
    from rich.console import Console
    raw = io.BytesIO()
    stderr = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    monkeypatch.setattr(sys, "stderr", stderr)
    structlog.reset_defaults()
    setup_cli_logging("WARNING", "console")
    yield (lambda width: Console(file=stderr, force_terminal=True, width=width, color_system="standard"),
           lambda: raw.getvalue().decode())
    structlog.reset_defaults()


def test_messages_and_logs_print_above_the_bar_never_on_its_line(terminal):
    make, output = terminal
    console = make(72)
    engine = FakeEngine()
    tasks = {f"t{i}": {} for i in range(3)}
    with RunProgress(engine, console=console) as bar:
        engine.listener([event(1, ev.RUN_SUBMITTED, {"name": "wf", "tasks": tasks})])
        bar.echo("run r-0123456789 submitted (3 tasks)")
        structlog.get_logger("maze.engine").warning("task failed", task_id="t2")
        engine.listener([event(2, ev.TASK_SUCCEEDED, {"task_id": "t1"})])
        bar._progress.refresh()
    shown = [line for line in screen(output()) if line]
    assert "run r-0123456789 submitted (3 tasks)" in shown              # a line of its own
    log_line = next(line for line in shown if "task failed" in line)
    assert "━" not in log_line and "wf r-012345" not in log_line
    bars = [line for line in shown if "━" in line]
    assert len(bars) == 1 and shown[-1] == bars[0] and "1/3" in bars[0]  # one bar, at the bottom


def test_a_bar_never_wraps_on_a_narrow_terminal(terminal):
    make, output = terminal
    console = make(40)
    engine = FakeEngine()
    with RunProgress(engine, console=console) as bar:
        engine.listener([event(1, ev.RUN_SUBMITTED, {"name": "a-workflow-with-a-long-name",
                                                     "tasks": {"t1": {}}})])
        engine.listener([event(2, ev.TASK_RETRYING, {"task_id": "t1"})])
        bar._progress.refresh()
    shown = [line for line in screen(output()) if line]
    assert len(shown) == 1 and len(shown[0]) <= 40       # one line, cut to the width
    assert "0/1" in shown[0] and "━" in shown[0]        # the count and the bar stay
