"""One door into the log: every event, whoever makes it (the engine, an API route, a tool reload),
is appended by the engine loop, so ``Engine.subscribe`` callbacks and ``on_event`` observers see
each committed event, in order, and nothing reaches the log behind their backs."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from maze_api import create_app
from maze_api.testing import logging_restored, serve
from maze_core import events as ev
from maze_core import hookimpl
from maze_core.dag import DAG
from maze_core.engine import Engine
from maze_core.errors import ConcurrencyError, RunStateError
from maze_core.events import NewEvent
from maze_core.plugins import load_plugins
from maze_core.registry import ToolRegistry, task
from maze_core.store import blob_hash
from tests.conftest import make_config
from tests.test_api_server import TOOL_SOURCE, upload_tool

ADMIN = "one-door-admin-token-0123456789"
GATES: dict[str, threading.Event] = {}
CALLS: dict[str, int] = {}


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


@task
def add(a: int, b: int) -> dict:
    return {"sum": a + b}


@task
def boom() -> dict:
    raise ValueError("boom")


@task
def flaky(key: str) -> dict:
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] == 1:
        raise ConnectionError("first attempt fails")
    return {"attempts": CALLS[key]}


@task
def gated(name: str) -> dict:
    CALLS[f"gate:{name}"] = CALLS.get(f"gate:{name}", 0) + 1
    if not gate(name).wait(20):
        raise TimeoutError(f"gate {name} never opened")
    return {"gate": name}


@task(name="one_door_tool")
def a_tool(text: str) -> dict:
    return {"text": text}


@pytest.fixture(autouse=True)
def _leave_logging_as_found():
    with logging_restored():
        yield
    for event in GATES.values():
        event.set()


def _wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _running(engine: Engine, run_id: str) -> bool:
    return engine.store.get_run(run_id)["task_counts"].get("running", 0) >= 1


def test_every_event_type_reaches_subscribers_and_observers(tmp_path):
    config = make_config(tmp_path, validate_events=True)
    config.server.tokens = [f"admin={ADMIN}"]
    config.server.admins = ["admin"]
    config.logging.level = "WARNING"
    registry = ToolRegistry()

    # a run left unfinished by an engine that stopped under it: the observed engine resumes it
    first = Engine.from_config(config, registry=registry)
    first.start()
    unfinished = DAG("left-behind")
    unfinished.add_task(gated, inputs={"name": "resume"})
    left_id = first.submit(unfinished)
    _wait_for(lambda: _running(first, left_id))
    first.stop(wait=False)
    before = first.store.last_seq()
    first.store.close()

    observed: list[ev.Event] = []

    class Observer:
        @hookimpl
        def on_event(self, event):
            observed.append(event)

    pm = load_plugins()
    pm.register(Observer(), name="one-door-observer")
    engine = Engine.from_config(config, registry=registry, actor="server")
    subscribed: list[ev.Event] = []
    engine.subscribe(subscribed.extend)
    try:
        assert engine.start(resume=True) == [left_id]                          # RunResumed
        gate("resume").set()
        assert engine.wait(left_id, timeout=20)["status"] == "succeeded"

        ok = DAG("succeeds")                                                   # the happy path
        first_add = ok.add_task(add, inputs={"a": 1, "b": 2})
        ok.add_task(add, inputs={"a": first_add.output.sum, "b": 1})
        ok_id = engine.submit(ok)
        assert engine.wait(ok_id, timeout=20)["status"] == "succeeded"

        failing = DAG("fails")                                                 # failed, skipped
        bad = failing.add_task(boom)
        failing.add_task(add, inputs={"a": bad.output.sum, "b": 1})
        assert engine.wait(engine.submit(failing), timeout=20)["status"] == "failed"

        retried = DAG("retries")                                               # retrying
        retried.add_task(flaky, inputs={"key": "one-door"}, retries=1)
        assert engine.wait(engine.submit(retried), timeout=20)["status"] == "succeeded"

        cancelled = DAG("cancelled")                                           # cancelled
        cancelled.add_task(gated, inputs={"name": "cancel"})
        cancelled_id = engine.submit(cancelled)
        _wait_for(lambda: _running(engine, cancelled_id))
        engine.cancel(cancelled_id)
        assert engine.wait(cancelled_id, timeout=20)["status"] == "cancelled"
        gate("cancel").set()

        registry.register_task(a_tool)                                         # tool registered
        registry.unregister("one_door_tool")                                   # tool removed

        with serve(create_app(config, engine)) as url, httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as client:
            destroyed = client.post("/runs/destroy", json={"run_id": ok_id})   # run destroyed
            assert destroyed.status_code == 200, destroyed.text
            reloaded = client.post("/tools/reload")                            # tools reloaded
            assert reloaded.status_code == 200, reloaded.text
            uploaded = upload_tool(client, "door", {"tool.py": TOOL_SOURCE.format(name="door")})
            assert uploaded.status_code == 201, uploaded.text                  # tool uploaded
            deleted = client.delete("/tools/door")                             # tool deleted
            assert deleted.status_code == 200, deleted.text

        logged = engine.store.read_all(after_seq=before)
        # the subscriber saw every event committed since it subscribed, each once, in order
        assert [e.seq for e in subscribed] == [e.seq for e in logged]
        _wait_for(lambda: len(observed) >= len(logged))
        assert [e.seq for e in observed] == [e.seq for e in logged]
        # and between them, every event type that events.py declares
        assert set(ev.EVENT_MODELS) <= {e.type for e in subscribed}
        assert set(ev.EVENT_MODELS) <= {e.type for e in observed}
        for event in logged:
            ev.validate_event(event.type, event.data)
    finally:
        pm.unregister(name="one-door-observer")
        engine.stop()
        engine.store.close()


def test_record_checks_events_and_answers_with_what_was_committed(engine):
    stream = ev.tool_stream("recorded")
    [stored] = engine.record([NewEvent(stream, ev.TOOL_REMOVED, {"name": "recorded", "reason": "test"},
                                       "tester")])
    assert stored.seq == engine.store.last_seq() and stored.version == 1 and stored.actor == "tester"
    assert engine.record([]) == []
    # a payload that does not match its model is refused before anything is appended
    with pytest.raises(ValueError, match="reason"):
        engine.record([NewEvent(stream, ev.TOOL_REMOVED, {"name": "recorded"})])
    # a stale expected version: that stream's events are not recorded, the engine goes on
    with pytest.raises(ConcurrencyError):
        engine.record([NewEvent(stream, ev.TOOL_REMOVED, {"name": "recorded", "reason": "again"},
                                expected_version=0)])
    assert engine.store.stream_version(stream) == 1
    dag = DAG("after")
    dag.add_task(add, inputs={"a": 1, "b": 1})
    assert engine.wait(engine.submit(dag), timeout=20)["status"] == "succeeded"


def test_record_refuses_events_of_a_run_the_engine_drives(engine):
    dag = DAG("driven")
    dag.add_task(gated, inputs={"name": "driven"})
    run_id = engine.submit(dag)
    try:
        with pytest.raises(RunStateError, match="records its events itself"):
            engine.record([NewEvent(ev.run_stream(run_id), ev.RUN_DESTROYED, {"files": 0, "bytes": 0})])
    finally:
        gate("driven").set()
    assert engine.wait(run_id, timeout=20)["status"] == "succeeded"
    assert ev.RUN_DESTROYED not in [e.type for e in engine.store.read_stream(ev.run_stream(run_id))]


def test_record_cannot_be_called_on_the_engine_thread(engine):
    errors: list[BaseException] = []

    def subscriber(events: list[ev.Event]) -> None:
        if not errors:
            try:
                engine.record([NewEvent(ev.tool_stream("x"), ev.TOOL_REMOVED, {"name": "x", "reason": "y"})])
            except Exception as exc:  # noqa: BLE001 - the test looks at it
                errors.append(exc)

    unsubscribe = engine.subscribe(subscriber)
    try:
        dag = DAG("on-thread")
        dag.add_task(add, inputs={"a": 1, "b": 1})
        assert engine.wait(engine.submit(dag), timeout=20)["status"] == "succeeded"
    finally:
        unsubscribe()
    assert errors and "engine thread" in str(errors[0])


def test_record_stores_blobs_with_its_events(engine):
    data = b"archive bytes"
    digest = blob_hash(data)
    stream = ev.tool_stream("with-blob")
    [stored] = engine.record([NewEvent(stream, ev.TOOL_REMOVED, {"name": "with-blob", "reason": "test"})],
                             blobs={digest: data})
    assert stored.version == 1 and engine.store.get_blob(digest) == data
    # blobs are content addressed: a key that is not the hash of its bytes is refused, nothing recorded
    with pytest.raises(ValueError, match="content addressed"):
        engine.record([NewEvent(stream, ev.TOOL_REMOVED, {"name": "with-blob", "reason": "again"})],
                      blobs={"0" * 64: data})
    assert engine.store.stream_version(stream) == 1
