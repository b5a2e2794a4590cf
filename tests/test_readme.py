"""The README's examples, verbatim, as a new user runs them: on the default configuration (Ray,
the embedded defaults) and on the local executor. Each code block is read from README.md, so the
README and these tests cannot drift apart."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, maze_exe

ANSI = re.compile(r"\x1b\[")


def readme_block(first_line: str) -> str:
    """The README's fenced code block whose first line is ``first_line``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M):
        if block.splitlines()[0].strip() == first_line:
            return block
    raise AssertionError(f"README.md has no code block starting with {first_line!r}")


def user_env(tmp_path: Path, executor: str | None) -> dict[str, str]:
    """A new user's environment: the venv's bin first on PATH, no MAZE_* settings (so the
    embedded defaults apply: Ray, SQLite in ./.maze), unless an executor is chosen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAZE_", "RAY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if executor:
        env["MAZE_ENGINE_EXECUTOR"] = executor
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("executor", [None, "local"], ids=["ray-default", "local"])
def test_quick_start_verbatim(tmp_path, executor):
    (tmp_path / "wf.py").write_text(readme_block("# wf.py"))
    env = user_env(tmp_path, executor)
    out = run([maze_exe(), "run", "wf.py"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 't2 -> {"n": 3}' in out.stdout
    assert "succeeded" in out.stdout
    # quiet by default: none of Ray's advice, no colour codes when not on a terminal
    assert "Token authentication" not in out.stderr and "SIGTERM" not in out.stderr, out.stderr
    assert not ANSI.search(out.stdout + out.stderr)
    assert (tmp_path / ".maze" / "maze.db").exists()          # where the README says runs are kept

    snippet = tmp_path / "run_wf.py"                           # the engine as a context manager
    snippet.write_text(readme_block("# run_wf.py"))
    out = run([sys.executable, "run_wf.py"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "{'n': 3}"

    listing = run([maze_exe(), "runs", "--json"], tmp_path, env)
    assert json.loads(listing.stdout)["total"] == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sdk_example_verbatim_against_maze_start_on_ray(tmp_path):
    env = user_env(tmp_path, None)
    port = free_port()
    env["MAZE_SERVER_PORT"] = str(port)
    server = subprocess.Popen([maze_exe(), "start"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "maze start did not answer /health"
            time.sleep(0.1)
        assert httpx.get(url + "/health").json()["executor"] == "ray"
        (tmp_path / "sdk_example.py").write_text(readme_block("# sdk_example.py"))
        out = run([sys.executable, "sdk_example.py"], tmp_path, {**env, "MAZE_SERVER_URL": url})
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines()[-1] == "a picture at input/c"
        assert (tmp_path / "out" / "input" / "cat.jpg").read_bytes() == b"not really a picture"
        stopped = run([maze_exe(), "stop"], tmp_path, env)
        assert stopped.returncode == 0, stopped.stderr
        assert server.wait(30) == 0
        log = server.stdout.read()
        # one log format (JSON lines, uvicorn's included), and a requested stop is no crash
        assert "*** SIGTERM received" not in log and "SIGTERM handler" not in log, log
        for line in filter(None, log.splitlines()):
            assert json.loads(line)["event"], line
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_demo_retries_its_flaky_step_once_on_ray(tmp_path):
    """The demo's flaky step fails once, then succeeds: its attempt count is the engine's
    (``current_task().attempt``), the same in every Ray worker process."""
    env = user_env(tmp_path, None)
    out = run([maze_exe(), "demo", "--json"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    tasks = json.loads(out.stdout)["tasks"]
    flaky = next(t for t in tasks.values() if t["name"] == "demo_enrich")
    assert flaky["attempt"] == 2 and flaky["result"]["attempts"] == 2
