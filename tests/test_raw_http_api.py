"""A client that knows only the specification (seed 001): plain HTTP with httpx, no maze_client,
against a real server (uvicorn on a loopback port, the local executor, SQLite in a temporary folder).

Its functions are plain: no ``@task``, defined in a script this process cannot import, so cloudpickle
ships them by value, as it would from another machine."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import zipfile

import cloudpickle
import httpx
import pytest

from maze_api import create_app
from maze_api.testing import logging_restored, serve
from maze_core.engine import Engine
from maze_core.registry import ToolRegistry, task
from tests.conftest import make_config

TOKEN = "raw-client-token-0123456789"
CLIENT_SCRIPT = '''
def split_words(text: str, min_len: int = 1) -> dict:
    """Split text into words of at least min_len letters."""
    words = [w for w in text.split() if len(w) >= min_len]
    return {"words": words, "count": len(words)}


def shout(words: list, count: int) -> dict:
    return {"text": " ".join(w.upper() for w in words), "n": count}
'''
PROJECT = {"main.py": "print('hello')\n", "data/input.txt": "the quick brown fox", "data/img.bin": b"\x00\xff"}


@task(name="word_count")
def word_count(text: str) -> dict:
    """A tool installed on the server only."""
    return {"words": len(text.split())}


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with logging_restored():
        cfg = make_config(tmp_path_factory.mktemp("raw"))
        cfg.server.tokens = [f"raw={TOKEN}"]
        cfg.logging.level = "WARNING"
        tools = ToolRegistry()
        tools.register_task(word_count)
        engine = Engine.from_config(cfg, registry=tools, actor="server")
        engine.start()
        try:
            with serve(create_app(cfg, engine)) as address:
                yield address
        finally:
            engine.stop()
            engine.store.close()


@pytest.fixture
def http(url):
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        yield client


def client_functions() -> dict:
    namespace: dict = {"__name__": "raw_client_script"}   # not importable here: pickled by value
    exec(CLIENT_SCRIPT, namespace)
    return namespace


def serialized(func) -> str:
    return base64.b64encode(cloudpickle.dumps(func)).decode("ascii")


def zip_of(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def submit(http: httpx.Client, payload: dict, project: dict | None = None) -> httpx.Response:
    parts = {"workflow_payload": ("workflow.json", json.dumps(payload).encode(), "application/json")}
    if project is not None:
        parts["project_archive"] = ("project.zip", zip_of(project), "application/zip")
    return http.post("/submit_workflow/", files=parts)


def result_of(http: httpx.Client, run_id: str, task_id: str, timeout: float = 30) -> dict:
    """``POST /get/`` until the task has finished or failed."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.post("/get/", json={"run_id": run_id, "task_id": task_id})
        assert response.status_code == 200, response.text
        body = response.json()
        if body["task_status"] in ("finished", "failed", "CANCELLED") or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_a_workflow_of_plain_functions_runs_end_to_end(http):
    funcs = client_functions()
    payload = {"tasks": {
        "t1": {"func_name": "split_words", "serialized_func": serialized(funcs["split_words"]),
               "dependencies": [], "inputs": {"text": "the quick brown fox", "min_len": 4}},
        "t2": {"func_name": "shout", "serialized_func": serialized(funcs["shout"]),
               "dependencies": ["t1"], "inputs": {"words": "t1.output.words", "count": "t1.output.count"},
               "resources": {"cpu": 1, "mem": 256}},
        "t3": {"func_name": "word_count", "serialized_func": "",   # a tool of the server, by name
               "dependencies": ["t2"], "inputs": {"text": "t2.output.text"}},
    }}
    response = submit(http, payload, PROJECT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["msg"]) == ("success", "Workflow submitted successfully.")
    run_id = body["run_id"]

    t1, t2, t3 = (result_of(http, run_id, tid) for tid in ("t1", "t2", "t3"))
    assert (t1["status"], t1["task_status"]) == ("success", "finished")
    assert t1["data"] == {"words": ["quick", "brown"], "count": 2}
    assert t2["data"] == {"text": "QUICK BROWN", "n": 2}
    assert t3["data"] == {"words": 2}

    summary = http.get(f"/runs/{run_id}/summary").json()
    assert summary["status"] == "success" and summary["run_status"] == "succeeded"
    assert [(t["task_id"], t["name"], t["task_status"]) for t in summary["tasks"]] == [
        ("t1", "split_words", "finished"), ("t2", "shout", "finished"), ("t3", "word_count", "finished")]

    hashes = http.get(f"/files/hashes/{run_id}").json()
    expected = {name: hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()
                for name, data in PROJECT.items()}
    assert hashes == {"status": "success", "run_id": run_id, "hashes": expected}

    chosen = http.post(f"/files/download/{run_id}", json={"files": ["data/input.txt", "data/img.bin"]})
    assert chosen.status_code == 200 and chosen.headers["content-type"] == "application/zip"
    assert unzip(chosen.content) == {"data/input.txt": b"the quick brown fox", "data/img.bin": b"\x00\xff"}

    whole = http.get(f"/runs/{run_id}/download")
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/zip"
    assert {name: hashlib.sha256(data).hexdigest() for name, data in unzip(whole.content).items()} == expected


def test_a_plain_function_is_checked_against_its_signature(http):
    funcs = client_functions()
    payload = {"tasks": {"t1": {"func_name": "split_words", "serialized_func": serialized(funcs["split_words"]),
                                "dependencies": [], "inputs": {"text": 7, "max_len": 3}}}}
    response = submit(http, payload)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "task t1 (split_words) has unknown input 'max_len'; it takes: min_len, text" in detail
    assert "input 'text' of task t1 (split_words) must be string, got int 7" in detail


def test_an_unknown_tool_name_is_refused_with_close_matches(http):
    payload = {"tasks": {"t1": {"func_name": "word_cuont", "serialized_func": "", "dependencies": [],
                                "inputs": {"text": "a b"}}}}
    response = submit(http, payload)
    assert response.status_code == 422
    assert "unknown tool 'word_cuont': did you mean 'word_count'?" in response.json()["detail"]


def test_a_dag_built_by_tool_name_without_the_tool_runs_on_the_server(http):
    """What the SDK sends for ``dag.add_task("word_count", ...)`` on a machine without the tool."""
    from maze_core.dag import DAG

    dag = DAG("by-name", registry=ToolRegistry())
    dag.add_task("word_count", inputs={"text": "one two three"})
    response = submit(http, dag.to_wire())
    assert response.status_code == 200, response.text
    body = result_of(http, response.json()["run_id"], "t1")
    assert (body["task_status"], body["data"]) == ("finished", {"words": 3})
