"""The contract every event-store plugin fulfils.

A store keeps the append-only event log, the projections (``maze_core.projections``) written in the
same transaction as the events that change them, and a content-addressed blob table for large or
non-JSON results and pickled functions. ``maze_core.testing.store_contract`` is the reusable test
suite: a third-party store passes it to be a drop-in replacement.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .events import Event, NewEvent


def blob_hash(data: bytes) -> str:
    """Content address of a blob: sha256 hex digest."""
    return hashlib.sha256(data).hexdigest()


class EventStore(ABC):
    """Append-only event log with projections and blobs. Implementations are safe to share
    between threads, and several processes may open the same store."""

    # ------------------------------------------------------------------ log
    @abstractmethod
    def append(self, events: Sequence[NewEvent], blobs: Mapping[str, bytes] | None = None) -> list[Event]:
        """Append ``events`` atomically, in order, with their projections and ``blobs``
        (``{hash: bytes}``). Assigns seq, per-stream version, ts and the chained hash.
        Raises ``ConcurrencyError`` (and writes nothing) if an event's ``expected_version`` is
        not its stream's current version."""

    @abstractmethod
    def read_stream(self, stream: str, after_version: int = 0) -> list[Event]:
        """Events of one stream with version > ``after_version``, in order. This reads the rest
        of the stream at once; to page through a stream that may be long, use
        ``read_stream_page``."""

    def read_stream_page(self, stream: str, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """At most ``limit`` events of one stream with seq > ``after_seq``, in seq order
        (``limit=None``: all of them; ``limit=0``: none). Page with ``after_seq`` set to the
        last seq returned. A run of 50,000 tasks holds some 200,000 events, so readers that
        answer clients (the server's event endpoints) ask for pages: a store should answer from
        an index on (stream, seq), touching only the rows it returns.

        This default filters ``read_stream`` and so reads the whole stream on every call: it is
        correct, and slow on long streams. Stores override it; the contract suite
        (``test_read_stream_page_costs_a_page``) checks that a page costs about what it holds."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        page = [e for e in self.read_stream(stream) if e.seq > after_seq]
        return page if limit is None else page[:limit]

    @abstractmethod
    def read_all(self, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """Events of every stream with seq > ``after_seq``, in seq order."""

    def iter_all(self, batch: int = 5000) -> Iterator[Event]:
        """Every event in seq order, fetched in batches."""
        after = 0
        while True:
            chunk = self.read_all(after_seq=after, limit=batch)
            if not chunk:
                return
            yield from chunk
            after = chunk[-1].seq

    @abstractmethod
    def stream_version(self, stream: str) -> int:
        """The current version of ``stream`` (0 when it has no events)."""

    @abstractmethod
    def last_seq(self) -> int:
        """The highest seq in the log (0 when empty)."""

    # ------------------------------------------------------------------ blobs
    @abstractmethod
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` under its sha256 and return the hash (idempotent)."""

    @abstractmethod
    def get_blob(self, digest: str) -> bytes:
        """The bytes stored under ``digest``; ``NotFoundError`` if absent."""

    # ------------------------------------------------------------------ projections
    @abstractmethod
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The ``runs`` row of ``run_id`` with ``task_counts`` ({status: n}) added, or None."""

    @abstractmethod
    def list_runs(self, status: str | None = None, name: str | None = None, limit: int = 50,
                  offset: int = 0, owner: str | None = None) -> list[dict[str, Any]]:
        """Runs newest first, filtered by exact status, by name substring and by exact owner
        (the actor that submitted the run)."""

    @abstractmethod
    def count_runs(self, status: str | None = None, name: str | None = None,
                   owner: str | None = None) -> int:
        """How many runs ``list_runs`` would page through."""

    @abstractmethod
    def list_tasks(self, run_id: str) -> list[dict[str, Any]]:
        """The ``tasks`` rows of one run, in submission order."""

    @abstractmethod
    def list_tools(self, include_removed: bool = False) -> list[dict[str, Any]]:
        """The ``tools`` rows, by name."""

    def task_durations(self, limit: int = 5000) -> list[tuple[str, float]]:
        """``(func_name, duration_s)`` of the most recent succeeded tasks, oldest first."""
        rows = [r for r in self.projection_rows("tasks")
                if r.get("status") == "succeeded" and r.get("duration_s") is not None]
        rows.sort(key=lambda r: r.get("finished_at") or 0)
        return [(r["func_name"], r["duration_s"]) for r in rows[-limit:]]

    @abstractmethod
    def projection_rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of projection ``table`` (``runs``, ``tasks``, ``tools``) as stored."""

    @abstractmethod
    def rebuild_projections(self) -> None:
        """Drop every projection row and rebuild them from the log alone."""

    def close(self) -> None:  # noqa: B027 - optional for stores holding no resources
        """Release connections and files."""
