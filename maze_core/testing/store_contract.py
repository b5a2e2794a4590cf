"""The contract test suite of ``maze_core.store.EventStore``.

A store plugin (ours or a third party's) runs it against itself by subclassing::

    from maze_core.testing.store_contract import EventStoreContract

    class TestMyStore(EventStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            s = MyStore(tmp_path / "data")
            yield s
            s.close()

        def corrupt_projection(self, store):  # optional: enables test_rebuild_projections_repairs
            ...  # change a stored projection row behind the store's back

The ``store`` fixture must give a fresh, empty store. Payloads follow the models of
``maze_core.events`` (each helper below validates its payload).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from maze_core import events as ev
from maze_core.audit import replay_check, verify_chain
from maze_core.errors import ConcurrencyError, NotFoundError
from maze_core.events import GENESIS_HASH, NewEvent, chain_hash, compact_json
from maze_core.projections import TABLES
from maze_core.store import EventStore, blob_hash


# --------------------------------------------------------------------------- payload builders
def _new(stream: str, type_: str, data: dict[str, Any], **kw: Any) -> NewEvent:
    ev.validate_event(type_, data)
    return NewEvent(stream, type_, data, **kw)


def run_submitted(run_id: str, task_ids: list[str], name: str = "wf", actor: str = "alice",
                  **kw: Any) -> NewEvent:
    """A RunSubmitted of a chain ``task_ids[0] -> task_ids[1] -> ...`` of ``work`` tasks."""
    tasks = {tid: {"func_name": "work", "task_name": f"work {tid}",
                   "dependencies": [task_ids[i - 1]] if i else [], "inputs": {"n": i},
                   "resources": {"cpu": 1}}
             for i, tid in enumerate(task_ids)}
    return _new(ev.run_stream(run_id), ev.RUN_SUBMITTED, {"name": name, "tasks": tasks, "driver": {}},
                actor=actor, **kw)


def task_event(run_id: str, type_: str, task_id: str, attempt: int = 1, **fields: Any) -> NewEvent:
    """A task event; ``fields`` completes the payload (``error``, ``duration_s``, ``reason``...)."""
    data: dict[str, Any] = {"task_id": task_id, **fields}
    if type_ not in (ev.TASK_CANCELLED, ev.TASK_SKIPPED):
        data["attempt"] = attempt
    return _new(ev.run_stream(run_id), type_, data)


def run_ended(run_id: str, status: str, error: str | None = None) -> NewEvent:
    type_ = {"succeeded": ev.RUN_SUCCEEDED, "failed": ev.RUN_FAILED, "cancelled": ev.RUN_CANCELLED}[status]
    return _new(ev.run_stream(run_id), type_, {"status": status, "error": error})


def tool_registered(name: str, version: str = "1.0") -> NewEvent:
    return _new(ev.tool_stream(name), ev.TOOL_REGISTERED, {
        "name": name, "version": version, "source": f"maze-tool-{name}",
        "meta": {"description": f"the {name} tool"}, "digest": "d" * 64})


def tool_removed(name: str) -> NewEvent:
    return _new(ev.tool_stream(name), ev.TOOL_REMOVED, {"name": name, "reason": "uninstalled"})


def finished_task(run_id: str, task_id: str, duration_s: float = 0.5) -> list[NewEvent]:
    """Queued, started and succeeded events of one task."""
    return [task_event(run_id, ev.TASK_QUEUED, task_id),
            task_event(run_id, ev.TASK_STARTED, task_id, worker={"host": "h1"}),
            task_event(run_id, ev.TASK_SUCCEEDED, task_id, duration_s=duration_s, result={"ok": True})]


def _rows_by_key(store: EventStore) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every projection row, by table and key (row order aside)."""
    return {table: {tuple(row[k] for k in keys): row for row in store.projection_rows(table)}
            for table, (keys, _) in TABLES.items()}


class EventStoreContract:
    """Tests every ``EventStore`` passes. Subclass it as ``Test...`` and provide a ``store``
    fixture (a fresh, empty store); optionally override ``corrupt_projection``."""

    def corrupt_projection(self, store: EventStore) -> None:
        """Change stored projection rows without appending events, so that they disagree with the
        log (e.g. set a task's status with raw SQL). Stores that cannot do this keep the default,
        which skips the test that needs it."""
        pytest.skip("this store provides no corrupt_projection hook")

    # ------------------------------------------------------------------ log
    def test_empty_store(self, store: EventStore) -> None:
        assert store.last_seq() == 0
        assert store.read_all() == []
        assert store.stream_version("run:nope") == 0
        assert store.read_stream("run:nope") == []
        assert store.append([]) == []
        assert verify_chain(store).ok

    def test_append_assigns_seq_version_and_hash(self, store: EventStore) -> None:
        out = store.append([run_submitted("r1", ["a"]), task_event("r1", ev.TASK_QUEUED, "a"),
                            tool_registered("text")])
        assert [e.seq for e in out] == [1, 2, 3]
        assert [(e.stream, e.version) for e in out] == [("run:r1", 1), ("run:r1", 2), ("tool:text", 1)]
        assert out[0].type == ev.RUN_SUBMITTED and out[0].actor == "alice"
        assert out[1].actor == "system"
        assert out[0].ts <= out[1].ts <= out[2].ts
        prev = GENESIS_HASH
        for e in out:
            assert e.hash == chain_hash(prev, e.seq, e.stream, e.version, e.type, e.ts, e.actor,
                                        compact_json(e.data))
            prev = e.hash
        assert store.read_all() == out
        assert store.last_seq() == 3

    def test_data_roundtrips(self, store: EventStore) -> None:
        data = {"task_id": "a", "attempt": 1, "duration_s": 0.1 + 0.2,
                "result": {"text": "héllo ✓ \"quoted\"\n", "big": 2**62, "neg": -1.5e-300,
                           "nested": [None, True, False, {"z": 1, "a": [1.0, 2]}]}}
        (stored,) = store.append([NewEvent("run:r1", ev.TASK_SUCCEEDED, data)])
        (read,) = store.read_all()
        assert read == stored
        assert read.data == data

    def test_chain_verifies_across_batches(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a", "b"])])
        store.append(finished_task("r1", "a"))
        store.append([tool_registered("text")])
        store.append(finished_task("r1", "b") + [run_ended("r1", "succeeded")])
        report = verify_chain(store)
        assert report.ok, report.problem
        assert report.events == store.last_seq() == 9
        assert report.first_bad_seq is None

    def test_ts_non_decreasing(self, store: EventStore) -> None:
        for i in range(20):
            store.append([task_event("r1", ev.TASK_QUEUED, f"t{i}") for _ in range(5)])
        ts = [e.ts for e in store.read_all()]
        assert ts == sorted(ts)

    def test_per_stream_versions(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a"]), run_submitted("r2", ["a"])])
        store.append([task_event("r2", ev.TASK_QUEUED, "a"), task_event("r1", ev.TASK_QUEUED, "a"),
                      task_event("r2", ev.TASK_STARTED, "a")])
        assert store.stream_version("run:r1") == 2
        assert store.stream_version("run:r2") == 3
        assert [e.version for e in store.read_stream("run:r2")] == [1, 2, 3]
        assert [e.seq for e in store.read_stream("run:r2")] == [2, 3, 5]
        assert [e.version for e in store.read_stream("run:r2", after_version=1)] == [2, 3]
        assert store.read_stream("run:r2", after_version=3) == []

    def test_expected_version_accepted(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a"], expected_version=0)])
        out = store.append([task_event("r1", ev.TASK_QUEUED, "a"),
                            NewEvent("run:r1", ev.TASK_STARTED, {"task_id": "a", "attempt": 1},
                                     expected_version=2)])
        assert [e.version for e in out] == [2, 3]

    def test_expected_version_conflict_writes_nothing(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a"])])
        before = {t: store.projection_rows(t) for t in TABLES}
        blob = b"result bytes"
        batch = [tool_registered("text"), run_submitted("r2", ["x"]),
                 NewEvent("run:r1", ev.TASK_QUEUED, {"task_id": "a", "attempt": 1}, expected_version=0)]
        with pytest.raises(ConcurrencyError) as info:
            store.append(batch, blobs={blob_hash(blob): blob})
        assert (info.value.stream, info.value.expected, info.value.actual) == ("run:r1", 0, 1)
        assert store.last_seq() == 1
        assert store.stream_version("tool:text") == 0
        assert store.stream_version("run:r2") == 0
        assert {t: store.projection_rows(t) for t in TABLES} == before
        with pytest.raises(NotFoundError):
            store.get_blob(blob_hash(blob))
        # the store is still usable, and the chain intact
        store.append(batch[:2])
        assert verify_chain(store).ok

    def test_concurrent_expected_version_one_winner(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a"])])
        barrier = threading.Barrier(4)
        results: list[str] = []

        def writer(i: int) -> None:
            barrier.wait()
            try:
                store.append([NewEvent("run:r1", ev.TASK_QUEUED, {"task_id": "a", "attempt": i},
                                       expected_version=1)])
                results.append("ok")
            except ConcurrencyError:
                results.append("conflict")

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["conflict"] * 3 + ["ok"]
        assert store.stream_version("run:r1") == 2

    def test_read_all_paging(self, store: EventStore) -> None:
        for i in range(7):
            store.append([task_event(f"r{i % 2}", ev.TASK_QUEUED, f"t{i}-{j}") for j in range(3)])
        everything = store.read_all()
        assert [e.seq for e in everything] == list(range(1, 22))
        assert [e.seq for e in store.read_all(after_seq=5, limit=4)] == [6, 7, 8, 9]
        assert store.read_all(after_seq=21) == []
        assert [e.seq for e in store.read_all(after_seq=19, limit=10)] == [20, 21]
        assert list(store.iter_all(batch=4)) == everything

    def test_read_stream_page(self, store: EventStore) -> None:
        for i in range(6):
            store.append([task_event("r1", ev.TASK_QUEUED, f"t{i}"), task_event("r2", ev.TASK_QUEUED, f"t{i}")])
        r1 = store.read_stream("run:r1")
        assert [e.seq for e in r1] == [1, 3, 5, 7, 9, 11]
        assert store.read_stream_page("run:r1") == r1
        assert [e.seq for e in store.read_stream_page("run:r1", after_seq=3, limit=2)] == [5, 7]
        assert [e.seq for e in store.read_stream_page("run:r1", after_seq=4, limit=2)] == [5, 7]  # another stream's seq
        assert [e.seq for e in store.read_stream_page("run:r2", after_seq=0, limit=1)] == [2]
        assert [e.seq for e in store.read_stream_page("run:r1", after_seq=9)] == [11]
        assert store.read_stream_page("run:r1", after_seq=11) == []
        assert store.read_stream_page("run:r1", after_seq=10**12, limit=5) == []
        assert store.read_stream_page("run:r1", limit=0) == []
        assert store.read_stream_page("run:nope", limit=3) == []
        paged, after = [], 0
        while page := store.read_stream_page("run:r2", after_seq=after, limit=4):
            assert len(page) <= 4
            paged.extend(page)
            after = page[-1].seq
        assert paged == store.read_stream("run:r2")

    def test_read_stream_page_costs_a_page(self, store: EventStore) -> None:
        """A page at the end of a long stream costs what the page holds, not what the stream does
        (the server pages through runs of 200,000 events): answered from an index on (stream, seq),
        it takes a small fraction of reading the stream whole. Minimum timings over repeats keep
        the comparison steady on a busy machine; the margin is wide (measured: ~1,000x for SQLite)."""
        n = 20000
        for start in range(0, n, 2000):
            store.append([NewEvent("run:long", ev.TASK_QUEUED, {"task_id": f"t{i}", "attempt": 1})
                          for i in range(start, start + 2000)] + [task_event("other", ev.TASK_QUEUED, "x")])
        last = store.last_seq()

        def best(call: Any, repeats: int) -> float:
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            return min(times)

        whole = best(lambda: store.read_stream("run:long"), 2)
        tail = best(lambda: store.read_stream_page("run:long", after_seq=last - 20, limit=1), 5)
        assert [e.seq for e in store.read_stream_page("run:long", after_seq=last - 20, limit=1)] == [last - 19]
        assert tail < whole / 20, f"a 1-event page took {tail * 1000:.2f} ms, the whole stream {whole * 1000:.2f} ms"

    # ------------------------------------------------------------------ blobs
    def test_blobs(self, store: EventStore) -> None:
        data = bytes(range(256)) * 100
        digest = store.put_blob(data)
        assert digest == blob_hash(data)
        assert store.put_blob(data) == digest  # idempotent
        assert store.get_blob(digest) == data
        assert store.get_blob(store.put_blob(b"")) == b""
        missing = "f" * 64
        with pytest.raises(NotFoundError, match=missing):
            store.get_blob(missing)

    def test_blobs_with_append(self, store: EventStore) -> None:
        blob = b"\x00pickled function\xff"
        digest = blob_hash(blob)
        store.append([run_submitted("r1", ["a"])], blobs={digest: blob})
        assert store.get_blob(digest) == blob
        store.append([task_event("r1", ev.TASK_QUEUED, "a")], blobs={digest: blob})  # already there
        assert store.get_blob(digest) == blob

    # ------------------------------------------------------------------ projections
    def test_projections_follow_events(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a", "b", "c"], name="etl")])
        store.append(finished_task("r1", "a", duration_s=1.25))
        store.append([task_event("r1", ev.TASK_QUEUED, "b"),
                      task_event("r1", ev.TASK_STARTED, "b", worker={"host": "h2"}),
                      task_event("r1", ev.TASK_FAILED, "b", error="boom", duration_s=0.5),
                      task_event("r1", ev.TASK_SKIPPED, "c", reason="upstream failed", upstream="b"),
                      run_ended("r1", "failed", error="task b failed")])
        assert replay_check(store) == []
        run = store.get_run("r1")
        assert run is not None
        last = store.read_all()[-1]
        assert run["name"] == "etl" and run["owner"] == "alice" and run["status"] == "failed"
        assert run["tasks_total"] == 3 and run["error"] == "task b failed"
        assert run["finished_at"] == run["updated_at"] == last.ts  # run-level events only
        assert run["created_at"] == store.read_all()[0].ts
        assert run["task_counts"] == {"succeeded": 1, "failed": 1, "skipped": 1}
        a, b, c = store.list_tasks("r1")
        assert (a["task_id"], a["status"], a["attempt"], a["duration_s"]) == ("a", "succeeded", 1, 1.25)
        assert a["func_name"] == "work" and a["task_name"] == "work a"
        assert a["queued_at"] <= a["started_at"] <= a["finished_at"]
        assert (b["status"], b["error"], b["worker"]) == ("failed", "boom", compact_json({"host": "h2"}))
        assert (c["status"], c["error"], c["attempt"]) == ("skipped", "upstream failed", 0)

    def test_retry_resets_task_times(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a"])])
        store.append([task_event("r1", ev.TASK_QUEUED, "a"), task_event("r1", ev.TASK_STARTED, "a"),
                      task_event("r1", ev.TASK_RETRYING, "a", error="flaky", delay_s=0.1)])
        store.append([task_event("r1", ev.TASK_QUEUED, "a", attempt=2)])
        (task,) = store.list_tasks("r1")
        assert (task["status"], task["attempt"], task["started_at"], task["error"]) == ("queued", 2, None, None)
        assert store.get_run("r1")["task_counts"] == {"queued": 1}
        assert replay_check(store) == []

    def test_resume_resets_requeued_tasks_to_pending(self, store: EventStore) -> None:
        """``RunResumed``: the tasks it requeues (cut off by a crash) wait to be dispatched again;
        the others keep their state, and the run is running again."""
        store.append([run_submitted("r1", ["a", "b", "c"])])
        store.append(finished_task("r1", "a"))
        store.append([task_event("r1", ev.TASK_QUEUED, "b"),
                      task_event("r1", ev.TASK_STARTED, "b", worker={"host": "h1"}),
                      task_event("r1", ev.TASK_QUEUED, "c"),
                      run_ended("r1", "failed", error="driver lost")])
        [resumed] = store.append([_new(ev.run_stream("r1"), ev.RUN_RESUMED,
                                       {"driver": {"host": "h2"}, "requeued": ["b", "c"]})])
        a, b, c = store.list_tasks("r1")
        assert (a["status"], a["attempt"]) == ("succeeded", 1)
        assert (b["status"], b["attempt"]) == ("pending", 1)
        assert (c["status"], c["attempt"]) == ("pending", 1)
        run = store.get_run("r1")
        assert (run["status"], run["updated_at"]) == ("running", resumed.ts)
        assert run["task_counts"] == {"succeeded": 1, "pending": 2}
        assert replay_check(store) == []

    def test_get_run_missing(self, store: EventStore) -> None:
        assert store.get_run("nope") is None
        assert store.list_tasks("nope") == []

    def test_list_runs_filters_and_paging(self, store: EventStore) -> None:
        names = ["alpha", "beta", "alpha_2", "alphax2", "100% done", "v10 alpha"]
        for i, name in enumerate(names):
            store.append([run_submitted(f"r{i}", ["a"], name=name)])
        store.append([run_ended("r1", "succeeded"), run_ended("r3", "failed")])
        newest_first = [f"r{i}" for i in reversed(range(len(names)))]
        assert [r["run_id"] for r in store.list_runs()] == newest_first
        assert store.count_runs() == 6
        assert [r["run_id"] for r in store.list_runs(limit=2, offset=1)] == newest_first[1:3]
        assert store.list_runs(offset=6) == []
        assert [r["run_id"] for r in store.list_runs(status="running")] == ["r5", "r4", "r2", "r0"]
        assert store.count_runs(status="failed") == 1
        assert [r["run_id"] for r in store.list_runs(name="alpha")] == ["r5", "r3", "r2", "r0"]
        assert [r["run_id"] for r in store.list_runs(name="a_2")] == ["r2"]  # "_" is no wildcard
        assert [r["run_id"] for r in store.list_runs(name="0%")] == ["r4"]  # "%" neither
        assert store.count_runs(name="alpha", status="running") == 3
        assert store.count_runs(name="zzz") == 0
        assert store.list_runs(name="zzz") == []

    def test_list_runs_by_owner(self, store: EventStore) -> None:
        for i, actor in enumerate(["ann", "bob", "ann"]):
            store.append([run_submitted(f"o{i}", ["a"], actor=actor)])
        assert [r["run_id"] for r in store.list_runs(owner="ann")] == ["o2", "o0"]
        assert store.count_runs(owner="bob") == 1 and store.count_runs(owner="eve") == 0
        assert store.count_runs(owner="ann", status="running") == 2

    def test_list_tasks_in_submission_order(self, store: EventStore) -> None:
        order = ["zeta", "alpha", "mu", "beta", "omega"]
        # tasks first touched in a different order still list in submission order
        store.append([run_submitted("r1", order), task_event("r1", ev.TASK_QUEUED, "mu"),
                      task_event("r1", ev.TASK_QUEUED, "zeta")])
        store.append([task_event("r1", ev.TASK_STARTED, "omega"), task_event("r1", ev.TASK_QUEUED, "beta")])
        assert [t["task_id"] for t in store.list_tasks("r1")] == order
        assert all(t["run_id"] == "r1" for t in store.list_tasks("r1"))

    def test_tools(self, store: EventStore) -> None:
        store.append([tool_registered("text"), tool_registered("audio")])
        store.append([tool_registered("text", version="2.0"), tool_removed("audio")])
        assert [(t["name"], t["version"], t["status"]) for t in store.list_tools()] == [
            ("text", "2.0", "active")]
        tools = store.list_tools(include_removed=True)
        assert [(t["name"], t["status"]) for t in tools] == [("audio", "removed"), ("text", "active")]
        assert tools[1]["description"] == "the text tool"
        assert tools[1]["source"] == "maze-tool-text" and tools[1]["digest"] == "d" * 64
        assert replay_check(store) == []

    def test_projection_rows(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a", "b"]), tool_registered("text")])
        for table, (keys, cols) in TABLES.items():
            for row in store.projection_rows(table):
                assert set(keys + cols) <= set(row)
        assert len(store.projection_rows("tasks")) == 2
        with pytest.raises(ValueError, match="nope"):
            store.projection_rows("nope")

    def test_rebuild_projections_is_identity(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["b", "a"]), tool_registered("text")])
        store.append(finished_task("r1", "a") + [run_ended("r1", "succeeded")])
        before = _rows_by_key(store)
        store.rebuild_projections()
        assert _rows_by_key(store) == before
        assert replay_check(store) == []

    def test_rebuild_keeps_task_order(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["b", "a"])])
        store.rebuild_projections()
        assert [t["task_id"] for t in store.list_tasks("r1")] == ["b", "a"]

    def test_rebuild_projections_repairs(self, store: EventStore) -> None:
        store.append([run_submitted("r1", ["a", "b"]), tool_registered("text")])
        store.append(finished_task("r1", "a"))
        expected = _rows_by_key(store)
        self.corrupt_projection(store)
        assert replay_check(store) != []
        store.rebuild_projections()
        assert replay_check(store) == []
        assert _rows_by_key(store) == expected
        assert verify_chain(store).ok

    # ------------------------------------------------------------------ concurrency
    def test_threads_append_concurrently(self, store: EventStore) -> None:
        threads_n, batches, per_batch = 4, 50, 3
        errors: list[BaseException] = []

        def writer(i: int) -> None:
            try:
                for b in range(batches):
                    store.append([task_event(f"r{i}", ev.TASK_QUEUED, f"t{b}-{j}") for j in range(per_batch)]
                                 + [NewEvent("session:shared", "Ping", {"writer": i, "batch": b})])
            except BaseException as exc:  # reported below: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        report = verify_chain(store)
        assert report.ok, report.problem
        assert report.events == store.last_seq() == threads_n * batches * (per_batch + 1)
        for i in range(threads_n):
            assert store.stream_version(f"run:r{i}") == batches * per_batch
            assert len(store.list_tasks(f"r{i}")) == batches * per_batch
        assert store.stream_version("session:shared") == threads_n * batches
        assert replay_check(store) == []
