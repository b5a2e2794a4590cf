"""Event types, canonical JSON and the hash chain.

Every change in Maze is an event appended to one log. An event has a global ``seq``, a ``stream``
(``run:<id>``, ``tool:<name>``, ``session:<id>``), a per-stream ``version`` (unique with the stream:
optimistic concurrency), a ``type``, a timestamp ``ts``, an ``actor`` and a JSON ``data`` payload.

``hash = sha256(previous hash | seq | stream | version | type | ts | actor | data)`` chains the log:
editing, dropping or reordering any event breaks every hash after it (``maze events verify``).

The payload of each event type is described by a pydantic model below (``EVENT_MODELS``: every
type Maze appends). The engine builds payloads as plain dicts on its hot path; ``validate_event``
checks one against its model (used by tests, by ``[engine] validate_events = true``, and by
``Engine.record`` for every event handed to it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

GENESIS_HASH = "0" * 64


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept, NaN refused. For digests, where two
    equal values must give the same text whatever their key order."""
    return _CANONICAL.encode(value)


def compact_json(value: Any) -> str:
    """Compact JSON keeping key order (no spaces, UTF-8 kept, NaN refused): how event payloads are
    stored. Key order carries meaning (the tasks of a RunSubmitted are in submission order), and
    ``json.loads`` keeps it, so re-encoding a stored payload gives back the stored text."""
    return _COMPACT.encode(value)


def chain_hash(prev_hash: str, seq: int, stream: str, version: int, type_: str, ts: float, actor: str,
               data_json: str) -> str:
    """Hash of one event, chained to the previous one. ``data_json`` is the stored payload text."""
    return hashlib.sha256(
        f"{prev_hash}|{seq}|{stream}|{version}|{type_}|{ts!r}|{actor}|{data_json}".encode()).hexdigest()


@dataclass(slots=True)
class NewEvent:
    """An event about to be appended. ``expected_version`` (optional) is the stream version the
    writer last saw: the append fails with ``ConcurrencyError`` if another writer moved it."""

    stream: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    actor: str = "system"
    expected_version: int | None = None


class Event(NamedTuple):
    """An event as stored in the log (immutable; a NamedTuple because appends build many)."""

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
        return stream_run_id(self.stream)

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def run_stream(run_id: str) -> str:
    return f"run:{run_id}"


def tool_stream(name: str) -> str:
    return f"tool:{name}"


def stream_run_id(stream: str) -> str | None:
    """The run id of a ``run:<id>`` stream; None for any other stream."""
    return stream[4:] if stream.startswith("run:") else None


TOOLS_STREAM = "tools"   # the stream of tool-set events that name no single tool (ToolsReloaded)
UPLOADS_STREAM = "uploads"   # the stream of uploaded tools: ToolUploaded / ToolDeleted, by tool name


def clean_text(text: str | None) -> str | None:
    """Text safe to store: lone surrogates (from undecodable bytes) become escapes."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------- event type names
RUN_SUBMITTED = "RunSubmitted"
RUN_RESUMED = "RunResumed"
RUN_SUCCEEDED = "RunSucceeded"
RUN_FAILED = "RunFailed"
RUN_CANCELLED = "RunCancelled"
RUN_DESTROYED = "RunDestroyed"      # the server removed a finished run's folder (its record stays)
TASK_QUEUED = "TaskQueued"
TASK_STARTED = "TaskStarted"
TASK_SUCCEEDED = "TaskSucceeded"
TASK_RETRYING = "TaskRetrying"
TASK_FAILED = "TaskFailed"
TASK_CANCELLED = "TaskCancelled"
TASK_SKIPPED = "TaskSkipped"
TOOL_REGISTERED = "ToolRegistered"
TOOL_REMOVED = "ToolRemoved"
TOOLS_RELOADED = "ToolsReloaded"    # one per reload of the tools: what changed, which packages
TOOL_UPLOADED = "ToolUploaded"      # a tool uploaded through the API: its metadata and archive blob
TOOL_DELETED = "ToolDeleted"        # an uploaded tool deleted through the API

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
    driver: dict[str, Any]  # the process driving the run: host, pid, process start time
    workdir: str | None = None  # the run's working directory (a server's sandbox)


class RunResumedData(_Payload):
    driver: dict[str, Any]
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


class RunDestroyedData(_Payload):
    files: int   # regular files removed with the run folder
    bytes: int   # their total size


class PackageChangesData(_Payload):
    """What a reload found among the tool packages (entry-point names)."""

    installed: list[str] = []
    upgraded: list[str] = []
    uninstalled: list[str] = []
    failed: dict[str, str] = {}   # name -> why it failed to load


class ToolsReloadedData(_Payload):
    """The report of one reload: tool names by change, package changes, problems met."""

    registered: list[str] = []
    updated: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    packages: PackageChangesData = PackageChangesData()
    problems: list[str] = []


class ToolUploadedData(_Payload):
    """An uploaded tool as the log keeps it: enough to rebuild its folder (``maze_api.tools``)."""

    name: str                  # the tool name (its folder under the tool root)
    metadata: dict[str, Any]   # the metadata.json the server wrote
    archive: str               # blob hash of the uploaded ZIP
    bytes: int                 # the ZIP's size
    files_digest: str          # sha256 over the extracted files (paths and contents), metadata.json aside


class ToolDeletedData(_Payload):
    name: str
    tasks: list[str] = []      # the task names it unregistered


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
    RUN_DESTROYED: RunDestroyedData,
    TOOLS_RELOADED: ToolsReloadedData,
    TOOL_UPLOADED: ToolUploadedData,
    TOOL_DELETED: ToolDeletedData,
}


def validate_event(type_: str, data: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``data`` does not match the model of event ``type_``.

    Event types that Maze does not know (a plugin's own) are accepted as they are."""
    model = EVENT_MODELS.get(type_)
    if model is not None:
        model.model_validate(data)
