"""The SQLite event store: one file holds the event log, the projections and the blobs.

Every thread gets its own connection (autocommit mode; transactions are explicit ``BEGIN
IMMEDIATE`` ... ``COMMIT``), the file is in WAL mode, and writers serialise on SQLite's write lock, so
one file can be shared by several threads and several processes. Appends are batched: one
transaction writes the events, their stream versions, their blobs and their projections.

The schema is built by named migrations applied with sqlite-utils' ``Migrations`` (recorded in the
``_sqlite_migrations`` table).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import sqlite_utils

from maze_core.errors import ConcurrencyError, NotFoundError
from maze_core.events import GENESIS_HASH, Event, NewEvent, chain_hash, compact_json
from maze_core.projections import TABLES, Upsert, coalesce, project
from maze_core.store import EventStore, blob_hash

migrations = sqlite_utils.Migrations("maze")

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
REBUILD_CHUNK = 5000


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    """The event log, stream versions, blobs and the projections of ``maze_core.projections``.

    The DDL is frozen here on purpose: a later change to ``TABLES`` needs a new migration (the test
    suite compares this schema with ``TABLES``). Projection columns other than the keys carry no
    declared type, so values round-trip exactly as ``project`` produced them."""
    for statement in (
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
            type TEXT NOT NULL, ts REAL NOT NULL, actor TEXT NOT NULL, data TEXT NOT NULL,
            hash TEXT NOT NULL, UNIQUE (stream, version))""",
        "CREATE TABLE streams (stream TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        "CREATE TABLE blobs (hash TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB NOT NULL)",
        """CREATE TABLE runs (
            run_id TEXT NOT NULL, name, status, owner, created_at, updated_at, finished_at,
            tasks_total, error, PRIMARY KEY (run_id))""",
        "CREATE INDEX runs_status ON runs (status)",
        "CREATE INDEX runs_created_at ON runs (created_at)",
        # Rowid order is insertion order: list_tasks returns a run's tasks in submission order.
        """CREATE TABLE tasks (
            run_id TEXT NOT NULL, task_id TEXT NOT NULL, func_name, task_name, status, attempt,
            queued_at, started_at, finished_at, duration_s, error, worker,
            PRIMARY KEY (run_id, task_id))""",
        """CREATE TABLE tools (
            name TEXT NOT NULL, version, source, description, status, digest, updated_at,
            PRIMARY KEY (name))""",
    ):
        db.execute(statement)


@migrations()
def m002_runs_owner_index(db: sqlite_utils.Database) -> None:
    """Runs listed per owner (the server shows each token its own runs)."""
    db.execute("CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, created_at)")


@migrations()
def m003_events_stream_seq_index(db: sqlite_utils.Database) -> None:
    """A stream's events by seq (``read_stream_page``): the server pages through a run's events
    after a sequence number. ``UNIQUE (stream, version)`` orders a stream by version only, so
    without this index SQLite walked the stream from its first event to find a page."""
    db.execute("CREATE INDEX IF NOT EXISTS events_stream_seq ON events (stream, seq)")


# --------------------------------------------------------------------------- SQL
_EVENT_COLUMNS = "seq, stream, version, type, ts, actor, data, hash"
_SELECT_EVENTS = f"SELECT {_EVENT_COLUMNS} FROM events"
_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_LAST_EVENT = "SELECT seq, hash, ts FROM events ORDER BY seq DESC LIMIT 1"
_STREAM_PAGE = f"{_SELECT_EVENTS} WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?"
_STREAM_VERSION = "SELECT version FROM streams WHERE stream = ?"
_UPSERT_STREAM = ("INSERT INTO streams (stream, version) VALUES (?, ?) "
                  "ON CONFLICT (stream) DO UPDATE SET version = excluded.version")
_INSERT_BLOB = "INSERT OR IGNORE INTO blobs (hash, size, data) VALUES (?, ?, ?)"
_COLUMNS = {table: keys + cols for table, (keys, cols) in TABLES.items()}
_SELECT_ROWS = {table: f"SELECT {', '.join(cols)} FROM {table}" for table, cols in _COLUMNS.items()}


@cache
def _upsert_sql(table: str, columns: tuple[str, ...]) -> str:
    """``INSERT ... ON CONFLICT DO UPDATE`` setting only ``columns`` of an existing row."""
    keys = TABLES[table][0]
    names = keys + columns
    sql = (f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
           f"ON CONFLICT ({', '.join(keys)}) DO ")
    if not columns:
        return sql + "NOTHING"
    return sql + "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in columns)


def _apply_upserts(conn: sqlite3.Connection, upserts: Iterable[Upsert]) -> None:
    """Apply projection upserts (already coalesced: one per row) with few ``executemany`` calls.

    Consecutive upserts of one table setting the same columns share a statement. Rows are written in
    their given order within each table, so rowid order stays insertion order."""
    by_table: dict[str, list[Upsert]] = {}
    for upsert in upserts:
        by_table.setdefault(upsert[0], []).append(upsert)
    for table, items in by_table.items():
        for columns, group in itertools.groupby(items, key=lambda u: tuple(u[2])):
            conn.executemany(_upsert_sql(table, columns),
                             [(*key, *values.values()) for _, key, values in group])


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: takes the write lock at once, commits, or rolls back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _event(row: tuple[Any, ...]) -> Event:
    seq, stream, version, type_, ts, actor, data, hash_ = row
    return Event(seq, stream, version, type_, ts, actor, json.loads(data), hash_)


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def _like_pattern(substring: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching ``substring`` anywhere, wildcards escaped."""
    escaped = substring.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class _Handle:
    """One thread's connection. The store tracks handles weakly: when a thread ends, its
    ``threading.local`` slot, the handle and so the connection are freed with it."""

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.pid = os.getpid()
        # Closing explicitly (not merely freeing the connection) lets SQLite release its file handles.
        weakref.finalize(self, conn.close)


class SqliteStore(EventStore):
    """``EventStore`` on one SQLite file, shared safely by threads and processes.

    ``busy_timeout_ms`` is how long a writer waits for another one's lock before failing;
    ``synchronous`` is the SQLite pragma (``NORMAL`` in WAL mode survives a process crash but may lose
    the last transactions on power loss). Blob hashes given to ``append`` are trusted to be
    ``blob_hash(data)``."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_ms: int = 30000,
                 synchronous: str = "NORMAL"):
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                             f"got {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms}")
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: weakref.WeakSet[_Handle] = weakref.WeakSet()
        self._migrate()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # ------------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again in a forked child)."""
        handle = getattr(self._local, "handle", None)
        if handle is None or handle.pid != os.getpid():
            handle = _Handle(self._connect())
            self._local.handle = handle
            with self._lock:
                self._handles.add(handle)
        return handle.conn

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so that close() may close every thread's connection; each
        # connection is otherwise used by the thread that opened it.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_ms / 1000)  # sets SQLite's busy_timeout
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        return conn

    def _migrate(self) -> None:
        """Switch the file to WAL and apply pending migrations.

        Several processes may open a fresh file at once: the migrations run inside one ``BEGIN
        IMMEDIATE`` transaction, so the first process applies them while the others wait on the write
        lock and then find nothing pending."""
        conn = self._conn()
        self._enable_wal(conn)
        db = sqlite_utils.Database(conn, execute_plugins=False)
        if not migrations.pending(db):
            return
        with _write_transaction(conn):
            migrations.apply(db)

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode = WAL``, retried while another process holds the file: unlike other
        statements, switching the journal mode reports SQLITE_BUSY at once instead of waiting."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"{self.path}: cannot use WAL mode (journal_mode is {mode})")

    def close(self) -> None:
        """Close every connection this store opened, in any thread. The store stays usable: the next
        call opens a fresh connection. A thread must not be using the store while it is closed."""
        with self._lock:
            handles, self._handles = list(self._handles), weakref.WeakSet()
            self._local = threading.local()
        for handle in handles:
            handle.conn.close()

    # ------------------------------------------------------------------ log
    def append(self, events: Sequence[NewEvent], blobs: Mapping[str, bytes] | None = None) -> list[Event]:
        """Append ``events`` and ``blobs`` in one transaction, with their projections.

        The returned events carry the callers' ``data`` dicts as given (not re-parsed)."""
        if not events:
            return []
        conn = self._conn()
        with _write_transaction(conn):
            last = conn.execute(_LAST_EVENT).fetchone()
            seq, prev_hash, last_ts = last if last else (0, GENESIS_HASH, 0.0)
            versions: dict[str, int] = {}
            rows: list[tuple[Any, ...]] = []
            out: list[Event] = []
            now = time.time
            for new in events:
                stream, type_, actor = new.stream, new.type, new.actor
                version = versions.get(stream)
                if version is None:
                    found = conn.execute(_STREAM_VERSION, (stream,)).fetchone()
                    version = found[0] if found else 0
                if new.expected_version is not None and new.expected_version != version:
                    raise ConcurrencyError(stream, new.expected_version, version)
                seq += 1
                version += 1
                versions[stream] = version
                ts = now()
                if ts < last_ts:  # keep ts non-decreasing along seq, whatever the clock does
                    ts = last_ts
                last_ts = ts
                data_json = compact_json(new.data)
                prev_hash = chain_hash(prev_hash, seq, stream, version, type_, ts, actor, data_json)
                rows.append((seq, stream, version, type_, ts, actor, data_json, prev_hash))
                out.append(Event(seq, stream, version, type_, ts, actor, new.data, prev_hash))
            conn.executemany(_INSERT_EVENT, rows)
            conn.executemany(_UPSERT_STREAM, versions.items())
            if blobs:
                conn.executemany(_INSERT_BLOB, [(h, len(b), b) for h, b in blobs.items()])
            _apply_upserts(conn, coalesce([u for event in out for u in project(event)]))
        return out

    def read_stream(self, stream: str, after_version: int = 0) -> list[Event]:
        cursor = self._conn().execute(
            f"{_SELECT_EVENTS} WHERE stream = ? AND version > ? ORDER BY version", (stream, after_version))
        return [_event(row) for row in cursor]

    def read_stream_page(self, stream: str, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """One page of a stream by seq, from the index ``events_stream_seq`` (migration m003):
        SQLite reads only the rows it returns, wherever the page lies in the stream."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        cursor = self._conn().execute(_STREAM_PAGE, (stream, after_seq, -1 if limit is None else limit))
        return [_event(row) for row in cursor]

    def read_all(self, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        return self._read_all(self._conn(), after_seq, limit)

    @staticmethod
    def _read_all(conn: sqlite3.Connection, after_seq: int, limit: int | None) -> list[Event]:
        cursor = conn.execute(f"{_SELECT_EVENTS} WHERE seq > ? ORDER BY seq LIMIT ?",
                              (after_seq, -1 if limit is None else limit))
        return [_event(row) for row in cursor]

    def stream_version(self, stream: str) -> int:
        found = self._conn().execute(_STREAM_VERSION, (stream,)).fetchone()
        return found[0] if found else 0

    def last_seq(self) -> int:
        return self._conn().execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]

    # ------------------------------------------------------------------ blobs
    def put_blob(self, data: bytes) -> str:
        digest = blob_hash(data)
        self._conn().execute(_INSERT_BLOB, (digest, len(data), data))
        return digest

    def get_blob(self, digest: str) -> bytes:
        found = self._conn().execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()
        if found is None:
            raise NotFoundError(f"blob {digest} does not exist")
        return found[0]

    # ------------------------------------------------------------------ projections
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        conn = self._conn()
        rows = _dicts(conn.execute(f"{_SELECT_ROWS['runs']} WHERE run_id = ?", (run_id,)))
        if not rows:
            return None
        run = rows[0]
        run["task_counts"] = dict(conn.execute(
            "SELECT status, count(*) FROM tasks WHERE run_id = ? GROUP BY status", (run_id,)).fetchall())
        return run

    @staticmethod
    def _runs_filter(status: str | None, name: str | None,
                     owner: str | None = None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if name:
            clauses.append("name LIKE ? ESCAPE '\\'")
            params.append(_like_pattern(name))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def list_runs(self, status: str | None = None, name: str | None = None, limit: int = 50,
                  offset: int = 0, owner: str | None = None) -> list[dict[str, Any]]:
        """Runs newest first (by ``created_at``, then ``run_id``). ``name`` matches a substring,
        case-insensitively for ASCII letters (SQL ``LIKE``)."""
        where, params = self._runs_filter(status, name, owner)
        return _dicts(self._conn().execute(
            f"{_SELECT_ROWS['runs']}{where} ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset]))

    def count_runs(self, status: str | None = None, name: str | None = None,
                   owner: str | None = None) -> int:
        where, params = self._runs_filter(status, name, owner)
        return self._conn().execute(f"SELECT count(*) FROM runs{where}", params).fetchone()[0]

    def list_tasks(self, run_id: str) -> list[dict[str, Any]]:
        return _dicts(self._conn().execute(
            f"{_SELECT_ROWS['tasks']} WHERE run_id = ? ORDER BY rowid", (run_id,)))

    def list_tools(self, include_removed: bool = False) -> list[dict[str, Any]]:
        where = "" if include_removed else " WHERE status IS NOT 'removed'"
        return _dicts(self._conn().execute(f"{_SELECT_ROWS['tools']}{where} ORDER BY name"))

    def task_durations(self, limit: int = 5000) -> list[tuple[str, float]]:
        rows = self._conn().execute(
            "SELECT func_name, duration_s FROM tasks WHERE status = 'succeeded' AND duration_s IS NOT "
            "NULL ORDER BY finished_at DESC LIMIT ?", (int(limit),)).fetchall()
        return [(f, d) for f, d in reversed(rows)]

    def projection_rows(self, table: str) -> list[dict[str, Any]]:
        if table not in TABLES:
            raise ValueError(f"unknown projection table {table!r}; known: {', '.join(TABLES)}")
        return _dicts(self._conn().execute(f"{_SELECT_ROWS[table]} ORDER BY rowid"))

    def rebuild_projections(self) -> None:
        """Empty the projection tables and fold the whole log into them, in one transaction."""
        conn = self._conn()
        with _write_transaction(conn):
            for table in TABLES:
                conn.execute(f"DELETE FROM {table}")
            after = 0
            while chunk := self._read_all(conn, after, REBUILD_CHUNK):
                _apply_upserts(conn, coalesce(u for event in chunk for u in project(event)))
                after = chunk[-1].seq
