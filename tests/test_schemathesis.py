"""Schemathesis over the server's OpenAPI document: generated requests against every operation of a
real server (local executor, SQLite in a temporary folder, tokens configured) must never get a
server error nor a status code the document does not declare. Bounded and derandomized: a few
examples per operation, the same ones on every run."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error, status_code_conformance  # noqa: E402

from maze_api import create_app  # noqa: E402
from maze_api.testing import logging_restored, serve  # noqa: E402
from maze_core.engine import Engine  # noqa: E402
from maze_core.registry import ToolRegistry  # noqa: E402
from tests.conftest import make_config  # noqa: E402

ADMIN = "alice-secret-token-0123456789"
EXAMPLES = 8   # per operation and mode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("st")
    cfg = make_config(tmp)
    cfg.server.tokens = [f"alice={ADMIN}", "bob=bob-secret-token-0123456789ab"]
    cfg.server.admins = ["alice"]
    cfg.server.sse_heartbeat_s = 0.2
    cfg.logging.level = "WARNING"
    with logging_restored():
        engine = Engine.from_config(cfg, registry=ToolRegistry(), actor="server")
        engine.start()
        try:
            with serve(create_app(cfg, engine)) as url:
                yield url
        finally:
            engine.stop()
            engine.store.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_error_and_only_declared_statuses(server, mode):
    schema = schemathesis.openapi.from_dict(httpx.get(server + "/openapi.json", timeout=10).json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: dict[str, str] = {}
    cases = 0
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(case):
            nonlocal cases
            cases += 1
            case.call_and_validate(base_url=server, headers={"Authorization": f"Bearer {ADMIN}"},
                                   timeout=10, checks=[not_a_server_error, status_code_conformance])

        try:
            check()
        except Exception as exc:   # noqa: BLE001 - every operation's finding is reported together
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:600]}"
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
    assert cases >= len(operations)
