"""The shapes of the server's JSON answers, as pydantic models that need nothing but pydantic, so
that the server (``maze_api``, for its OpenAPI document) and the SDK can share them.

The server declares them as documentation (``responses=``), never as ``response_model``: its
answers stay exactly what the routes return, and every model allows extra fields (a newer server
may add some). ``ErrorBody`` is every error answer: ``{"detail": ...}`` (a 422 for an invalid
workflow adds ``problems``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# What each status means for this API, as the OpenAPI document words it.
ERROR_STATUSES = {
    400: "Malformed request or refused action (see detail)",
    401: "Missing or wrong token",
    403: "Not allowed: an admin route, or a browser page on a server without tokens",
    404: "Unknown run, task, file or tool (or a run of another owner)",
    409: "Conflict: it exists already",
    413: "Request body over the server's limit",
    422: "Invalid parameters, body or workflow",
    429: "Too many event streams open for this token",
    503: "The server is starting or stopping, or its engine is not available",
}
# Every route that needs a token can answer these (body limit, token, engine state, parameters).
COMMON = (401, 403, 413, 422, 503)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(_Open):
    detail: Any


class Submitted(_Open):
    status: str
    msg: str
    run_id: str


class TaskResult(_Open):
    status: str
    run_id: str
    task_id: str
    task_status: str
    maze_status: str
    attempt: int | None = None
    duration_s: float | None = None
    data: Any = None
    error: str | None = None
    traceback: str | None = None


class Run(_Open):
    run_id: str
    name: str | None = None
    status: str | None = None
    owner: str | None = None
    created_at: float | str | None = None
    updated_at: float | str | None = None
    finished_at: float | str | None = None
    tasks_total: int | None = None
    error: str | None = None
    task_counts: dict[str, int] | None = None
    destroyed: bool | None = None


class Task(_Open):
    task_id: str
    name: str | None = None
    func_name: str | None = None
    task_name: str | None = None
    status: str | None = None
    task_status: str | None = None
    attempt: int | None = None
    queued_at: float | str | None = None
    started_at: float | str | None = None
    finished_at: float | str | None = None
    duration_s: float | None = None
    error: str | None = None
    worker: Any = None


class RunSummary(_Open):
    status: str
    run_id: str
    run_status: str | None = None
    tasks: list[Task]


class RunList(_Open):
    runs: list[Run]
    total: int
    limit: int
    offset: int


class Cancelled(_Open):
    status: str
    msg: str
    run_id: str
    cancelled: Any = None


class Done(_Open):
    status: str
    msg: str | None = None
    run_id: str | None = None


class Tool(_Open):
    name: str
    version: str | None = None
    source: str | None = None
    description: str = ""
    type: str | None = None
    resources: dict[str, Any] = {}
    input_parameters: dict[str, Any] = {}
    output_parameters: dict[str, Any] = {}
    author: str | None = None
    usage_notes: str | None = None
    tool_type: str | None = None
    tool_name: str | None = None


class ToolList(_Open):
    status: str
    tools: list[Tool]


class ToolUploaded(_Open):
    status: str
    msg: str
    tool_name: str
    tasks: list[Any]
    metadata: dict[str, Any]


class ToolDeleted(_Open):
    status: str
    msg: str
    tool_name: str
    removed: list[Any]


class ToolsReloaded(_Open):
    status: str
    registered: Any = None
    updated: Any = None
    removed: Any = None
    unchanged: Any = None
    packages: Any = None
    problems: Any = None


class Health(_Open):
    status: str
    version: str | None = None
    engine: str | None = None
    executor: str | None = None
    uptime_s: float | None = None
    counts: dict[str, Any] | None = None


class EventPageBody(_Open):
    events: list[dict[str, Any]]
    last_seq: int
    more: bool
    finished: bool


def responses(*codes: int, ok: type[BaseModel] | None = None, common: bool = True,
              ok_status: int = 200) -> dict[int | str, Any]:
    """The ``responses=`` of a route: ``ok`` documents its ``ok_status`` (200) answer, and each error
    status (the ``COMMON`` ones unless ``common=False``, plus ``codes``) is an ``ErrorBody``."""
    out: dict[int | str, Any] = {}
    if ok is not None:
        out[ok_status] = {"model": ok}
    for code in sorted(set(codes) | (set(COMMON) if common else set())):
        out[code] = {"model": ErrorBody, "description": ERROR_STATUSES[code]}
    return out
