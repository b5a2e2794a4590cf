"""The SQLite store: the EventStore contract, plus what is specific to SQLite (WAL, migrations,
reopening, several processes on one file, the plugin hook)."""

from __future__ import annotations

import gc
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from maze_core import plugins
from maze_core.audit import replay_check, verify_chain
from maze_core.config import load_config
from maze_core.events import NewEvent
from maze_core.projections import TABLES
from maze_core.store import EventStore, blob_hash
from maze_core.testing.store_contract import EventStoreContract, finished_task, run_submitted
from maze_sqlite import store as sqlite_store
from maze_sqlite.store import SqliteStore


class TestSqliteStore(EventStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        s = SqliteStore(tmp_path / "maze.db")
        yield s
        s.close()

    def corrupt_projection(self, store: EventStore) -> None:
        assert isinstance(store, SqliteStore)
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE tasks SET status = 'running', attempt = 7 WHERE task_id = 'a'")
            conn.execute("DELETE FROM tasks WHERE task_id = 'b'")
            conn.execute("INSERT INTO runs (run_id, name) VALUES ('ghost', 'not in the log')")
            conn.execute("UPDATE tools SET version = '0.0'")


def _migrations(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = 'maze' ORDER BY id")]


def test_wal_and_pragmas(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "maze.db", busy_timeout_ms=1234, synchronous="full")
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
    store.close()


def test_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "a.db", synchronous="SOMETIMES; DROP TABLE events")
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        SqliteStore(tmp_path / "b.db", busy_timeout_ms=-1)


def test_migrations_recorded_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "maze.db"
    SqliteStore(path).close()
    assert _migrations(path) == ["m001_initial", "m002_runs_owner_index", "m003_events_stream_seq_index"]
    SqliteStore(path).close()
    assert _migrations(path) == ["m001_initial", "m002_runs_owner_index", "m003_events_stream_seq_index"]
    db = sqlite_utils.Database(path)
    assert sqlite_store.migrations.pending(db) == []
    assert {"events", "streams", "blobs", *TABLES} <= set(db.table_names())
    db.close()


def test_schema_covers_projection_tables(tmp_path: Path) -> None:
    """m001's DDL is frozen: when ``TABLES`` changes, this fails until a migration follows it."""
    store = SqliteStore(tmp_path / "maze.db")
    db = sqlite_utils.Database(store._conn())
    for table, (keys, cols) in TABLES.items():
        assert [c.name for c in db[table].columns] == [*keys, *cols], table
        assert db[table].pks == list(keys), table
    store.close()


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "maze.db"
    blob = b"x" * 1000
    store = SqliteStore(path)
    store.append([run_submitted("r1", ["a", "b"])], blobs={blob_hash(blob): blob})
    store.append(finished_task("r1", "a"))
    events = store.read_all()
    run, tasks = store.get_run("r1"), store.list_tasks("r1")
    store.close()

    again = SqliteStore(path)
    assert again.read_all() == events
    assert again.get_run("r1") == run
    assert again.list_tasks("r1") == tasks
    assert again.get_blob(blob_hash(blob)) == blob
    assert again.stream_version("run:r1") == 4
    assert verify_chain(again).ok
    assert replay_check(again) == []
    again.append([NewEvent("run:r1", "TaskQueued", {"task_id": "b", "attempt": 1}, expected_version=4)])
    assert verify_chain(again).ok
    again.close()


def test_close_then_use_reopens(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "maze.db")
    store.append([run_submitted("r1", ["a"])])
    store.close()
    store.close()  # idempotent
    assert store.last_seq() == 1
    store.close()


def test_finished_threads_release_their_connections(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "maze.db")
    threads = [threading.Thread(target=store.last_seq) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert len(store._handles) == 1  # this thread's only
    store.close()
    assert len(store._handles) == 0


def test_failed_append_rolls_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "maze.db")
    store.append([run_submitted("r1", ["a"])])
    with pytest.raises(ValueError):  # NaN is refused by canonical JSON, after other events were built
        store.append([run_submitted("r2", ["a"]), NewEvent("run:r1", "X", {"bad": float("nan")})])
    assert store.last_seq() == 1
    assert store.get_run("r2") is None
    assert not store._conn().in_transaction
    store.append([run_submitted("r2", ["a"])])
    assert verify_chain(store).ok
    store.close()


def _process_writer(path: str, index: int, batches: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()  # every process opens the fresh file at once: the migrations race too
    store = SqliteStore(path)
    for b in range(batches):
        store.append([NewEvent(f"run:p{index}", "TaskQueued", {"task_id": f"t{b}-{j}", "attempt": 1})
                      for j in range(5)] + [NewEvent("session:shared", "Ping", {"p": index, "b": b})])
    store.close()


def test_processes_append_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    processes_n, batches = 3, 40
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes_n)
    procs = [ctx.Process(target=_process_writer, args=(str(path), i, batches, barrier))
             for i in range(processes_n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    assert [p.exitcode for p in procs] == [0] * processes_n

    store = SqliteStore(path)
    report = verify_chain(store)
    assert report.ok, report.problem
    assert report.events == processes_n * batches * 6
    assert [e.seq for e in store.read_all()] == list(range(1, report.events + 1))
    for i in range(processes_n):
        assert store.stream_version(f"run:p{i}") == batches * 5
    assert store.stream_version("session:shared") == processes_n * batches
    assert replay_check(store) == []
    assert _migrations(path) == ["m001_initial", "m002_runs_owner_index", "m003_events_stream_seq_index"]
    store.close()


def test_plugin_registers_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAZE_LOAD_PLUGINS", raising=False)
    factory = plugins.stores()["sqlite"]
    data_dir = tmp_path / "nested" / "data"
    config = load_config(environ={"MAZE_PATHS_DATA_DIR": str(data_dir), "MAZE_SQLITE_FILENAME": "x.db",
                                  "MAZE_SQLITE_SYNCHRONOUS": "FULL"})
    store = factory(config)
    assert isinstance(store, SqliteStore)
    assert store.path == data_dir / "x.db" and store.path.exists()
    assert store.synchronous == "FULL"
    store.close()


# ---------------------------------------------------------------------------- behind the API
class NoOwnerFilterStore(SqliteStore):
    """A store plugin whose run listing has no owner filter (its signature says so)."""

    def list_runs(self, status=None, name=None, limit=50, offset=0):   # type: ignore[override]
        return super().list_runs(status=status, name=name, limit=limit, offset=offset)

    def count_runs(self, status=None, name=None):   # type: ignore[override]
        return super().count_runs(status=status, name=name)


class IgnoredOwnerStore(SqliteStore):
    """A broken store plugin: it takes ``owner`` and ignores it."""

    def list_runs(self, status=None, name=None, limit=50, offset=0, owner=None):
        return super().list_runs(status=status, name=name, limit=limit, offset=offset)

    def count_runs(self, status=None, name=None, owner=None):
        return super().count_runs(status=status, name=name)


@pytest.mark.parametrize("store_class", [NoOwnerFilterStore, IgnoredOwnerStore])
def test_api_shows_a_token_only_its_own_runs_whatever_the_store_filters(tmp_path: Path, store_class) -> None:
    import httpx

    from maze_api import create_app
    from maze_api.testing import logging_restored, serve
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry
    from maze_core.testing.store_contract import run_ended
    from tests.conftest import make_config

    cfg = make_config(tmp_path)
    cfg.server.tokens = ["ann=ann-token-0123456789abcdef", "bob=bob-token-0123456789abcdef"]
    cfg.logging.level = "WARNING"
    store = store_class(tmp_path / "plugin.db")
    # bob has 4 runs among 521 (the API scans them in pages of 500)
    owners = ["ann"] * 517 + ["bob"] * 3
    for i, owner in enumerate(owners):
        store.append([run_submitted(f"r{i}", ["a"], actor=owner), run_ended(f"r{i}", "succeeded")])
    store.append([run_submitted("r-running", ["a"], actor="bob")])
    with logging_restored():
        engine = Engine.from_config(cfg, store=store, registry=ToolRegistry(), actor="server")
        engine.start(resume=False)
        try:
            with serve(create_app(cfg, engine)) as url, httpx.Client(
                    base_url=url, headers={"Authorization": "Bearer bob-token-0123456789abcdef"},
                    timeout=30) as bob:
                listed = bob.get("/runs", params={"limit": 1000})
                assert listed.status_code == 200, listed.text
                assert {r["owner"] for r in listed.json()["runs"]} == {"bob"}
                assert [r["run_id"] for r in listed.json()["runs"]] == ["r-running", "r519", "r518", "r517"]
                if store_class is NoOwnerFilterStore:   # the API's own filter: totals and counts too
                    assert listed.json()["total"] == 4
                    page = bob.get("/runs", params={"limit": 2, "offset": 1}).json()
                    assert [r["run_id"] for r in page["runs"]] == ["r519", "r518"] and page["total"] == 4
                    counts = bob.get("/health").json()["counts"]
                    assert counts["runs"]["succeeded"] == 3 and counts["runs"]["running"] == 1
                    assert counts["runs_total"] == 4
        finally:
            engine.stop()
            store.close()
