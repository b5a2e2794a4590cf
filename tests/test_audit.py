"""maze_core.audit on a real SQLite file tampered with behind the store's back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from maze_core.audit import VerifyReport, replay_check, verify_chain
from maze_core.events import NewEvent
from maze_core.testing.store_contract import finished_task, run_ended, run_submitted, tool_registered
from maze_sqlite.store import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "maze.db")
    s.append([run_submitted("r1", ["a", "b"]), tool_registered("text")])  # seq 1-2
    s.append(finished_task("r1", "a"))  # seq 3-5
    s.append([run_submitted("r2", ["x"])])  # seq 6
    s.append(finished_task("r1", "b") + [run_ended("r1", "succeeded")])  # seq 7-10
    yield s
    s.close()


def tamper(store: SqliteStore, *statements: str) -> None:
    with sqlite3.connect(store.path) as conn:
        for sql in statements:
            conn.execute(sql)


def test_intact_log_verifies(store: SqliteStore) -> None:
    assert verify_chain(store) == VerifyReport(ok=True, events=10)
    assert replay_check(store) == []


def test_edited_data_is_reported(store: SqliteStore) -> None:
    tamper(store, """UPDATE events SET data = '{"attempt":1,"duration_s":0.01,"result":{"ok":false},'
                  || '"task_id":"a"}' WHERE seq = 5""")
    report = verify_chain(store)
    assert not report.ok
    assert report.first_bad_seq == 5
    assert "hash" in report.problem


def test_edited_field_is_reported(store: SqliteStore) -> None:
    tamper(store, "UPDATE events SET actor = 'mallory' WHERE seq = 6")
    assert verify_chain(store).first_bad_seq == 6


def test_rehashed_edit_breaks_the_next_event(store: SqliteStore) -> None:
    """An editor who also recomputes the edited event's hash still breaks the one after it."""
    from maze_core.events import chain_hash, compact_json

    e3, e4 = store.read_all(after_seq=2, limit=2)
    data = {**e4.data, "worker": {"host": "evil"}}
    forged = chain_hash(e3.hash, e4.seq, e4.stream, e4.version, e4.type, e4.ts, e4.actor,
                        compact_json(data))
    tamper(store, f"UPDATE events SET data = '{compact_json(data)}', hash = '{forged}' WHERE seq = 4")
    assert verify_chain(store).first_bad_seq == 5


def test_deleted_event_is_reported(store: SqliteStore) -> None:
    tamper(store, "DELETE FROM events WHERE seq = 4")
    report = verify_chain(store)
    assert (report.ok, report.first_bad_seq) == (False, 4)
    assert "seq 4 is missing" in report.problem


def test_deleted_stream_tail_is_reported(store: SqliteStore) -> None:
    tamper(store, "DELETE FROM events WHERE seq = 10")  # the last event of the log
    report = verify_chain(store)
    assert (report.ok, report.first_bad_seq) == (False, 10)
    assert "run:r1" in report.problem


def test_swapped_events_are_reported(store: SqliteStore) -> None:
    tamper(store, "UPDATE events SET seq = -1 WHERE seq = 3",
           "UPDATE events SET seq = 3 WHERE seq = 7",
           "UPDATE events SET seq = 7 WHERE seq = -1")
    report = verify_chain(store)
    assert (report.ok, report.first_bad_seq) == (False, 3)


def test_swapped_events_of_different_streams_are_reported(store: SqliteStore) -> None:
    tamper(store, "UPDATE events SET seq = -1 WHERE seq = 5",
           "UPDATE events SET seq = 5 WHERE seq = 6",
           "UPDATE events SET seq = 6 WHERE seq = -1")
    report = verify_chain(store)
    assert (report.ok, report.first_bad_seq) == (False, 5)
    assert "hash" in report.problem


def test_tampered_projection_is_listed_and_rebuilt(store: SqliteStore) -> None:
    tamper(store, "UPDATE tasks SET status = 'failed' WHERE run_id = 'r1' AND task_id = 'b'",
           "DELETE FROM runs WHERE run_id = 'r2'",
           "INSERT INTO tools (name, status) VALUES ('ghost', 'active')")
    problems = replay_check(store)
    assert len(problems) == 3
    assert any("tasks ('r1', 'b')" in p and "status" in p and "'failed'" in p for p in problems)
    assert any("runs ('r2',)" in p and "missing" in p for p in problems)
    assert any("tools ('ghost',)" in p for p in problems)
    assert verify_chain(store).ok  # the log itself is intact

    store.rebuild_projections()
    assert replay_check(store) == []
    assert store.get_run("r2") is not None
    assert [t["status"] for t in store.list_tasks("r1")] == ["succeeded", "succeeded"]


def test_float_columns_compare_exactly(store: SqliteStore) -> None:
    (event,) = [e for e in store.read_all() if e.type == "RunSucceeded"]
    tamper(store, f"UPDATE runs SET finished_at = {event.ts!r} + 1e-6 WHERE run_id = 'r1'")
    assert [p for p in replay_check(store) if "finished_at" in p]


def test_unknown_event_types_are_chained_too(store: SqliteStore) -> None:
    store.append([NewEvent("session:s1", "PluginThing", {"x": [1, 2.5, None]})])
    assert verify_chain(store).ok
    tamper(store, """UPDATE events SET data = '{"x":[1,2.5,null,4]}' WHERE stream = 'session:s1'""")
    assert verify_chain(store).first_bad_seq == 11


def test_audits_report_progress_over_the_whole_log(tmp_path):
    from maze_core.audit import replay_check, verify_chain
    from maze_core.events import NewEvent
    from maze_sqlite.store import SqliteStore
    store = SqliteStore(tmp_path / "p.db")
    store.append([NewEvent(f"tool:t{i}", "ToolRemoved", {"name": f"t{i}", "reason": "x"})
                  for i in range(12000)])
    seen: list[tuple[int, int]] = []
    assert verify_chain(store, lambda done, total: seen.append((done, total))).ok
    assert seen == [(5000, 12000), (10000, 12000), (12000, 12000)]
    seen.clear()
    assert replay_check(store, lambda done, total: seen.append((done, total))) == []
    assert seen[-1] == (12000, 12000)


def test_edited_version_with_the_chain_recomputed_is_reported(store: SqliteStore) -> None:
    """An editor who changes one event's stream version and recomputes every hash from it on
    leaves a valid chain: the stream-version check alone names the event."""
    from maze_core.events import GENESIS_HASH, chain_hash, compact_json

    events = store.read_all()
    assert (events[3].seq, events[3].stream, events[3].version) == (4, "run:r1", 3)
    statements = []
    prev = GENESIS_HASH
    for event in events:
        version = 9 if event.seq == 4 else event.version     # 9: unused in run:r1 (it ends at 8)
        digest = chain_hash(prev, event.seq, event.stream, version, event.type, event.ts, event.actor,
                            compact_json(event.data))
        if event.seq >= 4:
            statements.append(f"UPDATE events SET version = {version}, hash = '{digest}' WHERE seq = {event.seq}")
        prev = digest
    tamper(store, *statements)
    assert store.read_all(after_seq=3, limit=1)[0].version == 9
    report = verify_chain(store)
    assert (report.ok, report.first_bad_seq) == (False, 4)
    assert "version 9, expected 3" in report.problem
