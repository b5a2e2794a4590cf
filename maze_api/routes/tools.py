"""Tools (the original Maze server API's /tools routes): list, upload, delete; reload of installed
tool packages."""

from __future__ import annotations

from typing import IO, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from maze_core import api_models as shapes
from maze_core import tools as tool_set
from maze_core.logging import get_logger

from ..auth import Identity
from ..context import ServerContext
from ..deps import current_identity, get_ctx, require_admin
from ..errors import BadRequest, LoggedRoute
from ..tools import UPLOAD_SOURCE, UploadedTools, check_tool_name

log = get_logger("maze.api")
router = APIRouter(route_class=LoggedRoute, tags=["tools"])

TEXT_FIELDS = ("description", "tool_type", "version", "author", "usage_notes")
MULTIPART_TOOL = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["tool_name", "tool_archive"],
    "properties": {
        "tool_name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,63}$"},
        **{f: {"type": "string"} for f in TEXT_FIELDS},
        "tool_archive": {"type": "string", "format": "binary",
                         "description": "ZIP of the tool: .py files defining @task functions"}}}}}}}


def uploaded(ctx: ServerContext) -> UploadedTools:
    return UploadedTools(ctx.tools_root, ctx.engine.registry, ctx.archive_limits, ctx.engine)


@router.get("/tools", summary="Every registered tool", responses=shapes.responses(ok=shapes.ToolList))
def list_tools(identity: Identity = Depends(current_identity),
               ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """``{"status": "success", "tools": [{"name", "description", "type", "version", "author",
    "usage_notes", "source", "tool_name", "resources", "input_parameters", "output_parameters"}]}``.
    ``tool_name`` is the upload a task came with (None for packages and tool folders)."""
    store = uploaded(ctx)
    metadata: dict[str, dict[str, Any]] = {}
    tools = []
    for entry in ctx.engine.registry.list_tasks():
        source = str(entry["source"])
        meta: dict[str, Any] = {}
        if source.startswith(UPLOAD_SOURCE):
            tool_name = source[len(UPLOAD_SOURCE):]
            if tool_name not in metadata:
                metadata[tool_name] = store.metadata(tool_name) or {}
            meta = metadata[tool_name]
        tools.append({**entry, "description": entry["description"] or meta.get("description") or "",
                      "author": meta.get("author"), "usage_notes": meta.get("usage_notes"),
                      "tool_type": meta.get("tool_type"), "tool_name": meta.get("tool_name")})
    return {"status": "success", "tools": tools}


@router.post("/tools/upload", summary="Upload a tool (admin)", status_code=201, openapi_extra=MULTIPART_TOOL,
             responses=shapes.responses(400, 409, ok=shapes.ToolUploaded, ok_status=201))
async def upload_tool(request: Request, identity: Identity = Depends(require_admin),
                      ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """Extracts the archive to ``{project_root}/maze/model_cache/{tool_name}/`` with a
    ``metadata.json``, records the upload (``ToolUploaded``, the archive kept as a blob: a
    restarted server rebuilds a lost folder from it) and registers its ``@task`` functions
    (recorded as ``ToolRegistered`` events): 201 Created. The tool's code runs in the server when it is imported, hence admin only. 409 when
    the tool or one of its task names exists; 422 when it defines no task or fails to import."""
    form = await request.form(max_files=2, max_fields=16, max_part_size=64 * 1024)
    try:
        name = check_tool_name(form.get("tool_name"))
        archive = form.get("tool_archive")
        if not isinstance(archive, UploadFile):
            raise BadRequest("missing file field 'tool_archive' (a ZIP of the tool)")
        fields = {}
        for key in TEXT_FIELDS:
            value = form.get(key)
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"form field {key!r} must be text")
            fields[key] = value or ""
        return await run_in_threadpool(_install, ctx, identity, name, archive.file, fields)
    finally:
        await form.close()


def _install(ctx: ServerContext, identity: Identity, name: str, archive: IO[bytes],
             fields: dict[str, str]) -> dict[str, Any]:
    with ctx.tools_lock:
        metadata = uploaded(ctx).install(name, archive, fields, identity.name)
    log.info("tool uploaded", tool=name, by=identity.name, tasks=metadata["tasks"],
             version=fields.get("version"))
    return {"status": "success", "msg": f"Tool '{name}' uploaded.", "tool_name": name,
            "tasks": metadata["tasks"], "metadata": metadata}


@router.delete("/tools/{tool_name}", summary="Delete an uploaded tool (admin)",
               responses=shapes.responses(400, 404, ok=shapes.ToolDeleted))
def delete_tool(tool_name: str, identity: Identity = Depends(require_admin),
                ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """Unregisters the tool's tasks (``ToolRemoved`` events), records ``ToolDeleted`` and
    deletes its folder (a restarted server does not bring it back). 404 for an
    unknown tool; 400 for a tool that comes from an installed package."""
    with ctx.tools_lock:
        removed = uploaded(ctx).remove(tool_name, actor=identity.name)
    log.info("tool deleted", tool=tool_name, by=identity.name, tasks=removed)
    return {"status": "success", "msg": f"Tool '{tool_name}' deleted.", "tool_name": tool_name,
            "removed": removed}


@router.post("/tools/reload", summary="Reload installed tool packages (admin)",
             responses=shapes.responses(ok=shapes.ToolsReloaded))
def reload_tools(identity: Identity = Depends(require_admin),
                 ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """Picks up tool packages installed, upgraded or uninstalled since the server started (and the
    ``[tools] paths`` folders as they are now), as ``maze tools reload`` does: ``{"status",
    "registered", "updated", "removed", "unchanged"}`` (tool names), ``packages`` (``installed``,
    ``upgraded``, ``uninstalled``, ``failed``) and ``problems``. Each change is recorded as a
    ``ToolRegistered`` / ``ToolRemoved`` event, the whole as one ``ToolsReloaded`` event."""
    with ctx.tools_lock:   # the core's reload, shared with `maze tools reload`
        report = tool_set.reload_tools(ctx.config, ctx.engine.registry, ctx.engine,
                                      actor=identity.name).to_dict()
    log.info("tools reloaded", by=identity.name, registered=report["registered"],
             updated=report["updated"], removed=report["removed"])
    return {"status": "success", **report}
