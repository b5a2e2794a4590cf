"""The real ``maze`` command, in subprocesses, on private SQLite files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import maze_exe


def maze(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([maze_exe(), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def start_run_until(marker: Path, wf: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``maze run wf`` and return once ``marker`` exists (the workflow got that far)."""
    proc = subprocess.Popen([maze_exe(), "run", wf, "--no-progress"], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the workflow never reached {marker.name}"
        time.sleep(0.02)
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_demo_runs_with_fan_out_fan_in_and_a_retry(tmp_path, cli_env):
    out = maze("demo", "--json", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    assert run["status"] == "succeeded"
    tasks = run["tasks"]
    assert len(tasks) == 10
    assert tasks["t8"]["attempt"] == 2   # the flaky step failed once and was retried
    assert tasks["t10"]["result"]["summary"].startswith("6 documents")

    listing = maze("runs", "--json", env=cli_env, cwd=tmp_path)
    assert json.loads(listing.stdout)["total"] == 1
    shown = maze("runs", "show", run["run_id"][:8], env=cli_env, cwd=tmp_path)
    assert shown.returncode == 0 and "demo_summary" in shown.stdout
    events = maze("events", run["run_id"], "--json", env=cli_env, cwd=tmp_path)
    types = [json.loads(line)["type"] for line in events.stdout.splitlines()]
    assert types[0] == "RunSubmitted" and types[-1] == "RunSucceeded" and "TaskRetrying" in types
    verify = maze("events", "verify", env=cli_env, cwd=tmp_path)
    assert verify.returncode == 0 and "hash chain intact" in verify.stdout
    replay = maze("events", "replay", env=cli_env, cwd=tmp_path)
    assert replay.returncode == 0 and "match" in replay.stdout


WORKFLOW = """
import os, time
from pathlib import Path
from maze_core import DAG, task

MARKS = Path(os.environ["MARKS"])

def mark(name):
    with open(MARKS / name, "a") as fh:
        fh.write(f"{os.getpid()}\\n")

@task
def first(x: int) -> dict:
    mark("first")
    return {"x": x + 1}

@task
def gate(x: int) -> dict:
    mark("gate")
    while not (MARKS / "open").exists():
        time.sleep(0.02)
    return {"x": x * 10}

@task
def last(a: int, b: int) -> dict:
    mark("last")
    return {"total": a + b}

dag = DAG("killable")
t1 = dag.add_task(first, inputs={"x": 1})
t2 = dag.add_task(gate, inputs={"x": t1.output.x})
t3 = dag.add_task(last, inputs={"a": t1.output.x, "b": t2.output.x})
"""


def test_sigkill_mid_workflow_then_resume_finishes_without_rerunning(tmp_path, cli_env):
    marks = tmp_path / "marks"
    marks.mkdir()
    wf = tmp_path / "wf.py"
    wf.write_text(WORKFLOW)
    env = {**cli_env, "MARKS": str(marks)}
    kill(start_run_until(marks / "gate", str(wf), env, tmp_path))

    runs = json.loads(maze("runs", "--json", env=env, cwd=tmp_path).stdout)["runs"]
    assert [r["status"] for r in runs] == ["running"]
    (marks / "open").write_text("")

    resumed = maze("resume", "--no-progress", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"run {runs[0]['run_id']} succeeded" in resumed.stdout

    assert len((marks / "first").read_text().splitlines()) == 1   # finished: never re-run
    gate_pids = (marks / "gate").read_text().splitlines()
    assert len(gate_pids) == 2 and gate_pids[0] != gate_pids[1]    # was running: dispatched again
    assert len((marks / "last").read_text().splitlines()) == 1

    shown = json.loads(maze("runs", "show", runs[0]["run_id"], "--json", env=env, cwd=tmp_path).stdout)
    assert shown["tasks"]["t3"]["result"] == {"total": 22}
    types = [json.loads(line)["type"] for line in
             maze("events", runs[0]["run_id"], "--json", env=env, cwd=tmp_path).stdout.splitlines()]
    assert "RunResumed" in types and types[-1] == "RunSucceeded"
    assert maze("events", "verify", env=env, cwd=tmp_path).returncode == 0
    again = maze("resume", "--no-progress", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to resume" in again.stdout


BACKOFF_WORKFLOW = """
import os
import re
from pathlib import Path
from maze_core import DAG, task

MARKS = Path(os.environ["MARKS"])

@task
def first() -> dict:
    with open(MARKS / "first", "a") as fh:
        fh.write("ran\\n")
    return {"x": 1}

@task(retries=3)
def flaky(x: int) -> dict:
    with open(MARKS / "flaky", "a") as fh:
        fh.write("ran\\n")
    if not (MARKS / "healed").exists():
        raise ConnectionError("service down")
    return {"x": x + 1}

dag = DAG("backoff")
a = dag.add_task(first)
b = dag.add_task(flaky, inputs={"x": a.output.x})
"""


def test_sigkill_during_retry_backoff_then_resume_retries_without_rerunning(tmp_path, cli_env):
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "wf.py").write_text(BACKOFF_WORKFLOW)
    env = {**cli_env, "MARKS": str(marks), "MAZE_ENGINE_RETRY_BACKOFF": "30"}   # a long first backoff
    proc = start_run_until(marks / "flaky", "wf.py", env, tmp_path)
    deadline = time.monotonic() + 30
    run_id = None
    while run_id is None:   # wait until the failed attempt is on record, then kill mid-backoff
        out = maze("events", "--json", json.loads(maze("runs", "--json", env=env, cwd=tmp_path)
                                                  .stdout)["runs"][0]["run_id"], env=env, cwd=tmp_path)
        types = [json.loads(line) for line in out.stdout.splitlines()]
        if any(e["type"] == "TaskRetrying" for e in types):
            run_id = types[0]["stream"][4:]
        assert time.monotonic() < deadline
    kill(proc)
    (marks / "healed").write_text("")
    resumed = maze("resume", "--no-progress", env={**env, "MAZE_ENGINE_RETRY_BACKOFF": "0.01"}, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len((marks / "first").read_text().splitlines()) == 1
    assert len((marks / "flaky").read_text().splitlines()) == 2          # attempt 1, then the retry
    events = [json.loads(line) for line in maze("events", "--json", run_id, env=env, cwd=tmp_path)
              .stdout.splitlines()]
    queued = [e["data"]["attempt"] for e in events if e["type"] == "TaskQueued" and e["data"]["task_id"] == "t2"]
    assert queued == [1, 2] and events[-1]["type"] == "RunSucceeded"


HELPERS = """
import os, time
from pathlib import Path
from maze_core import task

@task
def slow_square(x: int) -> dict:
    marks = Path(os.environ["MARKS"])
    (marks / "started").write_text("")
    while not (marks / "open").exists():
        time.sleep(0.02)
    return {"y": x * x}
"""

SIBLING_WORKFLOW = """
from maze_core import DAG
from helpers import slow_square

dag = DAG("siblings")
a = dag.add_task(slow_square, inputs={"x": 7})
"""


def test_resume_from_elsewhere_loads_functions_from_sibling_modules(tmp_path, cli_env):
    project = tmp_path / "project"
    project.mkdir()
    (project / "helpers.py").write_text(HELPERS)
    (project / "wf.py").write_text(SIBLING_WORKFLOW)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**cli_env, "MARKS": str(marks)}
    kill(start_run_until(marks / "started", "wf.py", env, project))
    (marks / "open").write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = maze("resume", "--no-progress", env=env, cwd=elsewhere)   # helpers.py is not importable here
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run_id = json.loads(maze("runs", "--json", env=env, cwd=elsewhere).stdout)["runs"][0]["run_id"]
    shown = json.loads(maze("runs", "show", run_id, "--json", env=env, cwd=elsewhere).stdout)
    assert shown["status"] == "succeeded" and shown["tasks"]["t1"]["result"] == {"y": 49}


def test_run_file_prints_results_and_failing_run_exits_1(tmp_path, cli_env):
    wf = tmp_path / "fail.py"
    wf.write_text(textwrap.dedent("""
        from maze_core import DAG, task

        @task
        def ok() -> dict:
            return {"fine": True}

        @task
        def broken(flag: bool) -> dict:
            raise RuntimeError("disk on fire")

        dag = DAG("mixed")
        a = dag.add_task(ok)
        b = dag.add_task(broken, inputs={"flag": a.output.fine})
    """))
    out = maze("run", str(wf), "--json", env=cli_env, cwd=tmp_path)
    assert out.returncode == 1
    run = json.loads(out.stdout)
    assert run["status"] == "failed"
    assert run["tasks"]["t2"]["error"] == "RuntimeError: disk on fire"
    assert run["tasks"]["t1"]["result"] == {"fine": True}


@pytest.mark.parametrize("source, message", [
    ("from maze_core import DAG, task\n\ndef plain(x):\n    return {}\n\ndag = DAG('x')\ndag.add_task(plain)\n",
     "not decorated with @task"),
    ("from maze_core import DAG\nx = 1\n", "defines no DAG"),
    ("import nonexistent_module_xyz\n", "ModuleNotFoundError"),
    ("from maze_core import DAG, task\n\n@task\ndef f(x: int) -> dict:\n    return {}\n\n"
     "dag = DAG('x')\ndag.add_task(f, inputs={'x': 'oops'})\n", "integer"),
])
def test_bad_workflow_files_exit_2_with_the_culprit(tmp_path, cli_env, source, message):
    wf = tmp_path / "bad.py"
    wf.write_text(source)
    out = maze("run", str(wf), env=cli_env, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr


def test_corrupt_config_names_the_key(tmp_path, cli_env):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[server]\nport = 'eighty'\n")
    out = maze("--config", str(cfg), "runs", env=cli_env, cwd=tmp_path)
    assert out.returncode == 2
    assert "[server] port" in out.stderr and "eighty" in out.stderr
    cfg.write_text("[engine\nstore = 1\n")
    out = maze("--config", str(cfg), "runs", env=cli_env, cwd=tmp_path)
    assert out.returncode == 2 and "not valid TOML" in out.stderr


def test_plugins_lists_default_plugins_with_their_hooks(tmp_path, cli_env):
    out = maze("plugins", "--json", env=cli_env, cwd=tmp_path)
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert plugins["sqlite"]["hooks"] == ["register_config_sections", "register_stores"]
    assert plugins["local"]["hooks"] == ["register_config_sections", "register_executors"]
    assert plugins["daps"]["hooks"] == ["register_config_sections", "register_schedulers"]
    assert plugins["sqlite"]["package"] == "maze-framework"
    only = maze("plugins", "--json", env={**cli_env, "MAZE_LOAD_PLUGINS": "sqlite"}, cwd=tmp_path)
    assert [p["name"] for p in json.loads(only.stdout)] == ["sqlite"]
    missing = maze("demo", env={**cli_env, "MAZE_LOAD_PLUGINS": "sqlite"}, cwd=tmp_path)
    assert missing.returncode == 1 and "no executor named 'local'" in missing.stderr


def test_tools_lists_tools_from_a_configured_folder(tmp_path, cli_env):
    tools = tmp_path / "mytools"
    tools.mkdir()
    (tools / "greet.py").write_text(
        "from maze_core import task\n\n@task(name='greet', description='Say hello')\n"
        "def greet(who: str) -> dict:\n    return {'text': 'hello ' + who}\n")
    env = {**cli_env, "MAZE_TOOLS_PATHS": str(tools)}
    out = maze("tools", "--json", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    listed = {t["name"]: t for t in json.loads(out.stdout)}
    assert listed["greet"]["description"] == "Say hello"
    assert listed["greet"]["source"].startswith("dir:")
    # a listing only reads (not even the log is opened); `maze tools reload` records what is
    # installed, once
    assert not (tmp_path / "data" / "maze.db").exists()
    from maze_sqlite.store import SqliteStore
    maze("tools", "reload", env=env, cwd=tmp_path)
    maze("tools", "reload", env=env, cwd=tmp_path)
    store = SqliteStore(tmp_path / "data" / "maze.db")
    assert [e.type for e in store.read_stream("tool:greet")] == ["ToolRegistered"]
    (tools / "greet.py").unlink()
    maze("tools", "reload", env=env, cwd=tmp_path)
    assert [e.type for e in store.read_stream("tool:greet")] == ["ToolRegistered", "ToolRemoved"]


# ---------------------------------------------------------------------------- first contact (issue 10)
FIRST_CONTACT_WORKFLOW = """
from maze_core import DAG, task

@task
def tiny() -> dict:
    return {"ok": True}

@task
def broken(flag: bool) -> dict:
    raise RuntimeError("\\x1b[31mdisk\\x1b[0m on fire")

@task
def needs_a_module() -> dict:
    import notamodule_xyz_123
    return {}

dag = DAG("first-contact")
a = dag.add_task(tiny)
b = dag.add_task(broken, inputs={"flag": a.output.ok})
c = dag.add_task(needs_a_module)
"""


@pytest.fixture
def failed_run(tmp_path, cli_env) -> str:
    (tmp_path / "wf.py").write_text(FIRST_CONTACT_WORKFLOW)
    out = maze("run", "wf.py", "--json", env=cli_env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    return json.loads(out.stdout)["run_id"]


def test_runs_show_explains_each_failure_with_the_users_traceback(tmp_path, cli_env, failed_run):
    shown = maze("runs", "show", failed_run[:8], env=cli_env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "\x1b" not in out                                    # no colour codes, in the table or below
    wf = str(tmp_path / "wf.py")
    assert f'File "{wf}", line 10, in broken' in out and 'raise RuntimeError(' in out
    assert f'File "{wf}", line 14, in needs_a_module' in out
    assert "maze_local" not in out                             # the runner's frames are left out
    hints = [line for line in out.splitlines() if "hint:" in line]
    assert len(hints) == 1 and "'notamodule_xyz_123'" in hints[0] and "where the workers run" in hints[0]
    table_rows = [line for line in out.splitlines() if line.startswith("│ t")]
    assert any("RuntimeError: disk on fire" in row for row in table_rows)

    tasks = json.loads(maze("runs", "show", failed_run, "--json", env=cli_env, cwd=tmp_path).stdout)["tasks"]
    assert f'File "{wf}", line 10, in broken' in tasks["t2"]["traceback"] and "hint" not in tasks["t2"]
    assert "No module named 'notamodule_xyz_123'" in tasks["t3"]["traceback"]
    assert "'notamodule_xyz_123'" in tasks["t3"]["hint"]
    assert "traceback" not in tasks["t1"]


def test_durations_of_tiny_tasks_show_in_milliseconds(tmp_path, cli_env, failed_run):
    out = maze("runs", "show", failed_run, env=cli_env, cwd=tmp_path).stdout
    row = next(line for line in out.splitlines() if line.startswith("│ t1"))
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert re.fullmatch(r"\d+(\.\d+)? ms", cells[4]), row          # e.g. 0.04 ms, not 0.000
    assert "0.000" not in out


def test_output_to_a_pipe_is_not_cut_at_80_columns(tmp_path, cli_env, failed_run):
    env = {**cli_env, "COLUMNS": "80"}
    listing = maze("runs", env=env, cwd=tmp_path)
    assert failed_run in listing.stdout                          # the whole run id, on one line
    shown = maze("runs", "show", failed_run, env=env, cwd=tmp_path).stdout
    assert "No module named 'notamodule_xyz_123'" in next(
        line for line in shown.splitlines() if line.startswith("│ t3"))


def test_events_table_has_a_header_row(tmp_path, cli_env, failed_run):
    lines = maze("events", failed_run, env=cli_env, cwd=tmp_path).stdout.splitlines()
    assert lines[0].split() == ["seq", "version", "time", "type", "data"]
    assert "RunSubmitted" in lines[1]
    as_json = maze("events", failed_run, "--json", env=cli_env, cwd=tmp_path).stdout.splitlines()
    assert json.loads(as_json[0])["type"] == "RunSubmitted"     # --json: one event per line, no header


def test_runs_help_shows_the_listing_filters_and_show(tmp_path, cli_env):
    out = maze("runs", "--help", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0
    for option in ("--status", "--name", "--limit", "--offset", "--json"):
        assert option in out.stdout, option
    assert re.search(r"^\s+show\s", out.stdout, re.M)
    events_help = maze("events", "--help", env=cli_env, cwd=tmp_path).stdout
    assert "--json" in events_help and "verify" in events_help


def test_resume_with_nothing_to_resume_starts_no_engine(tmp_path, cli_env):
    from maze_sqlite.store import SqliteStore
    env = {**cli_env, "MAZE_ENGINE_EXECUTOR": "ray"}     # the default executor: Ray takes seconds to start
    for store in ("none yet", "empty"):
        if store == "empty":
            (tmp_path / "data").mkdir()
            SqliteStore(tmp_path / "data" / "maze.db").close()
        started = time.monotonic()
        out = maze("resume", env=env, cwd=tmp_path)
        took = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        assert "nothing to resume" in out.stdout
        assert took < 3, f"maze resume took {took:.1f} s with nothing to resume ({store})"
        if store == "none yet":
            assert not (tmp_path / "data").exists()       # looking creates no store


def test_resume_leaves_a_run_its_live_process_drives_without_starting_an_engine(tmp_path, cli_env):
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "wf.py").write_text(WORKFLOW)
    env = {**cli_env, "MARKS": str(marks)}
    proc = start_run_until(marks / "gate", "wf.py", env, tmp_path)
    try:
        started = time.monotonic()
        out = maze("resume", env={**env, "MAZE_ENGINE_EXECUTOR": "ray"}, cwd=tmp_path)
        took = time.monotonic() - started
        assert out.returncode == 1 and "nothing to resume" in out.stdout
        assert f"process {proc.pid} on this host is still driving it" in out.stderr
        assert took < 3, f"maze resume took {took:.1f} s"
    finally:
        (marks / "open").write_text("")
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_runs_names_a_store_that_is_not_the_usual_one(tmp_path, cli_env, failed_run):
    out = maze("runs", env=cli_env, cwd=tmp_path)        # cli_env: MAZE_PATHS_DATA_DIR elsewhere
    assert out.returncode == 0
    assert out.stderr.strip().splitlines() == [f"store: {tmp_path / 'data' / 'maze.db'}"]
    assert failed_run in out.stdout


def test_runs_in_an_empty_folder_says_where_it_looked(tmp_path, cli_env):
    usual = {k: v for k, v in cli_env.items() if k != "MAZE_PATHS_DATA_DIR"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = maze("runs", env=usual, cwd=elsewhere)
    assert out.returncode == 0
    assert f"no runs recorded in {elsewhere / '.maze' / 'maze.db'}" in out.stderr
    assert ".maze/" in out.stderr and "MAZE_PATHS_DATA_DIR" in out.stderr
    assert not (elsewhere / ".maze").exists()             # looking creates no store
    as_json = maze("runs", "--json", env=usual, cwd=elsewhere)
    assert json.loads(as_json.stdout) == {"total": 0, "runs": []}
    # the usual store, with runs: nothing more is said
    (elsewhere / "wf.py").write_text(FIRST_CONTACT_WORKFLOW)
    assert maze("run", "wf.py", "--json", env=usual, cwd=elsewhere).returncode == 1
    listed = maze("runs", env=usual, cwd=elsewhere)
    assert listed.returncode == 0 and listed.stderr == "" and "1 of 1 runs" in listed.stdout


def test_config_shows_every_section_with_defaults_without_a_file(tmp_path, cli_env):
    out = maze("config", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["source"] is None
    for section in ("server", "paths", "engine", "local", "sqlite", "tools", "logging", "ray", "daps"):
        assert section in shown, section
    assert shown["ray"]["address"] == "" and shown["ray"]["fuse"] is True
    assert shown["daps"] == {"aging": 0.5, "alpha": 0.3, "default_s": 1.0}
    overridden = json.loads(maze("config", env={**cli_env, "MAZE_RAY_PREFETCH": "4"}, cwd=tmp_path).stdout)
    assert overridden["ray"]["prefetch"] == 4.0 and overridden["ray"]["namespace"] == "maze"
    bad = maze("config", env={**cli_env, "MAZE_RAY_PREFETCH": "many"}, cwd=tmp_path)
    assert bad.returncode == 2 and "[ray] prefetch" in bad.stderr


def test_cluster_without_a_cluster_shows_this_machine(tmp_path, cli_env):
    out = maze("cluster", env=cli_env, cwd=tmp_path)
    if out.returncode == 0 and "node(s)" in out.stdout:
        pytest.skip("a Ray cluster is running on this machine (another test session's)")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no Ray cluster is running here" in out.stdout
    assert f"{len(os.sched_getaffinity(0))} CPUs" in out.stdout and " MB memory" in out.stdout
    assert "maze start --head" in out.stdout
    as_json = json.loads(maze("cluster", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert as_json["cluster"] is None and as_json["this_machine"]["cpu"] == len(os.sched_getaffinity(0))
