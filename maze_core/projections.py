"""Projections: read-optimised tables derived from the event log by a pure function.

``project(event)`` returns the row changes one event implies, as ``(table, key, values)`` upserts
(insert the row if missing, else set the given columns); ``key`` is the tuple of the table's key
columns, in ``TABLES`` order. Stores apply them in the same transaction
as the events; ``fold`` applies them in memory, which is how ``maze events replay`` proves the stored
tables equal what the log alone implies. Keeping this logic in the core means every store plugin
projects identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import events as ev

# table -> (key columns, other columns). Values are SQLite scalars only.
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "runs": (("run_id",), ("name", "status", "owner", "created_at", "updated_at", "finished_at",
                           "tasks_total", "error")),
    "tasks": (("run_id", "task_id"), ("func_name", "task_name", "status", "attempt", "queued_at",
                                      "started_at", "finished_at", "duration_s", "error", "worker")),
    "tools": (("name",), ("version", "source", "description", "status", "digest", "updated_at")),
}

Upsert = tuple[str, tuple[Any, ...], dict[str, Any]]

_TASK_STATUS = {
    ev.TASK_QUEUED: "queued",
    ev.TASK_STARTED: "running",
    ev.TASK_SUCCEEDED: "succeeded",
    ev.TASK_RETRYING: "retrying",
    ev.TASK_FAILED: "failed",
    ev.TASK_CANCELLED: "cancelled",
    ev.TASK_SKIPPED: "skipped",
}
_RUN_END = {ev.RUN_SUCCEEDED: "succeeded", ev.RUN_FAILED: "failed", ev.RUN_CANCELLED: "cancelled"}


def project(event: ev.Event) -> list[Upsert]:
    """The row changes implied by one event (pure: depends on the event alone)."""
    t, d, ts = event.type, event.data, event.ts
    if event.stream.startswith("run:"):
        run_id = event.stream[4:]
        if t in _TASK_STATUS:
            values: dict[str, Any] = {"status": _TASK_STATUS[t]}
            if "attempt" in d:
                values["attempt"] = d["attempt"]
            if t == ev.TASK_QUEUED:
                values.update(queued_at=ts, started_at=None, finished_at=None, error=None)
            elif t == ev.TASK_STARTED:
                values.update(started_at=ts, worker=ev.compact_json(d.get("worker") or {}))
            elif t == ev.TASK_RETRYING:
                values["error"] = d.get("error")
            elif t in ev.TASK_TERMINAL_EVENTS:
                values["finished_at"] = ts
                if d.get("duration_s") is not None:
                    values["duration_s"] = d["duration_s"]
                if t == ev.TASK_FAILED:
                    values["error"] = d.get("error")
                elif t in (ev.TASK_CANCELLED, ev.TASK_SKIPPED):
                    values["error"] = d.get("reason")
            return [("tasks", (run_id, d["task_id"]), values)]
        if t == ev.RUN_SUBMITTED:
            tasks = d.get("tasks", {})
            out: list[Upsert] = [("runs", (run_id,), {
                "name": d.get("name", ""), "status": "running", "owner": event.actor, "created_at": ts,
                "updated_at": ts, "finished_at": None, "tasks_total": len(tasks), "error": None})]
            for task_id, spec in tasks.items():
                out.append(("tasks", (run_id, task_id), {
                    "func_name": spec.get("func_name"), "task_name": spec.get("task_name"),
                    "status": "pending", "attempt": 0}))
            return out
        if t == ev.RUN_RESUMED:  # tasks cut off by the crash wait to be dispatched again
            return [("runs", (run_id,), {"status": "running", "updated_at": ts}),
                    *(("tasks", (run_id, tid), {"status": "pending"}) for tid in d.get("requeued", ()))]
        if t in _RUN_END:
            return [("runs", (run_id,), {"status": _RUN_END[t], "updated_at": ts,
                                                  "finished_at": ts, "error": d.get("error")})]
        return []
    if event.stream.startswith("tool:"):
        name = event.stream[5:]
        if t == ev.TOOL_REGISTERED:
            meta = d.get("meta", {})
            return [("tools", (name,), {
                "version": d.get("version"), "source": d.get("source"),
                "description": meta.get("description", ""), "status": "active",
                "digest": d.get("digest"), "updated_at": ts})]
        if t == ev.TOOL_REMOVED:
            return [("tools", (name,), {"status": "removed", "updated_at": ts})]
    return []


def coalesce(upserts: Iterable[Upsert]) -> list[Upsert]:
    """Merge upserts of the same row (later values win), keeping first-seen order.

    A batch often holds TaskQueued, TaskStarted and TaskSucceeded of one task: one write, not three."""
    merged: dict[tuple[str, tuple], Upsert] = {}
    for table, key, values in upserts:
        found = merged.get((table, key))
        if found is None:
            merged[(table, key)] = (table, key, dict(values))
        else:
            found[2].update(values)
    return list(merged.values())


def fold(events: Iterable[ev.Event]) -> dict[str, dict[tuple, dict[str, Any]]]:
    """Apply ``project`` to every event in memory: ``{table: {key tuple: row}}``.

    Columns never set are ``None``, as in a store's table."""
    tables: dict[str, dict[tuple, dict[str, Any]]] = {name: {} for name in TABLES}
    for event in events:
        for table, key, values in project(event):
            row = tables[table].get(key)
            if row is None:
                keys, cols = TABLES[table]
                row = dict.fromkeys(cols)
                row.update(zip(keys, key, strict=True))
                tables[table][key] = row
            row.update(values)
    return tables
