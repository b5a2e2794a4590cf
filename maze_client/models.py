"""Typed results of the SDK: plain dataclasses built from the server's JSON.

Every model keeps the JSON it came from in ``raw`` and still answers ``model["key"]`` and
``model.get("key")``, so code written against the original SDK's dicts (``result["data"]["summary"]``)
keeps working. Unknown keys are ignored, missing ones become None, so a newer server does not
break an older SDK.

The field names come from the server's own response shapes (``maze_core.api_models``, pydantic
only): each model names its shape (``_shape``), the keys each of its fields is read from (``_reads``:
the shape's names first, then older spellings) and the shape's fields it leaves in ``raw`` only
(``_raw_only``); tests/test_client_shapes.py checks that the two never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from maze_core import api_models as _shapes
from maze_core import state as _state

__all__ = [
    "ClusterInfo",
    "Event",
    "GPUInfo",
    "Health",
    "NodeInfo",
    "Run",
    "RunSummary",
    "TaskResult",
    "TaskSummary",
    "Tool",
    "RUN_FINAL_STATUSES",
    "TASK_FINAL_STATUSES",
]

# Run and task statuses that never change again. The server speaks the engine's words
# (succeeded, failed, cancelled, skipped); the original SDK's words (finished, CANCELLED) are accepted too.
# The engine's sets come from maze_core.state (light: no Ray, no FastAPI); the aliases are the original SDK's.
_SEED_ALIASES = frozenset({"finished", "canceled"})
RUN_FINAL_STATUSES = _state.RUN_FINISHED | _SEED_ALIASES
TASK_FINAL_STATUSES = _state.TERMINAL | _SEED_ALIASES | {"success"}
_SUCCESS = frozenset({_state.SUCCEEDED, "finished", "success"})


def _norm(status: Any) -> str | None:
    return status.lower() if isinstance(status, str) else None


def _first(data: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in data and data[key] is not None:
            return data[key]
    return default


def _time(value: Any) -> datetime | None:
    """A timestamp (epoch seconds or ISO 8601 text) as an aware datetime, else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


class _DictAccess:
    """``model["key"]`` / ``model.get("key")`` read the server's JSON, then the attributes."""

    raw: dict[str, Any]
    # The server's shape of this JSON, where it declares one (see the module's docstring).
    _shape: ClassVar[type[_shapes.BaseModel] | None] = None
    _reads: ClassVar[dict[str, tuple[str, ...]]] = {}
    _raw_only: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def _read(cls, data: Mapping[str, Any], name: str, default: Any = None) -> Any:
        """The first of the keys field ``name`` is read from that ``data`` holds (not None)."""
        return _first(data, *cls._reads[name], default=default)

    def __getitem__(self, key: str) -> Any:
        if key in self.raw:
            return self.raw[key]
        if isinstance(key, str) and key in getattr(self, "__dataclass_fields__", {}) and key != "raw":
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def keys(self) -> Iterator[str]:
        return iter(self.raw)

    def to_dict(self) -> dict[str, Any]:
        """The JSON the model was built from."""
        return dict(self.raw)


@dataclass
class TaskResult(_DictAccess):
    """``POST /get/``: a task's state and, once it has one, its result or error.

    ``data`` holds the task's return value when it succeeded (as in the original SDK: ``result["data"]``)."""

    run_id: str
    task_id: str
    task_status: str
    data: Any = None
    error: str | None = None
    status: str = "success"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    _shape = _shapes.TaskResult
    _reads = {"run_id": ("run_id",), "task_id": ("task_id",), "task_status": ("task_status", "state"),
              "data": ("data",), "error": ("error",), "status": ("status",)}
    _raw_only = frozenset({"maze_status", "attempt", "duration_s", "traceback"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run_id: str = "", task_id: str = "") -> TaskResult:
        return cls(run_id=cls._read(data, "run_id", run_id), task_id=cls._read(data, "task_id", task_id),
                   task_status=cls._read(data, "task_status", "unknown"),
                   data=cls._read(data, "data"), error=cls._read(data, "error"),
                   status=cls._read(data, "status", "success"), raw=dict(data))

    @property
    def done(self) -> bool:
        """The task is in a final state (succeeded, failed, cancelled or skipped)."""
        return _norm(self.task_status) in TASK_FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return _norm(self.task_status) in _SUCCESS

    @property
    def failed(self) -> bool:
        return _norm(self.task_status) == "failed"


@dataclass
class TaskSummary(_DictAccess):
    """One task in a run summary."""

    task_id: str
    status: str
    name: str | None = None
    func_name: str | None = None
    attempt: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    _shape = _shapes.Task
    _reads = {"task_id": ("task_id", "id"), "status": ("status", "task_status", "state"),
              "name": ("task_name", "name"), "func_name": ("func_name", "tool"), "attempt": ("attempt",),
              "started_at": ("started_at", "start_time"), "finished_at": ("finished_at", "ended_at", "end_time"),
              "duration": ("duration", "duration_s", "elapsed"), "error": ("error",)}
    _raw_only = frozenset({"queued_at", "worker"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], task_id: str = "") -> TaskSummary:
        started = _time(cls._read(data, "started_at"))
        finished = _time(cls._read(data, "finished_at"))
        duration = cls._read(data, "duration")
        if duration is None and started and finished:
            duration = (finished - started).total_seconds()
        return cls(task_id=cls._read(data, "task_id", task_id),
                   status=cls._read(data, "status", "unknown"),
                   name=cls._read(data, "name"), func_name=cls._read(data, "func_name"),
                   attempt=cls._read(data, "attempt"), started_at=started, finished_at=finished,
                   duration=float(duration) if isinstance(duration, int | float) else None,
                   error=cls._read(data, "error"), raw=dict(data))

    @property
    def done(self) -> bool:
        return _norm(self.status) in TASK_FINAL_STATUSES


def _tasks_from(value: Any) -> list[TaskSummary]:
    if isinstance(value, Mapping):
        return [TaskSummary.from_dict(item if isinstance(item, Mapping) else {"status": item}, task_id=key)
                for key, item in value.items()]
    if isinstance(value, list):
        return [TaskSummary.from_dict(item) for item in value if isinstance(item, Mapping)]
    return []


@dataclass
class Run(_DictAccess):
    """A run: one submitted workflow (``GET /runs/{run_id}``, items of ``GET /runs``)."""

    run_id: str
    status: str
    name: str = ""
    created_at: datetime | None = None
    finished_at: datetime | None = None
    task_counts: dict[str, int] = field(default_factory=dict)
    tasks: list[TaskSummary] = field(default_factory=list)
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    _shape = _shapes.Run
    _reads = {"run_id": ("run_id", "id"), "status": ("status", "state"), "name": ("name", "workflow_name"),
              "created_at": ("created_at", "submitted_at", "started_at"),
              "finished_at": ("finished_at", "ended_at"), "task_counts": ("task_counts", "counts"),
              "tasks": ("tasks",), "error": ("error",)}
    _raw_only = frozenset({"owner", "updated_at", "tasks_total", "destroyed"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Run:
        counts = cls._read(data, "task_counts")
        tasks = _tasks_from(cls._read(data, "tasks"))
        if not isinstance(counts, Mapping):
            counts = {}
            for task in tasks:
                counts[task.status] = counts.get(task.status, 0) + 1
        return cls(run_id=cls._read(data, "run_id", ""), status=cls._read(data, "status", "unknown"),
                   name=cls._read(data, "name", ""),
                   created_at=_time(cls._read(data, "created_at")),
                   finished_at=_time(cls._read(data, "finished_at")),
                   task_counts={str(k): int(v) for k, v in counts.items() if isinstance(v, int)},
                   tasks=tasks, error=cls._read(data, "error"), raw=dict(data))

    @property
    def id(self) -> str:
        return self.run_id

    @property
    def finished(self) -> bool:
        """The run reached a final state (succeeded, failed or cancelled)."""
        return _norm(self.status) in RUN_FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return _norm(self.status) in _SUCCESS

    @property
    def duration(self) -> float | None:
        if self.created_at and self.finished_at:
            return (self.finished_at - self.created_at).total_seconds()
        return None


@dataclass
class RunSummary(_DictAccess):
    """``GET /runs/{run_id}/summary``: the run's status and every task's status and timing."""

    run_id: str
    status: str
    tasks: list[TaskSummary] = field(default_factory=list)
    name: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    _shape = _shapes.RunSummary
    _reads = {"run_id": ("run_id", "id"), "status": ("run_status", "status", "state"), "tasks": ("tasks",),
              "name": ("name",)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run_id: str = "") -> RunSummary:
        return cls(run_id=cls._read(data, "run_id", run_id), status=cls._read(data, "status", "unknown"),
                   tasks=_tasks_from(cls._read(data, "tasks")), name=cls._read(data, "name", ""),
                   raw=dict(data))

    @property
    def finished(self) -> bool:
        return _norm(self.status) in RUN_FINAL_STATUSES

    @property
    def counts(self) -> dict[str, int]:
        """Number of tasks per status."""
        out: dict[str, int] = {}
        for task in self.tasks:
            out[task.status] = out.get(task.status, 0) + 1
        return out

    def task(self, task_id: str) -> TaskSummary:
        for item in self.tasks:
            if item.task_id == task_id:
                return item
        raise KeyError(task_id)


@dataclass
class Tool(_DictAccess):
    """A tool the server knows (``GET /tools``)."""

    name: str
    description: str = ""
    type: str | None = None
    version: str | None = None
    author: str | None = None
    usage_notes: str | None = None
    source: str | None = None
    input_parameters: dict[str, Any] = field(default_factory=dict)
    output_parameters: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    _shape = _shapes.Tool
    _reads = {"name": ("name", "tool_name"), "description": ("description",),
              "type": ("type", "tool_type", "task_type"), "version": ("version",), "author": ("author",),
              "usage_notes": ("usage_notes",), "source": ("source", "origin"),
              "input_parameters": ("input_parameters",), "output_parameters": ("output_parameters",),
              "resources": ("resources",)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tool:
        resources = cls._read(data, "resources")
        resources = resources if isinstance(resources, Mapping) else {}
        kind = cls._read(data, "type") or (resources or {}).get("type")
        version = cls._read(data, "version")
        return cls(name=cls._read(data, "name", ""),
                   description=cls._read(data, "description", "") or "",
                   type=kind, version=str(version) if version is not None else None,
                   author=cls._read(data, "author"), usage_notes=cls._read(data, "usage_notes"),
                   source=cls._read(data, "source"),
                   input_parameters=dict(cls._read(data, "input_parameters") or {}),
                   output_parameters=dict(cls._read(data, "output_parameters") or {}),
                   resources=dict(resources or {}), raw=dict(data))


@dataclass
class GPUInfo(_DictAccess):
    """One GPU of a node; memory in MB."""

    index: int | None = None
    name: str | None = None
    memory_total: float | None = None
    memory_used: float | None = None
    memory_free: float | None = None
    utilization: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GPUInfo:
        total = _first(data, "memory_mb", "memory_total", "memory_total_mb", "gpu_mem")
        used = _first(data, "used_mb", "memory_used", "memory_used_mb")
        free = _first(data, "free_mb", "memory_free", "memory_free_mb")
        if free is None and isinstance(total, int | float) and isinstance(used, int | float):
            free = max(total - used, 0)
        return cls(index=_first(data, "index", "id"), name=data.get("name"), memory_total=total,
                   memory_used=used, memory_free=free, utilization=_first(data, "utilization", "util"),
                   raw=dict(data))


@dataclass
class NodeInfo(_DictAccess):
    """One node of the cluster: its resources and GPUs."""

    node_id: str = ""
    address: str | None = None
    alive: bool = True
    resources: dict[str, Any] = field(default_factory=dict)
    available: bool = False
    gpus: list[GPUInfo] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeInfo:
        gpus = [GPUInfo.from_dict(g) for g in data.get("gpus") or () if isinstance(g, Mapping)]
        available = data.get("available")
        return cls(node_id=str(_first(data, "node_id", "id", "name", default="")),
                   address=_first(data, "address", "ip", "host"), alive=bool(data.get("alive", True)),
                   resources=dict(data.get("resources") or {}),
                   available=bool(gpus) if available is None else bool(available),
                   gpus=gpus, raw=dict(data))


@dataclass
class ClusterInfo(_DictAccess):
    """``GET /cluster``: the executor's nodes and their GPUs. ``available``: any GPU at all."""

    available: bool = False
    executor: str | None = None
    nodes: list[NodeInfo] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterInfo:
        nodes = [NodeInfo.from_dict(n) for n in data.get("nodes") or () if isinstance(n, Mapping)]
        if not nodes and isinstance(data.get("gpus") or data.get("devices"), list):  # one node
            nodes = [NodeInfo.from_dict({**data, "gpus": data.get("gpus") or data.get("devices")})]
        available = data.get("available")
        return cls(available=any(n.available for n in nodes) if available is None else bool(available),
                   executor=_first(data, "executor", "backend"), nodes=nodes, raw=dict(data))

    @property
    def gpus(self) -> list[GPUInfo]:
        """Every GPU of every node."""
        return [gpu for node in self.nodes for gpu in node.gpus]

    @property
    def devices(self) -> list[GPUInfo]:  # the name the original client used
        return self.gpus


@dataclass
class Health(_DictAccess):
    """``GET /health``: ``status`` ("ok" when healthy), server ``version`` and counts."""

    status: str
    version: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    _shape = _shapes.Health
    _reads = {"status": ("status",), "version": ("version",), "counts": ("counts",)}
    _raw_only = frozenset({"engine", "executor", "uptime_s"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Health:
        counts = cls._read(data, "counts")
        if not isinstance(counts, Mapping):
            counts = {}
        return cls(status=cls._read(data, "status", "unknown"), version=cls._read(data, "version"),
                   counts=dict(counts), raw=dict(data))

    @property
    def ok(self) -> bool:
        return _norm(self.status) in {"ok", "healthy", "success", "up"}


@dataclass
class Event(_DictAccess):
    """One event of a run's log (``GET /runs/{run_id}/events``)."""

    seq: int
    type: str
    ts: float | str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        payload = data.get("data") if isinstance(data.get("data"), Mapping) else {}
        return cls(seq=int(_first(data, "seq", "id", default=0)), type=_first(data, "type", default=""),
                   ts=data.get("ts"), data=dict(payload or {}),
                   task_id=_first(data, "task_id", default=None) or (payload or {}).get("task_id"),
                   raw=dict(data))
