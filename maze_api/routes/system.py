"""Health and cluster information."""

from __future__ import annotations

import socket
import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from maze_core import __version__
from maze_core import api_models as shapes

from ..auth import Identity
from ..context import ServerContext, engine_state
from ..deps import current_identity, get_ctx, optional_identity
from ..errors import LoggedRoute

router = APIRouter(route_class=LoggedRoute, tags=["system"])


@router.get("/health", summary="Is the server up (no token needed)",
            responses=shapes.responses(ok=shapes.Health))
def health(identity: Identity | None = Depends(optional_identity),
           ctx: ServerContext = Depends(get_ctx)) -> JSONResponse:
    """``{"status": "ok", "version", "engine", "executor", "uptime_s"}``; with a valid token also
    ``counts`` (the caller's runs by status, and registered tools). 503 when the engine stopped."""
    state = engine_state(ctx.engine)
    body: dict[str, Any] = {"status": "ok" if state == "running" else "error", "version": __version__,
                            "engine": state, "executor": getattr(ctx.engine.executor, "name", None),
                            "uptime_s": round(time.time() - ctx.started_at, 3)}
    if identity is not None:
        runs = ctx.count_runs(identity)
        body["counts"] = {"runs": runs, "runs_total": sum(runs.values()), "tools": len(ctx.engine.registry)}
    return JSONResponse(body, status_code=200 if state == "running" else 503)


def _gpu(raw: Any, index: int) -> dict[str, Any]:
    gpu = dict(raw) if isinstance(raw, dict) else {}
    gpu.setdefault("index", index)
    total, used = gpu.get("memory_mb"), gpu.get("used_mb")
    gpu.setdefault("memory_mb", None)
    gpu.setdefault("used_mb", None)
    if isinstance(total, int | float) and isinstance(used, int | float):
        gpu["free_mb"] = max(total - used, 0)
    return gpu


def _count(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        return len(value)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _node(raw: dict[str, Any], fallback: dict[str, Any]) -> dict[str, Any]:
    cap = raw.get("capacity") if isinstance(raw.get("capacity"), dict) else fallback
    gpus = raw.get("gpus")
    if not isinstance(gpus, list):
        gpus = [{"index": i} for i in range(int(cap.get("gpu") or 0))]
    free = raw.get("free", raw.get("available"))
    alive = bool(raw.get("alive", True))
    address = raw.get("address") or (socket.gethostname() if raw.get("node_id") == "local" else None)
    extra = {k: v for k, v in raw.items() if k not in ("capacity", "available")}   # executor-specific
    node = {**extra, "node_id": raw.get("node_id"), "address": address,
            "alive": alive, "cpu": raw.get("cpu", cap.get("cpu")), "mem": raw.get("mem", cap.get("mem")),
            "gpus": [_gpu(g, i) for i, g in enumerate(gpus)],
            "running": _count(raw.get("running", raw.get("running_gpu_tasks"))),
            "queued": _count(raw.get("queued")), "free": free if isinstance(free, dict) else None}
    # as the original client's get_gpu_info: "available" says whether GPUs can be used on this node
    node["available"] = alive and bool(node["gpus"])
    return node


def cluster_view(described: dict[str, Any], capacity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nodes with ``{"available": bool, "gpus": [...]}`` from ``Executor.describe()``, whatever
    its shape: the Ray executor lists nodes with their GPUs; an executor that lists none is shown
    as one node, this host, with its capacity."""
    capacity = dict(described.get("capacity") or capacity or {})
    raw_nodes = [n for n in described.get("nodes") or [] if isinstance(n, dict)]
    if raw_nodes:   # a lone node may take the executor's capacity; several have their own
        nodes = [_node(raw, capacity if len(raw_nodes) == 1 else {}) for raw in raw_nodes]
    else:
        nodes = [_node({"node_id": "local", "running": described.get("running")}, capacity)]
    return {"executor": described.get("executor"), "capacity": capacity, "nodes": nodes,
            "available": any(n["available"] for n in nodes),
            "gpus": sum(len(n["gpus"]) for n in nodes if n["alive"]),
            "alive_nodes": sum(1 for n in nodes if n["alive"])}


@router.get("/cluster", summary="Nodes and GPUs of the executor", responses=shapes.responses())
def cluster(identity: Identity = Depends(current_identity),
            ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """``{"executor", "capacity", "nodes": [{"node_id", "address", "alive", "available", "cpu",
    "mem", "gpus": [{"index", "memory_mb", "used_mb", "free_mb"}], "running", "queued", "free"}],
    "available", "gpus", "alive_nodes"}``. ``available`` (per node and overall): GPUs can be
    used; ``running``/``queued`` count tasks; ``free`` is what the node has left, when known."""
    executor = ctx.engine.executor
    return cluster_view(executor.describe(), executor.capacity())
