"""The engine against a real SQLite file and the real local executor."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from maze_core import events as ev
from maze_core.audit import replay_check, verify_chain
from maze_core.dag import DAG
from maze_core.engine import Engine
from maze_core.errors import DAGValidationError, NotFoundError, RunStateError
from maze_core.registry import ToolRegistry, task

calls: Counter[str] = Counter()
gates: dict[str, threading.Event] = {}


@task
def add(a: int, b: int) -> dict:
    calls["add"] += 1
    return {"sum": a + b}


@task
def double(x: int) -> dict:
    calls["double"] += 1
    return {"value": x * 2}


@task
def collect(values: list) -> dict:
    return {"total": sum(values), "n": len(values)}


@task
def boom(x: int = 0) -> dict:
    raise ValueError(f"boom {x}")


@task(retries=2)
def flaky(key: str, fail_times: int) -> dict:
    calls[key] += 1
    if calls[key] <= fail_times:
        raise ConnectionError(f"attempt {calls[key]} failed")
    return {"attempts": calls[key]}


@task
def wait_gate(name: str) -> dict:
    calls[f"gate:{name}"] += 1
    if not gates[name].wait(20):
        raise TimeoutError("gate never opened")
    return {"gate": name, "n": 1}


@task(timeout=0.3)
def sleepy(gate: str) -> dict:
    gates[gate].wait(20)   # hangs until the test lets it go
    return {"gate": gate}


@task
def make_tuple() -> tuple:
    return (1, "two", 3.0)


@task
def describe(value) -> dict:
    return {"type": type(value).__name__, "value": list(value)}


@task
def big_result(n: int) -> dict:
    return {"items": list(range(n))}


@task
def unpicklable() -> object:
    return threading.Lock()


def events_of(engine: Engine, run_id: str) -> list[ev.Event]:
    return engine.store.read_stream(ev.run_stream(run_id))


def types_of(engine: Engine, run_id: str, task_id: str | None = None) -> list[str]:
    return [e.type for e in events_of(engine, run_id)
            if task_id is None or e.data.get("task_id") == task_id]


def test_chain_with_references_runs_in_order_and_records_everything(engine):
    dag = DAG("chain")
    t1 = dag.add_task(add, inputs={"a": 1, "b": 2})
    t2 = dag.add_task(double, inputs={"x": f"{t1}.output.sum"})
    t3 = dag.add_task(double, inputs={"x": t2.output.value})
    run_id = engine.submit(dag)
    run = engine.wait(run_id, timeout=20)
    assert run["status"] == "succeeded"
    assert run["task_counts"] == {"succeeded": 3}
    assert engine.result(run_id, t3) == {"value": 12}
    assert types_of(engine, run_id, t1) == ["TaskQueued", "TaskStarted", "TaskSucceeded"]
    all_types = types_of(engine, run_id)
    assert all_types[0] == "RunSubmitted" and all_types[-1] == "RunSucceeded"
    # t2 is queued only after t1 succeeded
    order = [(e.type, e.data.get("task_id")) for e in events_of(engine, run_id)]
    assert order.index(("TaskSucceeded", t1)) < order.index(("TaskQueued", t2))
    assert verify_chain(engine.store).ok
    assert replay_check(engine.store) == []


def test_fan_out_fan_in_with_list_of_references(engine):
    dag = DAG("fan")
    src = dag.add_task(add, inputs={"a": 0, "b": 1})
    mids = [dag.add_task(double, inputs={"x": src.output.sum}) for _ in range(8)]
    sink = dag.add_task(collect, inputs={"values": [m.output.value for m in mids]})
    run_id = engine.submit(dag)
    assert engine.wait(run_id, timeout=20)["status"] == "succeeded"
    assert engine.result(run_id, sink) == {"total": 16, "n": 8}
    assert set(dag.tasks[sink].dependencies) == set(mids)


def test_retry_with_backoff_then_success(engine):
    calls["flaky-ok"] = 0
    dag = DAG("retry")
    t = dag.add_task(flaky, inputs={"key": "flaky-ok", "fail_times": 2})
    run_id = engine.submit(dag)
    assert engine.wait(run_id, timeout=20)["status"] == "succeeded"
    assert engine.result(run_id, t) == {"attempts": 3}
    retrying = [e for e in events_of(engine, run_id) if e.type == ev.TASK_RETRYING]
    assert [e.data["attempt"] for e in retrying] == [1, 2]
    assert retrying[1].data["delay_s"] == pytest.approx(2 * retrying[0].data["delay_s"])
    assert "ConnectionError: attempt 1 failed" == retrying[0].data["error"]
    row = {r["task_id"]: r for r in engine.store.list_tasks(run_id)}[t]
    assert row["attempt"] == 3 and row["status"] == "succeeded"


def test_failure_cascades_downstream_but_spares_other_branches(engine):
    dag = DAG("cascade")
    bad = dag.add_task(boom, inputs={"x": 7})
    after_bad = dag.add_task(double, inputs={"x": bad.output.value})
    after_after = dag.add_task(double, inputs={"x": after_bad.output.value})
    good = dag.add_task(add, inputs={"a": 1, "b": 1})
    run_id = engine.submit(dag)
    run = engine.wait(run_id, timeout=20)
    assert run["status"] == "failed"
    assert f"task {bad} (boom) failed: ValueError: boom 7" == run["error"]
    statuses = {r["task_id"]: r["status"] for r in engine.store.list_tasks(run_id)}
    assert statuses == {bad: "failed", after_bad: "skipped", after_after: "skipped", good: "succeeded"}
    failed = next(e for e in events_of(engine, run_id) if e.type == ev.TASK_FAILED)
    assert "Traceback" in failed.data["traceback"] and "boom" in failed.data["traceback"]
    skipped = [e.data for e in events_of(engine, run_id) if e.type == ev.TASK_SKIPPED]
    assert {s["task_id"] for s in skipped} == {after_bad, after_after}
    assert all(s["upstream"] == bad for s in skipped)


def test_retries_exhausted_fail_the_task(engine):
    calls["flaky-bad"] = 0
    dag = DAG("exhausted")
    t = dag.add_task(flaky, inputs={"key": "flaky-bad", "fail_times": 10}, retries=1)
    run_id = engine.submit(dag)
    assert engine.wait(run_id, timeout=20)["status"] == "failed"
    assert types_of(engine, run_id, t).count("TaskQueued") == 2
    assert calls["flaky-bad"] == 2


def test_timeout_fails_a_hung_task_quickly(engine):
    gates["hung"] = threading.Event()
    dag = DAG("timeout")
    slow = dag.add_task(sleepy, inputs={"gate": "hung"})
    fast = dag.add_task(add, inputs={"a": 1, "b": 2})
    started = time.monotonic()
    try:
        run_id = engine.submit(dag)
        run = engine.wait(run_id, timeout=10)
    finally:
        gates["hung"].set()
    assert time.monotonic() - started < 3
    assert run["status"] == "failed"
    failed = next(e for e in events_of(engine, run_id) if e.type == ev.TASK_FAILED)
    assert failed.data["task_id"] == slow
    assert "TimeoutError" in failed.data["error"] and "0.3s" in failed.data["error"]
    assert {r["task_id"]: r["status"] for r in engine.store.list_tasks(run_id)}[fast] == "succeeded"


def test_cancel_running_task_skips_downstream(engine):
    gates["c1"] = threading.Event()
    calls["gate:c1"] = 0
    dag = DAG("cancel")
    blocked = dag.add_task(wait_gate, inputs={"name": "c1"})
    after = dag.add_task(double, inputs={"x": blocked.output.gate})
    try:
        run_id = engine.submit(dag)
        _wait_for(lambda: calls["gate:c1"] == 1)
        assert engine.cancel(run_id, blocked) == [blocked]
        run = engine.wait(run_id, timeout=10)
    finally:
        gates["c1"].set()
    assert run["status"] == "cancelled"
    statuses = {r["task_id"]: r["status"] for r in engine.store.list_tasks(run_id)}
    assert statuses == {blocked: "cancelled", after: "skipped"}
    with pytest.raises(RunStateError):
        engine.cancel(run_id, blocked)


def test_cancel_whole_run_and_unknown_ids(engine):
    gates["c2"] = threading.Event()
    dag = DAG("cancel-run")
    a = dag.add_task(wait_gate, inputs={"name": "c2"})
    b = dag.add_task(double, inputs={"x": a.output.gate})
    try:
        run_id = engine.submit(dag)
        with pytest.raises(NotFoundError):
            engine.cancel(run_id, "t99")
        with pytest.raises(NotFoundError):
            engine.cancel("no-such-run")
        assert sorted(engine.cancel(run_id)) == sorted([a, b])
        assert engine.wait(run_id, timeout=10)["status"] == "cancelled"
        assert engine.stats().active_attempts == 0, "cancelled attempts no longer count as in flight"
    finally:
        gates["c2"].set()


def test_results_non_json_and_large_go_to_blobs(engine, config):
    dag = DAG("blobs")
    tup = dag.add_task(make_tuple)
    seen = dag.add_task(describe, inputs={"value": tup.output})
    big = dag.add_task(big_result, inputs={"n": 20000})
    run_id = engine.submit(dag)
    assert engine.wait(run_id, timeout=20)["status"] == "succeeded"
    assert engine.result(run_id, tup) == (1, "two", 3.0)
    assert engine.result(run_id, seen) == {"type": "tuple", "value": [1, "two", 3.0]}
    assert engine.result(run_id, big)["items"][-1] == 19999
    done = {e.data["task_id"]: e.data for e in events_of(engine, run_id) if e.type == ev.TASK_SUCCEEDED}
    assert done[tup]["result_ref"]["encoding"] == "pickle"
    assert done[big]["result_ref"]["encoding"] == "json"
    assert done[big]["result_ref"]["size"] > config.engine.inline_result_limit
    assert done[seen]["result"] == {"type": "tuple", "value": [1, "two", 3.0]}


def test_unpicklable_result_fails_clearly(engine):
    dag = DAG("unpicklable")
    t = dag.add_task(unpicklable)
    run_id = engine.submit(dag)
    assert engine.wait(run_id, timeout=20)["status"] == "failed"
    failed = next(e for e in events_of(engine, run_id) if e.type == ev.TASK_FAILED)
    assert failed.data["task_id"] == t
    assert "neither JSON nor picklable" in failed.data["error"]


def test_missing_output_key_fails_the_consumer_with_a_clear_error(engine):
    dag = DAG("missing-key")
    a = dag.add_task(add, inputs={"a": 1, "b": 1})
    b = dag.add_task(double, inputs={"x": f"{a}.output.nope"})
    run_id = engine.submit(dag)
    assert engine.wait(run_id, timeout=20)["status"] == "failed"
    failed = next(e for e in events_of(engine, run_id) if e.type == ev.TASK_FAILED)
    assert failed.data["task_id"] == b and "nope" in failed.data["error"] and "sum" in failed.data["error"]


def test_many_runs_at_once(engine):
    run_ids = []
    for i in range(20):
        dag = DAG(f"many-{i}")
        src = dag.add_task(add, inputs={"a": i, "b": 1})
        mids = [dag.add_task(double, inputs={"x": src.output.sum}) for _ in range(3)]
        dag.add_task(collect, inputs={"values": [m.output.value for m in mids]})
        run_ids.append(engine.submit(dag))
    for i, run_id in enumerate(run_ids):
        assert engine.wait(run_id, timeout=30)["status"] == "succeeded"
        assert engine.result(run_id, "t5") == {"total": 6 * (i + 1), "n": 3}
    assert engine.store.count_runs(status="succeeded") == 20


def test_invalid_dag_records_nothing(engine):
    dag = DAG("bad")
    dag.add_task(add, inputs={"a": 1, "b": 2})
    dag.add_task(double, inputs={"x": 1}, resources={"cpu": 64})
    with pytest.raises(DAGValidationError) as info:
        engine.submit(dag)
    assert "t2" in str(info.value) and "CPU" in str(info.value)
    assert engine.store.count_runs() == 0


def test_gpu_task_rejected_by_local_executor(engine):
    dag = DAG("gpu")
    dag.add_task(double, inputs={"x": 1}, resources={"gpu": 1})
    with pytest.raises(DAGValidationError, match="GPU"):
        engine.submit(dag)


def test_resume_after_an_engine_stopped_midway_does_not_rerun_finished_tasks(config):
    # (a real SIGKILL of the process is in test_cli.py; here the first engine stops with a task
    # still running, and a second engine on the same file takes over)
    registry = ToolRegistry()
    gates["r1"] = threading.Event()
    calls["add"] = calls["gate:r1"] = 0
    first = Engine.from_config(config, registry=registry)
    first.start()
    dag = DAG("resume")
    a = dag.add_task(add, inputs={"a": 2, "b": 3})
    b = dag.add_task(wait_gate, inputs={"name": "r1"})
    c = dag.add_task(collect, inputs={"values": [a.output.sum, 5]})
    d = dag.add_task(collect, inputs={"values": [c.output.total, b.output.n]})
    run_id = first.submit(dag)
    _wait_for(lambda: calls["gate:r1"] == 1 and first.store.get_run(run_id)["task_counts"].get("succeeded") == 2)
    first.stop(wait=False)          # the process "dies": b is still running, d never started
    assert first.store.get_run(run_id)["status"] == "running"
    gates["r1"].set()

    second = Engine.from_config(config, registry=registry)
    resumed = second.start(resume=True)
    try:
        assert resumed == [run_id]
        assert second.wait(run_id, timeout=20)["status"] == "succeeded"
        assert second.result(run_id, d) == {"total": 11, "n": 2}
    finally:
        second.stop()
    assert calls["add"] == 1                      # a was not re-run
    assert calls["gate:r1"] == 2                  # b was running: dispatched again
    resumed_event = next(e for e in events_of(second, run_id) if e.type == ev.RUN_RESUMED)
    assert resumed_event.data["requeued"] == [b]
    assert [e.data["attempt"] for e in events_of(second, run_id)
            if e.type == ev.TASK_QUEUED and e.data["task_id"] == b] == [1, 1]
    assert verify_chain(second.store).ok and replay_check(second.store) == []


def test_every_event_matches_its_model(engine):
    from maze_core.demo import build_demo_dag
    run_id = engine.submit(build_demo_dag())
    assert engine.wait(run_id, timeout=30)["status"] == "succeeded"
    for event in events_of(engine, run_id):
        ev.validate_event(event.type, event.data)
    assert "TaskRetrying" in types_of(engine, run_id)
    summary = engine.result(run_id, "t10")["summary"]
    assert summary.startswith("6 documents")


def test_tool_registrations_are_events_and_sync_is_idempotent(config):
    registry = ToolRegistry()
    registry.register_task(add)
    eng = Engine.from_config(config, registry=registry)
    eng.start()
    try:
        registry.register_task(double)
        registry.unregister("double")
        tool_events = [e for e in eng.store.read_all() if e.stream.startswith("tool:")]
        assert [(e.stream, e.type) for e in tool_events] == [
            ("tool:add", "ToolRegistered"), ("tool:double", "ToolRegistered"), ("tool:double", "ToolRemoved")]
        before = eng.store.last_seq()
        eng.sync_tools()
        assert eng.store.last_seq() == before
        assert {t["name"]: t["status"] for t in eng.store.list_tools(include_removed=True)} == {
            "add": "active", "double": "removed"}
    finally:
        eng.stop()


def test_on_event_observers_receive_committed_events(config):
    from maze_core import hookimpl
    from maze_core.plugins import load_plugins

    seen: list[str] = []
    got_end = threading.Event()

    class Observer:
        @hookimpl
        def on_event(self, event):
            seen.append(event.type)
            if event.type == ev.RUN_SUCCEEDED:
                got_end.set()

    pm = load_plugins()
    pm.register(Observer(), name="test-observer")
    eng = Engine.from_config(config, registry=ToolRegistry())
    try:
        eng.start()
        dag = DAG("observed")
        dag.add_task(add, inputs={"a": 1, "b": 1})
        eng.wait(eng.submit(dag), timeout=20)
        assert got_end.wait(5)
    finally:
        eng.stop()
        pm.unregister(name="test-observer")
    assert seen[:1] == ["RunSubmitted"] and seen[-1] == "RunSucceeded"


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@task
def chatty(word: str) -> dict:
    import structlog
    structlog.get_logger("user.task").warning("inside the task", word=word)
    return {"word": word}


def test_task_logs_are_bound_to_run_and_task_ids(engine):
    import structlog
    dag = DAG("logs")
    t = dag.add_task(chatty, inputs={"word": "hi"})
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        run_id = engine.submit(dag)
        engine.wait(run_id, timeout=20)
    inside = [entry for entry in logs if entry["event"] == "inside the task"]
    assert inside and inside[0]["run_id"] == run_id and inside[0]["task_id"] == t
    submitted = [entry for entry in logs if entry["event"] == "run submitted"]
    assert submitted and submitted[0]["run_id"] == run_id


def test_a_run_moved_by_another_writer_is_dropped_not_corrupted(config):
    registry = ToolRegistry()
    gates["w1"] = threading.Event()
    calls["gate:w1"] = 0
    eng = Engine.from_config(config, registry=registry)
    eng.start()
    try:
        dag = DAG("contended")
        dag.add_task(wait_gate, inputs={"name": "w1"})
        run_id = eng.submit(dag)
        _wait_for(lambda: calls["gate:w1"] == 1)
        # another process takes the run over and ends it
        eng.store.append([ev.NewEvent(ev.run_stream(run_id), ev.RUN_CANCELLED,
                                      {"status": "cancelled", "error": "taken over", "failed_tasks": []},
                                      actor="other")])
        gates["w1"].set()
        _wait_for(lambda: run_id not in eng.stats().runs)
        # this engine dropped the run without writing into its stream, and keeps working
        assert [e.type for e in events_of(eng, run_id)][-1] == ev.RUN_CANCELLED
        assert eng.store.get_run(run_id)["status"] == "cancelled"
        other = DAG("after")
        other.add_task(add, inputs={"a": 1, "b": 1})
        assert eng.wait(eng.submit(other), timeout=20)["status"] == "succeeded"
        assert verify_chain(eng.store).ok
    finally:
        eng.stop()


def test_store_failure_stops_the_engine_and_waiters_hear_of_it(config):
    from maze_core.engine import EngineError
    eng = Engine.from_config(config, registry=ToolRegistry())
    eng.start()
    real_append = eng.store.append
    gates["f1"] = threading.Event()
    try:
        dag = DAG("doomed")
        a = dag.add_task(wait_gate, inputs={"name": "f1"})
        dag.add_task(double, inputs={"x": a.output.n})
        run_id = eng.submit(dag)

        def broken_append(events, blobs=None):
            raise OSError("disk full")

        eng.store.append = broken_append
        gates["f1"].set()
        with pytest.raises(EngineError, match="disk full"):
            eng.wait(run_id, timeout=10)
        with pytest.raises(EngineError, match="disk full"):
            eng.submit(dag)
    finally:
        eng.store.append = real_append
        eng.stop()
    # nothing after the failure was recorded: the run is resumable
    assert eng.store.get_run(run_id)["status"] == "running"


def test_a_broken_log_stream_does_not_stop_the_engine(config):
    import io

    from maze_core.logging import setup_logging
    closed = io.StringIO()
    closed.close()
    setup_logging("INFO", "json", stream=closed)
    try:
        eng = Engine.from_config(config, registry=ToolRegistry())
        eng.start()
        dag = DAG("quiet")
        dag.add_task(boom, inputs={"x": 1})      # logs a warning on the way
        assert eng.wait(eng.submit(dag), timeout=20)["status"] == "failed"
        eng.stop()
    finally:
        setup_logging("WARNING", "json")


# ---------------------------------------------------------------------------- hardening


@task
def huge_int() -> dict:
    return {"n": 10 ** 5000}


@task
def surrogate_result() -> dict:
    return {"text": "bad \udc80 byte"}


@task
def raises_surrogate() -> dict:
    raise ValueError("cannot decode \udcff")


@task(retries=1)
def mutate_then_fail(items: list) -> dict:
    items.append("x")
    calls["mutate"] += 1
    if calls["mutate"] == 1:
        raise RuntimeError("first attempt fails after mutating its input")
    return {"seen": list(items)}


@task
def append_to(items: list, tag: str) -> dict:
    items.append(tag)
    return {"items": items}


@task
def make_items() -> dict:
    return {"items": [1]}


@pytest.mark.parametrize("func, message", [(huge_int, "ResultError"), (surrogate_result, "ResultError")])
def test_unstorable_results_fail_their_task_and_nothing_else(engine, func, message):
    dag = DAG("poison")
    dag.add_task(func)
    run_id = engine.submit(dag)
    row = engine.wait(run_id, timeout=20)
    assert row["status"] == "failed" and message in row["error"]
    ok = DAG("after-poison")
    ok.add_task(add, inputs={"a": 1, "b": 1})
    assert engine.wait(engine.submit(ok), timeout=20)["status"] == "succeeded"


def test_undecodable_error_text_is_stored_escaped(engine):
    dag = DAG("surrogate-error")
    dag.add_task(raises_surrogate)
    row = engine.wait(engine.submit(dag), timeout=20)
    assert row["status"] == "failed" and "\\udcff" in row["error"]


def test_unstorable_inputs_are_refused_at_submit(engine):
    dag = DAG("bad-input")
    dag.add_task(append_to, inputs={"items": [], "tag": "bad \udc80"})
    with pytest.raises(DAGValidationError, match="not JSON-serialisable"):
        engine.submit(dag)
    assert engine.store.count_runs() == 0


def test_each_attempt_and_each_consumer_gets_its_own_inputs(engine):
    calls["mutate"] = 0
    dag = DAG("isolation")
    retried = dag.add_task(mutate_then_fail, inputs={"items": [1]})
    src = dag.add_task(make_items)
    a = dag.add_task(append_to, inputs={"items": src.output["items"], "tag": "a"})
    b = dag.add_task(append_to, inputs={"items": src.output["items"], "tag": "b"})
    run_id = engine.submit(dag)
    assert engine.wait(run_id, timeout=20)["status"] == "succeeded"
    assert engine.result(run_id, retried) == {"seen": [1, "x"]}     # not [1, "x", "x"]
    assert engine.result(run_id, a) == {"items": [1, "a"]}
    assert engine.result(run_id, b) == {"items": [1, "b"]}
    assert engine.result(run_id, src) == {"items": [1]}


def test_concurrent_resumes_of_one_run_take_it_once(config):
    registry = ToolRegistry()
    gates["cr"] = threading.Event()
    calls["gate:cr"] = 0
    first = Engine.from_config(config, registry=registry)
    first.start()
    dag = DAG("double-resume")
    dag.add_task(wait_gate, inputs={"name": "cr"})
    run_id = first.submit(dag)
    _wait_for(lambda: calls["gate:cr"] == 1)
    first.stop(wait=False)
    second = Engine.from_config(config, registry=registry)
    second.start(resume=False)
    try:
        reports = []
        threads = [threading.Thread(target=lambda: reports.append(second.resume([run_id])))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(len(r.resumed) for r in reports) == [0, 0, 0, 1]
        gates["cr"].set()
        assert second.wait(run_id, timeout=20)["status"] == "succeeded"
        assert types_of(second, run_id).count("RunResumed") == 1
    finally:
        gates["cr"].set()
        second.stop()


def test_callers_never_hang_when_the_engine_stops_under_them(config):
    from maze_core.engine import EngineError
    eng = Engine.from_config(config, registry=ToolRegistry())
    eng.start()
    outcomes: list[str] = []

    def submitter():
        for _ in range(200):
            dag = DAG("race")
            dag.add_task(add, inputs={"a": 1, "b": 1})
            try:
                eng.submit(dag)
                outcomes.append("ok")
            except EngineError:
                outcomes.append("refused")
                return

    t = threading.Thread(target=submitter)
    t.start()
    _wait_for(lambda: len(outcomes) >= 3)
    eng.stop()
    t.join(10)
    assert not t.is_alive(), "a submit() is still waiting for an answer"
    assert outcomes[-1] == "refused" or len(outcomes) == 200
    with pytest.raises(EngineError, match="starts once"):
        eng.start()


def test_resume_leaves_runs_it_cannot_finish_with_reasons(config):
    import cloudpickle

    from maze_core.events import NewEvent
    eng = Engine.from_config(config, registry=ToolRegistry())
    eng.start()
    try:
        spec = {"func_name": "add", "task_name": None, "tool_version": None, "dependencies": [],
                "inputs": {"a": 1, "b": 1}, "retries": 0, "timeout": None}
        from maze_core.resources import normalize
        too_big = eng.store.put_blob(cloudpickle.dumps(add))
        broken = eng.store.put_blob(b"not a pickle")
        driver = {"host": "elsewhere", "pid": 1, "started": 0}
        for run_id, ref, res in [("too-big", too_big, {"cpu": 64}), ("unloadable", broken, {"cpu": 1})]:
            eng.store.append([NewEvent(ev.run_stream(run_id), ev.RUN_SUBMITTED, {
                "name": run_id, "driver": driver,
                "tasks": {"t1": {**spec, "func_ref": ref, "resources": normalize(res)}}})])
        report = eng.resume()
        assert report.resumed == []
        assert "64 CPUs" in report.skipped["too-big"]
        assert "cannot load function" in report.skipped["unloadable"]
        assert eng.store.get_run("too-big")["status"] == "running"     # left for a bigger engine
    finally:
        eng.stop()


def test_tool_events_and_observers_stay_on_the_engine_thread(config):
    registry = ToolRegistry()
    eng = Engine.from_config(config, registry=registry)
    threads: list[str] = []
    eng.subscribe(lambda events: threads.append(threading.current_thread().name))
    eng.start()
    try:
        worker = threading.Thread(target=lambda: registry.register_task(double), name="http-worker")
        worker.start()
        worker.join(10)
        assert eng.store.list_tools()[0]["name"] == "double"   # durable when register_task returned
        assert threads and set(threads) == {"maze-engine"}
    finally:
        eng.stop()


def test_timeouts_of_finished_tasks_do_not_pile_up(engine, monkeypatch):
    from maze_core.engine import timers
    monkeypatch.setattr(timers, "TIMERS_COMPACT_MIN", 50)   # read at each sweep: the running engine sees it
    dag = DAG("many-timeouts")
    for i in range(300):
        dag.add_task(add, inputs={"a": i, "b": 1}, timeout=600)
    assert engine.wait(engine.submit(dag), timeout=30)["status"] == "succeeded"
    assert engine.stats().pending_timers < 120     # 300 finished tasks left no 600 s timers behind


def test_progress_bar_follows_the_run(engine):
    import io

    from rich.console import Console

    from maze_core.cli import RunProgress
    from maze_core.demo import build_demo_dag
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with RunProgress(engine, enabled=True, console=console) as bar:
        run_id = engine.submit(build_demo_dag())
        engine.wait(run_id, timeout=30)
        _wait_for(lambda: bar._done[run_id] == 10)
    text = out.getvalue()
    assert "10/10" in text and "succeeded" in text   # (intermediate states render at 10 Hz)


def test_results_are_released_once_every_consumer_was_dispatched(engine):
    calls["mutate"] = 0
    dag = DAG("release")
    src = dag.add_task(make_items)
    a = dag.add_task(append_to, inputs={"items": src.output["items"], "tag": "a"})
    b = dag.add_task(append_to, inputs={"items": src.output["items"], "tag": "b"})
    # a retried consumer decodes its input from the log again once the cache let it go
    retried = dag.add_task(mutate_then_fail, inputs={"items": a.output["items"]})
    gates["rel"] = threading.Event()
    held = dag.add_task(wait_gate, inputs={"name": "rel"})
    try:
        run_id = engine.submit(dag)
        _wait_for(lambda: engine.store.get_run(run_id)["task_counts"].get("succeeded", 0) >= 4)
        assert engine.stats().held_results[run_id] == 0   # src, a and b were all consumed; held has no consumer
    finally:
        gates["rel"].set()
    assert engine.wait(run_id, timeout=20)["status"] == "succeeded"
    assert engine.result(run_id, retried) == {"seen": [1, "a", "x"]}
    assert engine.result(run_id, b) == {"items": [1, "b"]} and held
    stats = engine.stats()
    assert run_id not in stats.held_results and run_id not in stats.awaited_results


def test_a_result_whose_consumers_are_all_skipped_is_released(engine):
    """A consumer skipped (its other upstream failed) or cancelled will never take its inputs:
    the engine lets the result go then, not at the end of the run."""
    dag = DAG("release-skipped")
    src = dag.add_task(make_items)
    bad = dag.add_task(boom, inputs={"x": 1})
    dag.add_task(collect, inputs={"values": [src.output["items"], bad.output]})
    gates["rel-skip"] = threading.Event()
    dag.add_task(wait_gate, inputs={"name": "rel-skip"})     # keeps the run going meanwhile
    try:
        run_id = engine.submit(dag)
        _wait_for(lambda: engine.store.get_run(run_id)["task_counts"].get("skipped", 0) == 1)
        _wait_for(lambda: engine.store.get_run(run_id)["task_counts"].get("succeeded", 0) == 1)
        assert engine.stats().held_results[run_id] == 0, "the skipped consumer's input is still held"
    finally:
        gates["rel-skip"].set()
    assert engine.wait(run_id, timeout=20)["status"] == "failed"


def test_registering_a_tool_while_the_engine_dispatches_tools_does_not_deadlock(config):
    registry = ToolRegistry()
    registry.register_task(add)
    eng = Engine.from_config(config, registry=registry)
    eng.start()
    try:
        stop = threading.Event()

        def churn():
            while not stop.is_set():
                registry.register_task(double)
                registry.unregister("double")

        churner = threading.Thread(target=churn)
        churner.start()
        for i in range(20):
            dag = DAG(f"tools-{i}")
            dag.add_task(add, inputs={"a": i, "b": 1})   # a registered tool: the loop asks the registry
            assert eng.wait(eng.submit(dag), timeout=20)["status"] == "succeeded"
        stop.set()
        churner.join(10)
        assert not churner.is_alive()
    finally:
        stop.set()
        eng.stop()


def test_result_values_are_the_logged_ones_even_if_the_returned_object_changes(engine):
    from maze_core.engine import EngineError
    shared = {"v": 1}

    @task
    def give() -> dict:
        return shared

    @task
    def take(v: int, n: int) -> dict:
        return {"v": v}

    gates["mut"] = threading.Event()
    dag = DAG("aliasing")
    g = dag.add_task(give)
    gate = dag.add_task(wait_gate, inputs={"name": "mut"})
    t = dag.add_task(take, inputs={"v": g.output.v, "n": gate.output.n})   # runs after the change
    try:
        run_id = engine.submit(dag)
        _wait_for(lambda: engine.store.get_run(run_id)["task_counts"].get("succeeded", 0) >= 1)
        shared["v"] = 999          # the returned object changes after the task returned
    finally:
        gates["mut"].set()
    assert engine.wait(run_id, timeout=20)["status"] == "succeeded"
    assert engine.result(run_id, g) == {"v": 1}
    assert engine.result(run_id, t) == {"v": 1}
    # and a waiter on an engine that stops before the run ends is told, not left waiting
    gates["stuck"] = threading.Event()
    stuck = DAG("stuck")
    stuck.add_task(wait_gate, inputs={"name": "stuck"})
    stuck_id = engine.submit(stuck)
    stopper = threading.Timer(0.3, lambda: engine.stop(wait=False))
    stopper.start()
    try:
        with pytest.raises(EngineError, match="resume it"):
            engine.wait(stuck_id, timeout=10)
    finally:
        gates["stuck"].set()
        stopper.join()


def test_a_task_that_keeps_killing_its_process_fails_as_worker_lost(config):
    from maze_core.events import NewEvent
    from maze_core.resources import normalize
    config.engine.max_interruptions = 2
    registry = ToolRegistry()
    registry.register_task(add)
    eng = Engine.from_config(config, registry=registry)
    eng.start()
    try:
        spec = {"func_name": "add", "task_name": None, "func_ref": None, "tool_version": None,
                "dependencies": [], "inputs": {"a": 1, "b": 1}, "resources": normalize(None),
                "retries": 5, "timeout": None}
        after = {**spec, "dependencies": ["t1"], "inputs": {"a": "t1.output.sum", "b": 1}}
        stream = ev.run_stream("crashy")
        dead = {"host": "gone", "pid": 1, "started": 0}
        eng.store.append([NewEvent(stream, ev.RUN_SUBMITTED, {"name": "crashy", "driver": dead,
                                                               "tasks": {"t1": spec, "t2": after}})])
        # the task was running each time its process died: twice, and a third time
        for _ in range(3):
            eng.store.append([NewEvent(stream, ev.TASK_QUEUED, {"task_id": "t1", "attempt": 1}),
                              NewEvent(stream, ev.TASK_STARTED, {"task_id": "t1", "attempt": 1}),
                              NewEvent(stream, ev.RUN_RESUMED, {"driver": dead, "requeued": ["t1"]})])
        eng.store.append([NewEvent(stream, ev.TASK_QUEUED, {"task_id": "t1", "attempt": 1})])
        assert eng.resume(["crashy"]).resumed == ["crashy"]
        row = eng.wait("crashy", timeout=20)
        assert row["status"] == "failed" and "WorkerLost" in row["error"] and "4 times" in row["error"]
        assert {t["task_id"]: t["status"] for t in eng.store.list_tasks("crashy")} == {
            "t1": "failed", "t2": "skipped"}
    finally:
        eng.stop()


def test_resume_refuses_a_run_whose_tool_changed_version_unless_forced(config):
    from maze_core.events import NewEvent
    from maze_core.resources import normalize
    registry = ToolRegistry()
    registry.register_task(add, version="2.0")
    eng = Engine.from_config(config, registry=registry)
    eng.start()
    try:
        spec = {"func_name": "add", "task_name": None, "func_ref": None, "tool_version": "1.0",
                "dependencies": [], "inputs": {"a": 1, "b": 2}, "resources": normalize(None),
                "retries": 0, "timeout": None}
        eng.store.append([NewEvent(ev.run_stream("old-tool"), ev.RUN_SUBMITTED, {
            "name": "old-tool", "driver": {"host": "gone", "pid": 1, "started": 0}, "tasks": {"t1": spec}})])
        report = eng.resume(["old-tool"])
        assert report.resumed == [] and "version 2.0 here, the run used 1.0" in report.skipped["old-tool"]
        assert eng.resume(["old-tool"], force=True).resumed == ["old-tool"]
        assert eng.wait("old-tool", timeout=20)["status"] == "succeeded"
        assert eng.result("old-tool", "t1") == {"sum": 3}
    finally:
        eng.stop()
