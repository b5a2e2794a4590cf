"""``maze start`` / ``maze stop`` / ``maze token new``: the real command in subprocesses serving the
real API (engine, store and executor in the server process), and the ``--head`` and Ray hand-offs
(the Ray plugin's ``start_cluster_head`` / ``stop_cluster_head``) with ``ray start`` / ``ray stop``
replaced by fakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

import maze_server
from maze_api.auth import hash_token
from maze_api.testing import logging_restored
from maze_core import plugins, task
from maze_core.cli import _Ctx
from maze_core.dag import DAG
from tests.conftest import maze_exe

TOKEN = "cli-test-token-0123456789abc"


@pytest.fixture(scope="module", autouse=True)
def _leave_logging_as_found():
    with logging_restored():
        yield


@pytest.fixture
def env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAZE_")}
    env.update({"MAZE_PATHS_DATA_DIR": str(tmp_path / "data"), "MAZE_PATHS_PROJECT_ROOT": str(tmp_path),
                "MAZE_LOAD_PLUGINS": "sqlite,local,daps,server", "MAZE_ENGINE_EXECUTOR": "local",
                "MAZE_ENGINE_SCHEDULER": "fifo", "MAZE_LOGGING_LEVEL": "WARNING",
                "MAZE_SERVER_TOKENS": json.dumps([f"ops={TOKEN}"]), "MAZE_SERVER_ADMINS": "ops",
                "PYTHONUNBUFFERED": "1"})
    return env


def maze(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([maze_exe(), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["MAZE_PATHS_PROJECT_ROOT"])


def start(env: dict[str, str]) -> tuple[subprocess.Popen, dict]:
    """``maze start --port 0`` in the background; returns it and its server.json once it serves."""
    server_file = Path(env["MAZE_PATHS_DATA_DIR"]) / "server.json"
    proc = subprocess.Popen([maze_exe(), "start", "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=env["MAZE_PATHS_PROJECT_ROOT"])
    deadline = time.monotonic() + 60
    while True:
        if server_file.exists():
            info = json.loads(server_file.read_text())
            if info["pid"] == proc.pid:
                return proc, info
        if proc.poll() is not None:
            raise AssertionError(f"maze start exited with {proc.returncode}: {proc.stdout.read()}")
        assert time.monotonic() < deadline, "maze start did not write server.json in time"
        time.sleep(0.02)


def stop_hard(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def submit(url: str, dag: DAG) -> str:
    response = httpx.post(url + "/submit_workflow/", headers={"Authorization": f"Bearer {TOKEN}"},
                          files={"workflow_payload": ("w.json", json.dumps(dag.to_wire()))}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["run_id"]


def wait_status(url: str, run_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{url}/runs/{run_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        if run["status"] != "running":
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.02)


def test_start_serves_and_stop_stops(env):
    @task
    def double(x: int) -> dict:   # local: shipped by value, as a user's script function is
        import os
        with open(f"/proc/{os.getpid()}/environ", "rb") as fh:   # what the process started with
            started_with = fh.read()
        return {"y": 2 * x, "tokens_in_env": "MAZE_SERVER_TOKENS" in os.environ,
                "token_in_proc_environ": TOKEN.encode() in started_with}

    proc, info = start(env)
    try:
        assert info["host"] == "127.0.0.1" and info["port"] > 0 and info["ray_head"] is None
        url = info["url"]
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ok" and health["executor"] == "local"
        assert httpx.get(url + "/runs").status_code == 401        # tokens from the environment
        dag = DAG("cli")
        t1 = dag.add_task(double, inputs={"x": 21})
        run_id = submit(url, dag)
        assert wait_status(url, run_id)["status"] == "succeeded"
        result = httpx.post(url + "/get/", json={"run_id": run_id, "task_id": t1},
                            headers={"Authorization": f"Bearer {TOKEN}"}).json()
        # what tasks (and workers) see: no token, not even in the environment the server started with
        assert result["data"] == {"y": 42, "tokens_in_env": False, "token_in_proc_environ": False}
        with open(f"/proc/{proc.pid}/environ", "rb") as fh:
            assert TOKEN.encode() not in fh.read()
        again = maze(env, "start", "--port", "0")
        assert again.returncode == 1 and "already running" in again.stderr
        stopped = maze(env, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert f"pid {proc.pid}" in stopped.stdout
        assert proc.wait(15) == 0
        assert not (Path(env["MAZE_PATHS_DATA_DIR"]) / "server.json").exists()
    finally:
        stop_hard(proc)


def test_a_restarted_server_resumes_unfinished_runs(env, tmp_path):
    gate_file = tmp_path / "gate"

    @task
    def wait_for_gate(path: str) -> dict:
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(path)
            time.sleep(0.01)
        return {"ok": True}

    proc, info = start(env)
    try:
        dag = DAG("resumable")
        dag.add_task(wait_for_gate, inputs={"path": str(gate_file)})
        run_id = submit(info["url"], dag)
        deadline = time.monotonic() + 20
        while httpx.post(info["url"] + "/get/", json={"run_id": run_id, "task_id": "t1"},
                         headers={"Authorization": f"Bearer {TOKEN}"}).json()["maze_status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)   # the server dies mid-task
        proc.wait(10)
        proc, info = start(env)            # a stale server.json does not stop a new start
        gate_file.touch()
        assert wait_status(info["url"], run_id)["status"] == "succeeded"
        events = httpx.get(f"{info['url']}/runs/{run_id}/events",
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()["events"]
        assert "RunResumed" in [e["type"] for e in events]
        assert maze(env, "stop").returncode == 0
        assert proc.wait(15) == 0
    finally:
        stop_hard(proc)


def test_start_refuses_to_listen_beyond_loopback_without_tokens(env):
    del env["MAZE_SERVER_TOKENS"], env["MAZE_SERVER_ADMINS"]
    result = maze(env, "start", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "beyond loopback" in result.stderr
    assert not (Path(env["MAZE_PATHS_DATA_DIR"]) / "server.json").exists()


def test_stop_without_a_server(env):
    result = maze(env, "stop")
    assert result.returncode == 0 and "no Maze server is running" in result.stdout
    data = Path(env["MAZE_PATHS_DATA_DIR"])
    data.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / "server.json").write_text(json.dumps({"pid": dead.pid, "url": "http://127.0.0.1:1"}))
    result = maze(env, "stop")
    assert result.returncode == 0 and "stale" in result.stdout
    assert not (data / "server.json").exists()


def test_token_new_prints_a_token_and_its_hash(env):
    result = maze(env, "token", "new", "alice")
    assert result.returncode == 0, result.stderr
    token = result.stdout.split("shown once): ", 1)[1].split()[0]
    assert len(token) >= 32
    assert f'"alice={hash_token(token)}"' in result.stdout


# ---------------------------------------------------------------------------- --head and Ray, faked
def _server_cli(tmp_path, extra: str = "") -> click.Group:
    """A root command with only the server plugin's commands, on a config in ``tmp_path``."""
    config = tmp_path / "maze.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "data"}"\n[engine]\nexecutor = "local"\n'
                      f'[logging]\nlevel = "WARNING"\n{extra}')

    @click.group()
    @click.pass_context
    def root(ctx: click.Context) -> None:
        ctx.obj = _Ctx(str(config))

    maze_server.register_commands(cli=root)
    return root


@pytest.fixture
def cli(tmp_path):
    return _server_cli(tmp_path)


def test_head_without_the_ray_plugin_is_a_clear_error(cli):
    with plugins.plugin_set.without("ray"):   # no plugin implements start_cluster_head
        result = CliRunner().invoke(cli, ["start", "--head", "--port", "0"])
    assert result.exit_code == 1
    assert "--head needs the Ray plugin" in result.output


def test_head_starts_ray_and_points_the_engine_at_it(cli, monkeypatch):
    from maze_ray import cluster
    calls = {}
    monkeypatch.setattr(cluster, "start_head",
                        lambda port, host: calls.setdefault("head", (port, host)) and "10.1.2.3:7000")
    monkeypatch.setattr(cluster, "node_ip", lambda: "10.1.2.3")

    def fake_serve(config, host, port, ray_head=None):
        calls["serve"] = (host, port, ray_head, config.section("ray").get("address"), config.engine.executor)

    monkeypatch.setattr(maze_server, "_serve", fake_serve)
    result = CliRunner().invoke(cli, ["start", "--head", "--ray-port", "7000", "--port", "9123"])
    assert result.exit_code == 0, result.output
    assert calls["head"] == (7000, "127.0.0.1"), "a loopback server keeps its Ray head on loopback"
    assert calls["serve"] == ("127.0.0.1", 9123, "10.1.2.3:7000", "10.1.2.3:7000", "ray")
    calls.clear()
    result = CliRunner().invoke(cli, ["start", "--head", "--ray-host", "10.9.9.9", "--port", "9123"])
    assert result.exit_code == 0, result.output
    assert calls["head"] == (6379, "10.9.9.9")


def test_stop_stops_ray_only_when_this_server_started_a_head(cli, monkeypatch, tmp_path):
    from maze_ray import cluster
    stopped = []
    monkeypatch.setattr(cluster, "stop_ray", lambda: stopped.append(True))
    data = tmp_path / "data"
    data.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / "server.json").write_text(json.dumps({"pid": dead.pid, "ray_head": None}))
    assert CliRunner().invoke(cli, ["stop"]).exit_code == 0
    assert stopped == []
    (data / "server.json").write_text(json.dumps({"pid": dead.pid, "ray_head": "10.1.2.3:7000"}))
    result = CliRunner().invoke(cli, ["stop"])
    assert result.exit_code == 0 and stopped == [True]
    assert "stopped the Ray head" in result.output


@pytest.mark.parametrize("name, text", [("bad name", "invalid"), ("local", "reserved"), ("x=y", "invalid"),
                                        ("a\n", "invalid")])
def test_token_new_refuses_a_name_the_server_would_refuse(cli, name, text):
    """The printed entry must be one [server] tokens accepts; it printed any name."""
    result = CliRunner().invoke(cli, ["token", "new", name])
    assert result.exit_code == 2, result.output
    assert text in result.output and "sha256:" not in result.output


def test_token_new_entry_is_accepted_by_the_server(cli, tmp_path):
    from maze_api.auth import TokenTable
    from tests.conftest import make_config
    result = CliRunner().invoke(cli, ["token", "new", "ci-bot"])
    assert result.exit_code == 0, result.output
    token = result.output.split("shown once): ", 1)[1].split()[0]
    entry = result.output.split("entry: ", 1)[1].strip().strip('"')
    cfg = make_config(tmp_path)
    cfg.server.tokens = [entry]
    assert TokenTable.from_config(cfg).identify(token).name == "ci-bot"


def test_start_checks_the_host_from_the_config_file_too(tmp_path, monkeypatch):
    """[server] host in the file (not only --host) is held to the loopback rule; --host 127.0.0.1
    overrides it; with a token the exposed host is served."""
    served = []
    monkeypatch.setattr(maze_server, "_serve", lambda config, host, port, ray_head=None: served.append(host))
    def cli_for(extra: str) -> click.Group:
        return _server_cli(tmp_path, f'[server]\nhost = "0.0.0.0"\n{extra}')

    monkeypatch.delenv("MAZE_SERVER_TOKENS", raising=False)
    refused = CliRunner().invoke(cli_for(""), ["start"])
    assert refused.exit_code == 2 and "beyond loopback" in refused.output and served == []
    assert CliRunner().invoke(cli_for(""), ["start", "--host", "127.0.0.1"]).exit_code == 0
    allowed = CliRunner().invoke(cli_for(f'tokens = ["ops={hash_token(TOKEN)}"]\n'), ["start"])
    assert allowed.exit_code == 0, allowed.output
    assert served == ["127.0.0.1", "0.0.0.0"]


def test_the_ray_plugin_picks_the_head_address_and_the_executor(tmp_path, monkeypatch):
    """Its ``start_cluster_head``: a server bound beyond loopback gets a head on this machine's
    address (so workers can join); ``executor = "local"`` becomes ``"ray"``, ``"auto"`` stays."""
    import maze_ray
    from maze_ray import cluster
    from tests.conftest import make_config
    started = []
    monkeypatch.setattr(cluster, "start_head", lambda port, host: started.append((port, host)) or f"{host}:{port}")
    monkeypatch.setattr(cluster, "node_ip", lambda: "10.1.2.3")
    config = make_config(tmp_path)
    config.engine.executor = "auto"
    assert maze_ray.start_cluster_head(config=config, port=7000, host=None, server_host="0.0.0.0") == "10.1.2.3:7000"
    assert started == [(7000, "10.1.2.3")]
    assert config.section("ray")["address"] == "10.1.2.3:7000" and config.engine.executor == "auto"
    config.engine.executor = "local"
    maze_ray.start_cluster_head(config=config, port=7000, host=None, server_host="::1")
    assert started[-1] == (7000, "127.0.0.1") and config.engine.executor == "ray"


def test_the_server_plugin_names_no_executor_plugin():
    """``--head`` goes through hooks: maze_server imports nothing of maze_ray (nor any executor)."""
    import ast
    source = Path(maze_server.__file__).read_text()
    imported = {node.module for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {name for name in imported if name.split(".")[0] in ("maze_ray", "maze_local", "ray")}
