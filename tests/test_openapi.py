"""The OpenAPI document declares each route's answers: its 200 shape (maze_core.api_models) and
every error status it can give, each as ``{"detail": ...}``."""

from __future__ import annotations

import pytest

from maze_api import create_app
from maze_core.api_models import COMMON
from maze_core.engine import Engine
from maze_core.registry import ToolRegistry
from tests.conftest import make_config

# Beyond COMMON (401/403/413/422/503), what each route may answer (tools routes: not declared yet).
EXPECTED = {
    ("post", "/submit_workflow/"): {400},
    ("post", "/get/"): {400, 404},
    ("get", "/runs/{run_id}/summary"): {404},
    ("get", "/runs"): {400},
    ("get", "/runs/{run_id}"): {404},
    ("post", "/runs/{run_id}/tasks/{task_id}/cancel"): {400, 404},
    ("post", "/runs/{run_id}/cancel"): {400, 404},
    ("get", "/runs/{run_id}/download"): {404},
    ("post", "/runs/destroy"): {400, 404},
    ("get", "/runs/{run_id}/events"): {404},
    ("get", "/runs/{run_id}/events/stream"): {404, 429},
    ("get", "/files/hashes/{run_id}"): {404},
    ("post", "/files/download/{run_id}"): {400, 404},
    ("post", "/files/upload/{run_id}"): {400, 404, 409},
    ("get", "/health"): set(),
    ("get", "/cluster"): set(),
}


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    cfg = make_config(tmp_path_factory.mktemp("openapi"))
    engine = Engine.from_config(cfg, registry=ToolRegistry(), actor="server")
    try:
        yield create_app(cfg, engine).openapi()
    finally:
        engine.store.close()


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED))
def test_route_declares_its_statuses(schema, method, path):
    operation = schema["paths"][path][method]
    declared = {int(code) for code in operation["responses"]}
    assert declared >= EXPECTED[(method, path)] | set(COMMON) | {200}
    for code in declared - {200}:
        content = operation["responses"][str(code)].get("content", {}).get("application/json", {})
        assert content.get("schema", {}).get("$ref", "").endswith("/ErrorBody"), (path, code)


def test_ok_shapes_are_documented(schema):
    get = schema["paths"]["/get/"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert get["$ref"].endswith("/TaskResult")
    body = schema["components"]["schemas"]["TaskResult"]
    assert {"task_status", "maze_status", "data", "traceback"} <= set(body["properties"])
    assert body.get("additionalProperties") is True    # open: the answer is never filtered
