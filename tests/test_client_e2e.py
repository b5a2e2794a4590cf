"""The SDK against a real server: uvicorn on a free loopback port serving ``maze_api.create_app``
with the real engine (local executor, fifo, SQLite in a temporary folder), tokens switched on.

Task bodies travel the way a user's do: this module is not installed, so the SDK pickles its
functions by value and the server unpickles them."""

from __future__ import annotations

import os
import socket
import time
import uuid
import zipfile
from pathlib import Path

import pytest

import maze_client
from maze_client import MazeClient, exceptions, task
from maze_client.models import ClusterInfo, Event, Health, Run, RunSummary, TaskResult, Tool
from tests.conftest import make_config

pytest.importorskip("maze_api")
pytest.importorskip("uvicorn")

ALICE = "alice-token-0123456789abcdef"    # admin
BOB = "bob-token-0123456789abcdef-xyz"    # plain user
MAX_BODY_MB = 0.5


@task
def add(a: int, b: int) -> dict:
    return {"sum": a + b}


@task
def shout(text: str) -> dict:
    return {"text": text.upper()}


@task
def explode(reason: str) -> dict:
    raise ValueError(f"boom: {reason}")


@task
def gate(path: str, limit: float = 20.0) -> dict:
    """Wait until ``path`` exists (a test opens the gate), at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)
    return {"opened": True}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The URL of a live server; the engine, store and executor run inside it."""
    from maze_api import create_app
    from maze_api.testing import logging_restored, serve

    tmp = tmp_path_factory.mktemp("maze-server")
    cfg = make_config(tmp)
    cfg.server.tokens = [f"alice={ALICE}", f"bob={BOB}"]
    cfg.server.admins = ["alice"]
    cfg.server.max_body_mb = MAX_BODY_MB
    cfg.logging.level = "WARNING"
    with logging_restored(), serve(create_app(cfg)) as url:   # later tests see logging as it was
        yield {"url": url, "root": tmp}


@pytest.fixture
def client(server):
    with maze_client.connect(server["url"], token=ALICE, timeout=30) as c:
        yield c


@pytest.fixture
def bob(server):
    with MazeClient(server["url"], token=BOB, timeout=30) as c:
        yield c


def run_one(client: MazeClient, func, **inputs) -> tuple[str, str]:
    dag = client.new_dag(f"one-{func.__name__}")
    t1 = dag.add_task(func, inputs=inputs)
    return client.submit_dag(dag), t1


# ---- the seed 000 quick start ----------------------------------------------------------------

def test_submit_wait_and_results(client):
    dag = client.new_dag(name="quickstart")
    t1 = dag.add_task(func=add, inputs={"a": 2, "b": 3})
    t2 = dag.add_task(func=add, inputs={"a": f"{t1}.output.sum", "b": 10})
    t3 = dag.add_task(shout, task_name="loud", inputs={"text": "sum ready"})
    run_id = client.submit_dag(dag)
    assert isinstance(run_id, str) and run_id
    run = client.wait(run_id, timeout=30)
    assert isinstance(run, Run) and run.run_id == run_id
    assert run.status == "succeeded" and run.finished
    assert client.is_run_finished(run_id) is True
    result = client.get_task_result(run_id, t2)
    assert isinstance(result, TaskResult)
    assert result["status"] == "success"
    assert result["task_status"] == "finished"         # seed 000/001's word for a success
    assert result["data"] == {"sum": 15} and result.data == {"sum": 15} and result.succeeded
    assert client.get_task_result(run_id, t3)["data"] == {"text": "SUM READY"}
    summary = client.get_run_summary(run_id)
    assert isinstance(summary, RunSummary) and summary.finished
    assert sorted(t.task_id for t in summary.tasks) == ["t1", "t2", "t3"]
    assert all(t.done for t in summary.tasks)


def test_a_failing_task_fails_the_run_and_keeps_the_error(client):
    dag = client.new_dag("fails")
    t1 = dag.add_task(explode, inputs={"reason": "on purpose"})
    t2 = dag.add_task(shout, inputs={"text": t1.output.text})
    run_id = client.submit_dag(dag)
    run = client.wait(run_id, timeout=30)
    assert run.status == "failed" and not run.succeeded
    result = client.get_task_result(run_id, t1)
    assert result["task_status"] == "failed" and result.failed
    assert "ValueError" in result["error"] and "boom: on purpose" in result["error"]
    assert "data" not in result.raw or result["data"] is None
    downstream = client.get_task_result(run_id, t2)
    assert downstream.done and downstream.task_status.lower() in ("skipped", "cancelled")


def test_wait_with_progress_bar_and_timeout(client, tmp_path):
    run_id, t1 = run_one(client, gate, path=str(tmp_path / "open"))
    with pytest.raises(exceptions.MazeWaitTimeoutError):
        client.wait(run_id, timeout=0.2)
    assert client.is_run_finished(run_id) is False
    (tmp_path / "open").touch()
    assert client.wait(run_id, timeout=30, progress=True).status == "succeeded"


# ---- run files ------------------------------------------------------------------------------

def test_project_files_land_in_the_run_and_download_run_brings_them_back(client, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "helpers.py").write_text("VALUE = 42\n")
    (project / "config.json").write_text('{"k": 1}')
    monkeypatch.chdir(project)
    dag = client.new_dag("with-files")
    dag.add_task(add, inputs={"a": 1, "b": 2})
    run_id = client.submit_dag(dag, project_files=["pkg", "config.json"])
    client.wait(run_id, timeout=30)
    hashes = client.get_file_hashes(run_id)
    assert {"pkg/helpers.py", "config.json"} <= set(hashes)
    import hashlib
    assert hashes["config.json"] == hashlib.sha256(b'{"k": 1}').hexdigest()
    out = client.download_run(run_id, tmp_path / "downloaded")
    assert (out / "pkg" / "helpers.py").read_text() == "VALUE = 42\n"
    assert (out / "config.json").read_text() == '{"k": 1}'
    saved = client.download_run(run_id, tmp_path / "zips", extract=False)
    with zipfile.ZipFile(saved) as archive:
        assert {"pkg/helpers.py", "config.json"} <= set(archive.namelist())


def test_download_of_an_unknown_run_is_not_found(client, tmp_path):
    with pytest.raises(exceptions.MazeNotFoundError) as info:
        client.download_run(str(uuid.uuid4()), tmp_path)
    assert info.value.status_code == 404 and info.value.detail


# ---- lifecycle ------------------------------------------------------------------------------

def test_destroy_run_only_when_finished(client, tmp_path):
    run_id, _ = run_one(client, gate, path=str(tmp_path / "open"))
    with pytest.raises(exceptions.MazeBadRequestError) as info:
        client.destroy_run(run_id)                      # seed 001: 400 while a task is active
    assert info.value.status_code == 400 and info.value.detail
    (tmp_path / "open").touch()
    client.wait(run_id, timeout=30)
    assert client.destroy_run(run_id)["status"] == "success"
    # the files are gone; the run's record stays in the append-only log, marked destroyed
    run = client.get_run(run_id)
    assert run.finished and run["destroyed"] is True
    with pytest.raises(exceptions.MazeNotFoundError, match="destroyed"):
        client.download_run(run_id, tmp_path / "dl")
    assert client.destroy_run(run_id)["status"] == "success"      # destroying twice is harmless


def test_cancel_task_cancels_it_and_skips_what_depends_on_it(client, tmp_path):
    dag = client.new_dag("cancel-me")
    t1 = dag.add_task(gate, inputs={"path": str(tmp_path / "open")})
    t2 = dag.add_task(add, inputs={"a": t1.output.opened, "b": 1})
    run_id = client.submit_dag(dag)
    with pytest.raises(exceptions.MazeNotFoundError):
        client.cancel_task(run_id, "t99")
    answer = client.cancel_task(run_id, t1)
    assert isinstance(answer, dict)
    try:
        run = client.wait(run_id, timeout=30)
    finally:
        (tmp_path / "open").touch()                    # let the worker thread end
    assert run.status == "cancelled"
    assert client.get_task_result(run_id, t1)["task_status"].lower() == "cancelled"
    assert client.get_task_result(run_id, t2)["task_status"].lower() in ("skipped", "cancelled")
    with pytest.raises(exceptions.MazeBadRequestError) as info:   # seed 001: finished -> 400
        client.cancel_task(run_id, t1)
    assert info.value.status_code == 400


# ---- listing --------------------------------------------------------------------------------

def test_list_runs_filters_and_iter_runs_pages(client):
    name = f"page-{uuid.uuid4().hex[:8]}"
    ids = []
    for i in range(5):
        dag = client.new_dag(name)
        dag.add_task(add, inputs={"a": i, "b": 0})
        ids.append(client.submit_dag(dag))
    failing = client.submit_dag(_one_task_dag(client, name, explode, reason="x"))
    for run_id in [*ids, failing]:
        client.wait(run_id, timeout=30)
    page1 = client.list_runs(name=name, limit=2, offset=0)
    page2 = client.list_runs(name=name, limit=2, offset=2)
    assert len(page1) == 2 and len(page2) == 2
    assert not {r.run_id for r in page1} & {r.run_id for r in page2}
    assert all(isinstance(r, Run) and r.name == name for r in page1 + page2)
    every = list(client.iter_runs(name=name, page_size=2))
    assert sorted(r.run_id for r in every) == sorted([*ids, failing])
    succeeded = list(client.iter_runs(name=name, status="succeeded", page_size=4))
    assert sorted(r.run_id for r in succeeded) == sorted(ids)
    assert [r.run_id for r in client.list_runs(name=name, status="failed")] == [failing]
    assert client.get_run(failing).status == "failed"
    assert client.list_runs(name=f"nothing-{uuid.uuid4().hex}") == []


def _one_task_dag(client: MazeClient, name: str, func, **inputs):
    dag = client.new_dag(name)
    dag.add_task(func, inputs=inputs)
    return dag


# ---- server ---------------------------------------------------------------------------------

def test_health_check_and_gpu_info(client):
    health = client.health_check()
    assert isinstance(health, Health) and health.ok and health["status"] == health.status
    assert health.version
    info = client.get_gpu_info()
    assert isinstance(info, ClusterInfo)
    assert info.available is False and info.gpus == []      # the local executor on a CPU machine
    assert info.nodes


def test_events_of_a_run(client):
    run_id, _ = run_one(client, add, a=1, b=2)
    client.wait(run_id, timeout=30)
    events = client.get_events(run_id)
    assert events and all(isinstance(e, Event) for e in events)
    types = [e.type for e in events]
    assert types[0] == "RunSubmitted" and types[-1] == "RunSucceeded" and "TaskSucceeded" in types
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    later = client.get_events(run_id, after=seqs[0])
    assert [e.seq for e in later] == seqs[1:]
    streamed = [e.type for e in client.stream_events(run_id)]
    assert streamed[:1] == ["RunSubmitted"] and "RunSucceeded" in streamed


# ---- tools ----------------------------------------------------------------------------------

TOOL_SOURCE = '''
from maze_core import task

@task(name="{name}", description="Reverse a text")
def reverse(text: str) -> dict:
    return {{"text": text[::-1]}}
'''


def tool_zip(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.py", TOOL_SOURCE.format(name=name))
    return path


def test_list_and_upload_tools(client, bob, tmp_path):
    name = f"reverse_{uuid.uuid4().hex[:6]}"
    archive = tool_zip(tmp_path, name)
    tools = client.list_tools()
    assert all(isinstance(t, Tool) for t in tools)
    assert name not in {t.name for t in tools}
    with pytest.raises(exceptions.MazeAuthenticationError) as info:   # upload needs an admin
        bob.upload_tool(name, archive, description="Reverse a text")
    assert info.value.status_code == 403
    client.upload_tool(name, archive, description="Reverse a text", type="cpu", version="1.0",
                       author="tests", usage_notes="reverse(text)")
    listed = {t.name: t for t in client.list_tools()}
    assert name in listed
    assert listed[name].description == "Reverse a text"
    with pytest.raises(exceptions.MazeConflictError) as info:
        client.upload_tool(name, archive, description="again")
    assert info.value.status_code == 409
    client.delete_tool(name)
    assert name not in {t.name for t in client.list_tools()}
    with pytest.raises(exceptions.MazeNotFoundError):
        client.delete_tool(name)


# ---- typed errors from real responses ---------------------------------------------------------

def test_not_found_errors(client):
    missing = str(uuid.uuid4())
    with pytest.raises(exceptions.MazeNotFoundError) as info:
        client.get_task_result(missing, "t1")
    assert info.value.status_code == 404 and info.value.detail
    with pytest.raises(exceptions.MazeNotFoundError):
        client.get_run(missing)
    with pytest.raises(exceptions.MazeNotFoundError):
        client.get_run_summary(missing)
    run_id, _ = run_one(client, add, a=1, b=1)
    with pytest.raises(exceptions.MazeNotFoundError):
        client.get_task_result(run_id, "t404")


def test_invalid_workflow_is_a_bad_request(client):
    dag = client.new_dag("invalid")
    dag.add_task(add, inputs={"a": 1})                # b is missing: the server's validation says so
    with pytest.raises(exceptions.MazeBadRequestError) as info:
        client.submit_dag(dag)
    assert info.value.status_code in (400, 422)
    assert "b" in str(info.value.detail)


def test_oversized_body_is_payload_too_large(client, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(int(MAX_BODY_MB * 1024 * 1024 * 2)))   # incompressible
    dag = client.new_dag("big")
    dag.add_task(add, inputs={"a": 1, "b": 2})
    with pytest.raises(exceptions.MazePayloadTooLargeError) as info:
        client.submit_dag(dag, project_files=[big])
    assert info.value.status_code == 413
    assert isinstance(info.value, exceptions.MazeBadRequestError)


def test_authentication_errors(server, client):
    run_id, t1 = run_one(client, add, a=1, b=1)
    for token in (None, "wrong-token-0123456789abcdef"):
        with MazeClient(server["url"], token=token or "", max_retries=0) as anonymous:
            with pytest.raises(exceptions.MazeAuthenticationError) as info:
                anonymous.get_task_result(run_id, t1)
            assert info.value.status_code == 401
            with pytest.raises(exceptions.MazeAuthenticationError):
                anonymous.submit_dag(_one_task_dag(anonymous, "anon", add, a=1, b=1))


def test_another_tokens_run_is_not_found(client, bob):
    run_id, t1 = run_one(client, add, a=1, b=1)
    client.wait(run_id, timeout=30)
    for call in (lambda: bob.get_task_result(run_id, t1), lambda: bob.get_run(run_id),
                 lambda: bob.get_run_summary(run_id), lambda: bob.destroy_run(run_id),
                 lambda: bob.cancel_task(run_id, t1)):
        with pytest.raises(exceptions.MazeNotFoundError):
            call()
    assert run_id not in {r.run_id for r in bob.iter_runs()}
    assert client.get_run(run_id).status == "succeeded"


def test_connection_error_when_nobody_listens():
    with MazeClient(f"http://127.0.0.1:{free_port()}", max_retries=1, sleep=lambda s: None) as gone:
        with pytest.raises(exceptions.MazeConnectionError):
            gone.health_check()

