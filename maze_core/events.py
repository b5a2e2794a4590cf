"""Event types, canonical JSON and the hash chain.

Every change in Maze is an event appended to one log. An event has a global ``seq``, a ``stream``
(``run:<id>``, ``tool:<name>``, ``session:<id>``), a per-stream ``version`` (unique with the stream:
optimistic concurrency), a ``type``, a timestamp ``ts``, an ``actor`` and a JSON ``data`` payload.

``hash = sha256(previous hash | seq | stream | version | type | ts | actor | data)`` chains the log:
editing, dropping or reordering any event breaks every hash after it (``maze events verify``).

The payload of each event type is described by a pydantic model below. The engine builds payloads
as plain dicts on its hot path; ``validate_event`` checks one against its model (used by tests and
by ``[engine] validate_events = true``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    """Serialise ``value`` to canonical JSON: sorted keys, no spaces, UTF-8 kept, NaN refused."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, seq: int, stream: str, version: int, type_: str, ts: float, actor: str,
               data_json: str) -> str:
    """Hash of one event, chained to the previous one. ``data_json`` is the stored canonical text."""
    h = hashlib.sha256()
    h.update(f"{prev_hash}|{seq}|{stream}|{version}|{type_}|{ts!r}|{actor}|".encode())
    h.update(data_json.encode())
    return h.hexdigest()


@dataclass(slots=True)
class NewEvent:
    """An event about to be appended. ``expected_version`` (optional) is the stream version the
    writer last saw: the append fails with ``ConcurrencyError`` if another writer moved it."""

    stream: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    actor: str = "system"
    expected_version: int | None = None


@dataclass(slots=True, frozen=True)
class Event:
    """An event as stored in the log."""

    seq: int
    stream: str
    version: int
    type: str
    ts: float
    actor: str
    data: dict[str, Any]
    hash: str

    @property
    def run_id(self) -> str | None:
        return self.stream[4:] if self.stream.startswith("run:") else None

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "stream": self.stream, "version": self.version, "type": self.type,
                "ts": self.ts, "actor": self.actor, "data": self.data, "hash": self.hash}


def run_stream(run_id: str) -> str:
    return f"run:{run_id}"


def tool_stream(name: str) -> str:
    return f"tool:{name}"


# --------------------------------------------------------------------------- event type names
RUN_SUBMITTED = "RunSubmitted"
RUN_RESUMED = "RunResumed"
RUN_SUCCEEDED = "RunSucceeded"
RUN_FAILED = "RunFailed"
RUN_CANCELLED = "RunCancelled"
TASK_QUEUED = "TaskQueued"
TASK_STARTED = "TaskStarted"
TASK_SUCCEEDED = "TaskSucceeded"
TASK_RETRYING = "TaskRetrying"
TASK_FAILED = "TaskFailed"
TASK_CANCELLED = "TaskCancelled"
TASK_SKIPPED = "TaskSkipped"
TOOL_REGISTERED = "ToolRegistered"
TOOL_REMOVED = "ToolRemoved"

RUN_TERMINAL = {RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED}
TASK_TERMINAL_EVENTS = {TASK_SUCCEEDED, TASK_FAILED, TASK_CANCELLED, TASK_SKIPPED}


# --------------------------------------------------------------------------- payload models
class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskSpecData(_Payload):
    """One task as recorded in RunSubmitted."""

    func_name: str
    task_name: str | None = None
    func_ref: str | None = None  # blob hash of the cloudpickled function; None: a registered tool
    tool_version: str | None = None
    dependencies: list[str]
    inputs: dict[str, Any]
    resources: dict[str, Any]
    retries: int = 0
    timeout: float | None = None


class RunSubmittedData(_Payload):
    name: str
    tasks: dict[str, TaskSpecData]
    owner: dict[str, Any]


class RunResumedData(_Payload):
    owner: dict[str, Any]
    requeued: list[str]


class RunEndedData(_Payload):
    status: Literal["succeeded", "failed", "cancelled"]
    error: str | None = None
    failed_tasks: list[str] = []


class TaskQueuedData(_Payload):
    task_id: str
    attempt: int


class TaskStartedData(_Payload):
    task_id: str
    attempt: int
    worker: dict[str, Any] = {}


class TaskSucceededData(_Payload):
    task_id: str
    attempt: int
    duration_s: float
    result: Any = None
    result_ref: dict[str, Any] | None = None


class TaskRetryingData(_Payload):
    task_id: str
    attempt: int
    error: str
    traceback: str | None = None
    delay_s: float


class TaskFailedData(_Payload):
    task_id: str
    attempt: int
    error: str
    traceback: str | None = None
    duration_s: float | None = None


class TaskCancelledData(_Payload):
    task_id: str
    reason: str


class TaskSkippedData(_Payload):
    task_id: str
    reason: str
    upstream: str


class ToolRegisteredData(_Payload):
    name: str
    version: str
    source: str
    meta: dict[str, Any]
    digest: str


class ToolRemovedData(_Payload):
    name: str
    reason: str


EVENT_MODELS: dict[str, type[BaseModel]] = {
    RUN_SUBMITTED: RunSubmittedData,
    RUN_RESUMED: RunResumedData,
    RUN_SUCCEEDED: RunEndedData,
    RUN_FAILED: RunEndedData,
    RUN_CANCELLED: RunEndedData,
    TASK_QUEUED: TaskQueuedData,
    TASK_STARTED: TaskStartedData,
    TASK_SUCCEEDED: TaskSucceededData,
    TASK_RETRYING: TaskRetryingData,
    TASK_FAILED: TaskFailedData,
    TASK_CANCELLED: TaskCancelledData,
    TASK_SKIPPED: TaskSkippedData,
    TOOL_REGISTERED: ToolRegisteredData,
    TOOL_REMOVED: ToolRemovedData,
}


def validate_event(type_: str, data: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``data`` does not match the model of event ``type_``.

    Event types that Maze does not know (a plugin's own) are accepted as they are."""
    model = EVENT_MODELS.get(type_)
    if model is not None:
        model.model_validate(data)
