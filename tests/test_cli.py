"""The real ``maze`` command, in subprocesses, on private SQLite files."""

from __future__ import annotations

import json
import os
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
    assert plugins["sqlite"]["hooks"] == ["register_stores"]
    assert plugins["local"]["hooks"] == ["register_executors"]
    assert plugins["daps"]["hooks"] == ["register_schedulers"]
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
    # listing records what is installed, once
    maze("tools", "--json", env=env, cwd=tmp_path)
    from maze_sqlite.store import SqliteStore
    store = SqliteStore(tmp_path / "data" / "maze.db")
    assert [e.type for e in store.read_stream("tool:greet")] == ["ToolRegistered"]
    (tools / "greet.py").unlink()
    maze("tools", "--json", env=env, cwd=tmp_path)
    assert [e.type for e in store.read_stream("tool:greet")] == ["ToolRegistered", "ToolRemoved"]
