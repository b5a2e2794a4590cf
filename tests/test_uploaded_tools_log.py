"""Uploaded tools live in the log (issue 12 item 7): ``ToolUploaded`` keeps the metadata and the
archive (a blob), ``ToolDeleted`` ends it; a server that starts again rebuilds its uploaded tools
from the log, restoring a lost or altered folder, and does not bring back a deleted one."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager

import httpx
import pytest

from maze_api import create_app
from maze_api.testing import logging_restored, serve
from maze_core import events as ev
from maze_core.audit import replay_check, verify_chain
from maze_core.engine import Engine
from maze_core.registry import ToolRegistry
from maze_core.store import blob_hash
from tests.conftest import make_config
from tests.test_api_server import TOOL_SOURCE, submit_ok, upload_tool, wait_run


@pytest.fixture(autouse=True)
def _leave_logging_as_found():
    with logging_restored():
        yield


@contextmanager
def server(cfg):
    """A server on a fresh engine (a restart: nothing registered but what the start registers)."""
    engine = Engine.from_config(cfg, registry=ToolRegistry())
    engine.start()
    try:
        with serve(create_app(cfg, engine)) as url, httpx.Client(base_url=url, timeout=60) as client:
            yield engine, client
    finally:
        engine.stop()
        engine.store.close()


def tool_names(client: httpx.Client) -> set[str]:
    return {t["name"] for t in client.get("/tools").json()["tools"]}


def runs_ok(client: httpx.Client, task_name: str) -> None:
    run_id = submit_ok(client, {"tasks": {"t1": {"func_name": task_name, "inputs": {"text": "a b c"},
                                                 "dependencies": []}}})
    assert wait_run(client, run_id)["status"] == "succeeded"
    assert client.post("/get/", json={"run_id": run_id, "task_id": "t1"}).json()["data"] == {"words": 3}


@pytest.fixture
def cfg(tmp_path):
    config = make_config(tmp_path, validate_events=True)
    config.logging.level = "WARNING"
    return config


def test_a_lost_folder_comes_back_from_the_log_and_runs(cfg, tmp_path):
    with server(cfg) as (engine, client):
        response = upload_tool(client, "kept", {"tool.py": TOOL_SOURCE.format(name="kept")})
        assert response.status_code == 201, response.text
        metadata = response.json()["metadata"]
        [uploaded] = engine.store.read_stream(ev.UPLOADS_STREAM)
        assert uploaded.type == ev.TOOL_UPLOADED and uploaded.data["name"] == "kept"
        assert uploaded.data["metadata"] == metadata
        archive = engine.store.get_blob(uploaded.data["archive"])       # the ZIP, content addressed
        assert blob_hash(archive) == uploaded.data["archive"] and len(archive) == uploaded.data["bytes"]
        folder = tmp_path / "maze" / "model_cache" / "kept"
    shutil.rmtree(folder)                                                  # the folder is lost
    with server(cfg) as (engine, client):
        assert "kept_count" in tool_names(client)
        assert json.loads((folder / "metadata.json").read_text()) == metadata
        runs_ok(client, "kept_count")
        assert verify_chain(engine.store).ok and replay_check(engine.store) == []


def test_an_altered_folder_is_restored(cfg, tmp_path):
    with server(cfg) as (_, client):
        assert upload_tool(client, "edited", {"tool.py": TOOL_SOURCE.format(name="edited")}).status_code == 201
    folder = tmp_path / "maze" / "model_cache" / "edited"
    (folder / "tool.py").write_text("raise RuntimeError('tampered')\n")   # its code is changed
    with server(cfg) as (_, client):
        assert "edited_count" in tool_names(client)
        assert "tampered" not in (folder / "tool.py").read_text()
        runs_ok(client, "edited_count")


def test_a_deleted_tool_stays_gone(cfg, tmp_path):
    with server(cfg) as (engine, client):
        assert upload_tool(client, "gone", {"tool.py": TOOL_SOURCE.format(name="gone")}).status_code == 201
        response = client.delete("/tools/gone")
        assert response.status_code == 200, response.text
        events = engine.store.read_stream(ev.UPLOADS_STREAM)
        assert [e.type for e in events] == [ev.TOOL_UPLOADED, ev.TOOL_DELETED]
        assert events[-1].data == {"name": "gone", "tasks": ["gone_count"]}
    folder = tmp_path / "maze" / "model_cache" / "gone"
    assert not folder.exists()
    with server(cfg) as (engine, client):
        assert "gone_count" not in tool_names(client)
        assert not folder.exists()
        # uploaded again after its deletion: the latest upload counts
        assert upload_tool(client, "gone", {"tool.py": TOOL_SOURCE.format(name="gone")}).status_code == 201
    shutil.rmtree(folder)
    with server(cfg) as (engine, client):
        assert "gone_count" in tool_names(client)
        assert verify_chain(engine.store).ok and replay_check(engine.store) == []


def test_a_folder_of_a_deleted_tool_left_on_disk_is_not_loaded(cfg, tmp_path):
    with server(cfg) as (_, client):
        assert upload_tool(client, "stale", {"tool.py": TOOL_SOURCE.format(name="stale")}).status_code == 201
        folder = tmp_path / "maze" / "model_cache" / "stale"
        saved = tmp_path / "saved"
        shutil.copytree(folder, saved)
        assert client.delete("/tools/stale").status_code == 200
    shutil.copytree(saved, folder)                                         # put back behind the log's back
    with server(cfg) as (_, client):
        assert "stale_count" not in tool_names(client)
        assert not folder.exists()


def test_a_folder_the_log_does_not_know_is_still_loaded(cfg, tmp_path):
    """Tools uploaded before uploads were logged keep working."""
    with server(cfg) as (_, client):
        assert upload_tool(client, "legacy", {"tool.py": TOOL_SOURCE.format(name="legacy")}).status_code == 201
    cfg.paths.data_dir = str(tmp_path / "other-data")                     # a log without the upload
    with server(cfg) as (_, client):
        assert "legacy_count" in tool_names(client)
