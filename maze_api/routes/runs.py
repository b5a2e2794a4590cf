"""Workflows and runs (the original Maze server API and beyond): submit, results, summary, listing, cancel, download, destroy."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from maze_core import api_models as shapes
from maze_core import events as ev
from maze_core import queries, results
from maze_core.errors import NotFoundError, RunStateError
from maze_core.events import NewEvent
from maze_core.logging import get_logger
from maze_core.state import CANCELLED, FAILED, RUN_STATUSES, SKIPPED, SUCCEEDED

from ..archive import CHUNK, iter_files, safe_extract, write_zip
from ..auth import Identity
from ..context import INT_MAX, ServerContext, worker_view
from ..deps import current_identity, get_ctx
from ..errors import BadRequest, LoggedRoute

log = get_logger("maze.api")
router = APIRouter(route_class=LoggedRoute)

# the task_status words of the original Maze server API and SDK; "maze_status" keeps the precise one
SEED_STATUS = {"pending": "pending", "queued": "pending", "running": "running", "retrying": "running",
               "succeeded": "finished", "failed": "failed", "cancelled": "CANCELLED",
               "skipped": "CANCELLED"}

MULTIPART_SUBMIT = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["workflow_payload"],
    "properties": {
        "workflow_payload": {"type": "string", "format": "binary",
                             "description": 'JSON: {"name": ..., "tasks": {"t1": {"func_name", '
                                            '"serialized_func", "dependencies", "inputs", ...}}} '
                                            "(DAG.to_wire); a file or a plain field. serialized_func: "
                                            "base64 of cloudpickle.dumps(function), with or without "
                                            "@task (a plain function is named func_name), or empty "
                                            "to run the server's tool func_name"},
        "project_archive": {"type": "string", "format": "binary",
                            "description": "ZIP of the project, extracted into the run folder"},
        "name": {"type": "string", "description": "run name (default: the workflow's name)"}}}}}}}


class TaskQuery(BaseModel):
    run_id: str = Field(min_length=1, max_length=200)
    task_id: str = Field(min_length=1, max_length=200)


class RunQuery(BaseModel):
    run_id: str = Field(min_length=1, max_length=200)


def run_view(ctx: ServerContext, row: dict[str, Any], detail: bool = True) -> dict[str, Any]:
    view = {"run_id": row["run_id"], "name": row.get("name"), "status": row.get("status"),
            "owner": row.get("owner"), "created_at": row.get("created_at"),
            "updated_at": row.get("updated_at"), "finished_at": row.get("finished_at"),
            "tasks_total": row.get("tasks_total"), "error": row.get("error")}
    if detail:
        view["task_counts"] = row.get("task_counts") or {}
        destroyed = ctx.destroyed(row["run_id"])
        view["destroyed"] = destroyed is not None
        if destroyed:
            view.update(destroyed)
    return view


def task_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"task_id": row["task_id"], "name": row.get("task_name") or row.get("func_name"),
            "func_name": row.get("func_name"), "task_name": row.get("task_name"),
            "status": row.get("status"), "task_status": SEED_STATUS.get(row.get("status"), row.get("status")),
            "attempt": row.get("attempt"), "queued_at": row.get("queued_at"),
            "started_at": row.get("started_at"), "finished_at": row.get("finished_at"),
            "duration_s": row.get("duration_s"), "error": row.get("error"),
            "worker": worker_view(row.get("worker"))}


# ---------------------------------------------------------------------------- submit
@router.post("/submit_workflow/", tags=["runs"], openapi_extra=MULTIPART_SUBMIT,
             responses=shapes.responses(400, ok=shapes.Submitted),
             summary="Submit a workflow (DAG payload + project archive)")
async def submit_workflow(request: Request, identity: Identity = Depends(current_identity),
                          ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """Validate the workflow, extract the project archive into a fresh run folder, and start the
    run. Submitting runs the workflow's code on the server: only give tokens to people you trust
    with that. Returns ``{"status": "success", "msg", "run_id"}``; 400 for a malformed request or
    archive, 413 over the size limits, 422 for an invalid workflow."""
    form = await request.form(max_files=4, max_fields=16, max_part_size=ctx.max_body)
    try:
        payload = form.get("workflow_payload")
        archive = form.get("project_archive")
        name = form.get("name")
        if payload is None:
            raise BadRequest("missing form field 'workflow_payload' (the workflow as JSON)")
        raw = await payload.read() if isinstance(payload, UploadFile) else payload.encode("utf-8")
        if name is not None and not isinstance(name, str):
            raise BadRequest("form field 'name' must be text")
        archive_file = None
        if isinstance(archive, UploadFile):
            archive_file = archive.file
        elif archive:
            raise BadRequest("form field 'project_archive' must be a file (a ZIP archive)")
        return await run_in_threadpool(_submit, ctx, identity, raw, archive_file, name)
    finally:
        await form.close()


def _submit(ctx: ServerContext, identity: Identity, raw: bytes, archive: IO[bytes] | None,
            name: str | None) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"workflow_payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("workflow_payload must be a JSON object with a 'tasks' object")
    sandbox = ctx.new_sandbox()
    try:
        files = 0
        if archive is not None:
            archive.seek(0, 2)
            if archive.tell() > 0:
                archive.seek(0)
                files = safe_extract(archive, sandbox, ctx.archive_limits).files
        dag = ctx.load_dag(payload, sandbox)
        run_id = ctx.engine.submit(dag, name=name if name else dag.name, actor=identity.name,
                                   workdir=str(sandbox))
    except BaseException:
        ctx.remove_tree(sandbox)
        raise
    ctx.remember_workdir(run_id, sandbox)
    log.info("workflow submitted", run_id=run_id, owner=identity.name, name=name or dag.name,
             tasks=len(dag), files=files)
    return {"status": "success", "msg": "Workflow submitted successfully.", "run_id": run_id}


# ---------------------------------------------------------------------------- results
@router.post("/get/", tags=["runs"], summary="One task's status and result or error",
             responses=shapes.responses(400, 404, ok=shapes.TaskResult))
def get_task_result(query: TaskQuery, identity: Identity = Depends(current_identity),
                    ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """``{"status": "success", "task_status": "pending|running|finished|failed|CANCELLED", "data"
    (finished) | "error" (failed, cancelled)}``, plus ``maze_status`` (the precise state: skipped
    tasks are ``CANCELLED`` in task_status words), ``attempt`` and ``duration_s``."""
    ctx.run_row(identity, query.run_id)
    row = queries.task_row(ctx.store, query.run_id, query.task_id, run_checked=True)
    status = row["status"]
    out: dict[str, Any] = {"status": "success", "run_id": query.run_id, "task_id": query.task_id,
                           "task_status": SEED_STATUS.get(status, status), "maze_status": status,
                           "attempt": row["attempt"], "duration_s": row["duration_s"]}
    if status == SUCCEEDED:
        missing = object()
        data = queries.stored_result(ctx.store, query.run_id, query.task_id, results.public, missing)
        if data is not missing:
            out["data"] = data
    elif status == FAILED:
        failure = queries.task_failure(ctx.store, query.run_id, query.task_id, row)
        out["error"] = failure.error
        out["traceback"] = failure.traceback
    elif status in (CANCELLED, SKIPPED):
        out["error"] = row["error"]
    return out


@router.get("/runs/{run_id}/summary", tags=["runs"], summary="A run with every task",
            responses=shapes.responses(404, ok=shapes.RunSummary))
def run_summary(run_id: str, identity: Identity = Depends(current_identity),
                ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """The run (``run_status``, owner, times, error, ``task_counts``) and each task's status, name,
    attempts and duration."""
    row = ctx.run_row(identity, run_id)
    view = run_view(ctx, row)
    view["run_status"] = view.pop("status")
    return {"status": "success", **view, "tasks": [task_view(t) for t in ctx.store.list_tasks(run_id)]}


@router.get("/runs", tags=["runs"], summary="Runs, newest first, filtered and paginated",
            responses=shapes.responses(400, ok=shapes.RunList))
def list_runs(status: str | None = Query(None, description="running, succeeded, failed or cancelled"),
              name: str | None = Query(None, max_length=200, description="runs whose name contains this"),
              limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=INT_MAX),
              identity: Identity = Depends(current_identity),
              ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """The caller's runs (an admin sees every run): ``{"runs", "total", "limit", "offset"}``."""
    if status is not None and status not in RUN_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    rows, total = ctx.list_runs(identity, status, name, limit, offset)
    # ctx.list_runs filters by owner itself when the store's list_runs takes no ``owner``; a store
    # that takes one but ignores it breaks its contract, and still shows no run of another token
    rows = [r for r in rows if ctx.may_see(identity, r)]
    return {"runs": [run_view(ctx, r, detail=False) for r in rows], "total": total, "limit": limit,
            "offset": offset}


@router.get("/runs/{run_id}", tags=["runs"], summary="One run", responses=shapes.responses(404, ok=shapes.Run))
def get_run(run_id: str, identity: Identity = Depends(current_identity),
            ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    return run_view(ctx, ctx.run_row(identity, run_id))


# ---------------------------------------------------------------------------- cancel
@router.post("/runs/{run_id}/tasks/{task_id}/cancel", tags=["runs"], summary="Cancel one task",
             responses=shapes.responses(400, 404, ok=shapes.Cancelled))
def cancel_task(run_id: str, task_id: str, identity: Identity = Depends(current_identity),
                ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """Marks the task ``CANCELLED`` and skips what depends on it; a running body is stopped
    best-effort (the Ray executor cancels it; a thread of the local executor runs on, its result
    dropped). 404 for an unknown run or task (also once the run has finished); 400 when the task
    has already finished."""
    ctx.run_row(identity, run_id)
    if not any(t["task_id"] == task_id for t in ctx.store.list_tasks(run_id)):
        raise NotFoundError(f"run {run_id} has no task {task_id!r}")
    cancelled = ctx.engine.cancel(run_id, task_id, reason=f"cancelled by {identity.name}")
    log.info("task cancelled", run_id=run_id, task_id=task_id, by=identity.name)
    return {"status": "success", "msg": "Task cancelled.", "run_id": run_id, "task_id": task_id,
            "cancelled": cancelled}


@router.post("/runs/{run_id}/cancel", tags=["runs"], summary="Cancel every unfinished task of a run",
             responses=shapes.responses(400, 404, ok=shapes.Cancelled))
def cancel_run(run_id: str, identity: Identity = Depends(current_identity),
               ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    ctx.run_row(identity, run_id)
    cancelled = ctx.engine.cancel(run_id, None, reason=f"cancelled by {identity.name}")
    log.info("run cancelled", run_id=run_id, by=identity.name, tasks=len(cancelled))
    return {"status": "success", "msg": "Run cancelled.", "run_id": run_id, "cancelled": cancelled}


# ---------------------------------------------------------------------------- download and destroy
def zip_response(files: list[tuple[str, Path]], filename: str) -> StreamingResponse:
    """A ZIP of ``files`` built in a temporary file, streamed, then deleted."""
    tmp = tempfile.TemporaryFile()
    try:
        count = write_zip(tmp, files)
        size = tmp.tell()
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := tmp.read(CHUNK * 4):
                yield chunk
        finally:
            tmp.close()

    return StreamingResponse(chunks(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(size),
        "X-Maze-Files": str(count)})


@router.get("/runs/{run_id}/download", tags=["runs"], summary="The run folder as a ZIP",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "ZIP of the run folder"},
                       **shapes.responses(404)})
def download_run(run_id: str, identity: Identity = Depends(current_identity),
                 ctx: ServerContext = Depends(get_ctx)) -> StreamingResponse:
    """Every regular file of the run folder (symbolic links are left out)."""
    ctx.run_row(identity, run_id)
    folder = ctx.existing_run_dir(run_id)
    return zip_response(list(iter_files(folder)), f"{run_id}.zip")


@router.post("/runs/destroy", tags=["runs"], summary="Delete a finished run's folder",
             responses=shapes.responses(400, 404, ok=shapes.Done))
def destroy_run(query: RunQuery, identity: Identity = Depends(current_identity),
                ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """Removes the run folder of a run whose tasks have all finished (400 otherwise) and records a
    ``RunDestroyed`` event. The run's record and results stay in the event log, which is
    append-only; its files are gone."""
    run_id = query.run_id
    row = ctx.run_row(identity, run_id)
    unfinished = ctx.active(row)
    if unfinished:
        raise RunStateError(f"run {run_id} is still active ({unfinished} task(s) not finished); cancel "
                            f"it or wait for it to end before destroying it")
    with ctx.run_lock(run_id):   # uploads into the folder wait, then find it destroyed
        if ctx.destroyed(run_id):
            return {"status": "success", "msg": "Run already destroyed.", "run_id": run_id}
        folder = ctx.run_dir(run_id)
        files = size = 0
        if folder is not None and folder.is_dir():
            for _, path in iter_files(folder):
                with contextlib.suppress(OSError):   # removed meanwhile
                    size += path.lstat().st_size
                    files += 1
            ctx.remove_tree(folder)
        stream = ev.run_stream(run_id)
        ctx.engine.record([NewEvent(stream, ev.RUN_DESTROYED, {"files": files, "bytes": size},
                                    identity.name, expected_version=ctx.store.stream_version(stream))])
    log.info("run destroyed", run_id=run_id, by=identity.name, files=files, bytes=size)
    return {"status": "success", "msg": "Run destroyed.", "run_id": run_id}
