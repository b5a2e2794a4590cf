"""SDK unit tests against ``httpx.MockTransport``: retries, backoff, Retry-After, idempotency,
exception mapping, paging, payloads and archives. No sleeps: the backoff sleep is a recorder."""

from __future__ import annotations

import base64
import email.utils
import io
import json
import subprocess
import sys
import textwrap
import time
import zipfile

import cloudpickle
import httpx
import pytest

import maze_client
from maze_client import MazeClient, exceptions, task
from maze_client._files import safe_extract, zip_project
from maze_client._http import RetryPolicy, parse_retry_after
from maze_client.models import ClusterInfo, Health, Run, RunSummary, TaskResult, Tool

URL = "http://maze.test"


@task
def double(x: int) -> dict:
    return {"y": 2 * x}


class Server:
    """A scripted server: ``handler(request)`` answers; every request is recorded."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    @property
    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def make_client(handler, sleeps: list[float] | None = None, rand: float = 0.0, **kwargs) -> tuple[MazeClient, Server]:
    server = Server(handler)
    client = MazeClient(URL, transport=httpx.MockTransport(server),
                        sleep=(sleeps.append if sleeps is not None else _no_sleep),
                        random_source=lambda: rand, **kwargs)
    return client, server


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected sleep({seconds})")


def sequence(*responses):
    """A handler answering with the given responses (or raising the given exceptions) in turn."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler


RUN_OK = {"run_id": "r1", "status": "succeeded", "name": "wf"}


# ---- exception mapping ------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "cls"), [
    (400, exceptions.MazeBadRequestError),
    (401, exceptions.MazeAuthenticationError),
    (403, exceptions.MazePermissionError),
    (404, exceptions.MazeNotFoundError),
    (409, exceptions.MazeConflictError),
    (413, exceptions.MazePayloadTooLargeError),
    (422, exceptions.MazeBadRequestError),
    (429, exceptions.MazeRateLimitError),
    (500, exceptions.MazeServerError),
    (502, exceptions.MazeServerError),
    (503, exceptions.MazeServerError),
])
def test_each_status_maps_to_one_exception_keeping_status_and_detail(status, cls):
    client, server = make_client(sequence(httpx.Response(status, json={"detail": f"why {status}"})),
                                 max_retries=0)
    with pytest.raises(cls) as info:
        client.get_run("r1")
    err = info.value
    assert type(err) is cls
    assert isinstance(err, exceptions.MazeAPIError)
    assert err.status_code == status
    assert err.detail == f"why {status}"
    assert f"why {status}" in str(err) and str(status) in str(err)
    assert err.method == "GET" and err.url == "/runs/r1"
    assert len(server.requests) == 1


def test_hierarchy_matches_the_issue():
    E = exceptions
    for cls in (E.MazeConnectionError, E.MazeBadRequestError, E.MazeAuthenticationError, E.MazeNotFoundError,
                E.MazeConflictError, E.MazeServerError, E.MazeRateLimitError, E.MazeWaitTimeoutError):
        assert issubclass(cls, E.MazeAPIError)
    assert issubclass(E.MazePayloadTooLargeError, E.MazeBadRequestError)
    assert issubclass(E.MazePermissionError, E.MazeAuthenticationError)
    assert issubclass(E.MazeTimeoutError, E.MazeConnectionError)
    assert issubclass(E.MazeConnectionError, ConnectionError)
    assert issubclass(E.MazeWaitTimeoutError, TimeoutError)


def test_validation_detail_list_is_kept_and_readable():
    detail = [{"loc": ["body", "run_id"], "msg": "Field required", "type": "missing"}]
    client, _ = make_client(sequence(httpx.Response(422, json={"detail": detail})))
    with pytest.raises(exceptions.MazeBadRequestError) as info:
        client.get_task_result("r1", "t1")
    assert info.value.status_code == 422
    assert info.value.detail == detail
    assert "run_id: Field required" in str(info.value)


def test_non_json_error_body_becomes_text_detail():
    client, _ = make_client(sequence(httpx.Response(500, text="<html>boom</html>")))
    with pytest.raises(exceptions.MazeServerError) as info:
        client.health_check()
    assert info.value.detail == "<html>boom</html>"


def test_exceptions_pickle_with_their_fields():
    import pickle
    err = exceptions.error_for_status(429, "slow down", method="GET", url="/runs", retry_after=3.0)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is exceptions.MazeRateLimitError
    assert (back.status_code, back.detail, back.retry_after, back.url) == (429, "slow down", 3.0, "/runs")


# ---- retries and backoff ----------------------------------------------------------------------

@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_idempotent_get_is_retried_on_retryable_status(status):
    sleeps: list[float] = []
    client, server = make_client(sequence(httpx.Response(status), httpx.Response(200, json=RUN_OK)), sleeps)
    run = client.get_run("r1")
    assert run.run_id == "r1" and run.finished
    assert len(server.requests) == 2
    assert sleeps == [0.25]


@pytest.mark.parametrize("status", [400, 401, 404, 409, 500, 501])
def test_other_statuses_are_not_retried(status):
    client, server = make_client(sequence(httpx.Response(status, json={"detail": "x"})), [])
    with pytest.raises(exceptions.MazeAPIError):
        client.get_run("r1")
    assert len(server.requests) == 1


def test_backoff_doubles_up_to_the_cap_then_raises_the_last_error():
    sleeps: list[float] = []
    client, server = make_client(sequence(httpx.Response(503, json={"detail": "busy"})), sleeps,
                                 max_retries=5, backoff_factor=0.5, backoff_max=3.0)
    with pytest.raises(exceptions.MazeServerError) as info:
        client.list_runs()
    assert info.value.status_code == 503 and info.value.detail == "busy"
    assert len(server.requests) == 6
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_shortens_each_wait_by_a_random_fraction():
    sleeps: list[float] = []
    client, server = make_client(sequence(httpx.Response(502)), sleeps, rand=0.5, max_retries=3)
    with pytest.raises(exceptions.MazeServerError):
        client.health_check()
    # jitter 0.5 and rand 0.5: each wait is 75% of 0.25 * 2**n
    assert sleeps == pytest.approx([0.1875, 0.375, 0.75])
    policy = RetryPolicy()
    waits = {round(policy.backoff(2, r / 10), 6) for r in range(10)}
    assert len(waits) == 10 and min(waits) >= 0.5 and max(waits) <= 1.0


def test_retry_after_seconds_is_honoured_instead_of_backoff():
    sleeps: list[float] = []
    client, server = make_client(sequence(httpx.Response(429, headers={"Retry-After": "7"}),
                                          httpx.Response(503, headers={"Retry-After": "1.5"}),
                                          httpx.Response(200, json=RUN_OK)), sleeps)
    assert client.get_run("r1").status == "succeeded"
    assert sleeps == [7.0, 1.5]


def test_retry_after_http_date_is_honoured():
    sleeps: list[float] = []
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    client, _ = make_client(sequence(httpx.Response(503, headers={"Retry-After": when}),
                                     httpx.Response(200, json=RUN_OK)), sleeps)
    client.get_run("r1")
    assert len(sleeps) == 1 and 27 <= sleeps[0] <= 30


def test_retry_after_is_capped_and_unreadable_values_fall_back_to_backoff():
    sleeps: list[float] = []
    client, _ = make_client(sequence(httpx.Response(429, headers={"Retry-After": "3600"}),
                                     httpx.Response(429, headers={"Retry-After": "soon"}),
                                     httpx.Response(200, json=RUN_OK)), sleeps, retry_after_max=10)
    client.get_run("r1")
    assert sleeps == [10.0, 0.5]


def test_rate_limit_error_after_retries_keeps_retry_after():
    sleeps: list[float] = []
    client, server = make_client(sequence(httpx.Response(429, headers={"Retry-After": "2"},
                                                         json={"detail": "slow down"})), sleeps, max_retries=1)
    with pytest.raises(exceptions.MazeRateLimitError) as info:
        client.list_tools()
    assert info.value.retry_after == 2.0 and info.value.detail == "slow down"
    assert sleeps == [2.0] and len(server.requests) == 2


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == pytest.approx(42)
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_post_get_is_idempotent_and_retried():
    sleeps: list[float] = []
    answer = {"status": "success", "task_status": "finished", "data": {"y": 4}}
    client, server = make_client(sequence(httpx.Response(503), httpx.ConnectError("refused"),
                                          httpx.Response(200, json=answer)), sleeps)
    result = client.get_task_result("r1", "t1")
    assert result["data"] == {"y": 4} and result.data == {"y": 4} and result.succeeded
    assert [r.method for r in server.requests] == ["POST"] * 3
    assert json.loads(server.requests[0].content) == {"run_id": "r1", "task_id": "t1"}
    assert sleeps == [0.25, 0.5]


def submit_dag(client: MazeClient) -> str:
    dag = client.new_dag("wf")
    dag.add_task(double, inputs={"x": 1})
    return client.submit_dag(dag)


@pytest.mark.parametrize("call", [
    submit_dag,
    lambda c: c.cancel_task("r1", "t1"),
    lambda c: c.destroy_run("r1"),
    lambda c: c.reload_tools(),
])
@pytest.mark.parametrize("failure", [httpx.Response(503, json={"detail": "busy"}),
                                     httpx.Response(429, headers={"Retry-After": "1"}),
                                     httpx.ConnectError("refused"),
                                     httpx.RemoteProtocolError("server disconnected")])
def test_non_idempotent_posts_are_never_retried(call, failure):
    client, server = make_client(sequence(failure, httpx.Response(200, json={"run_id": "r9"})), [])
    with pytest.raises(exceptions.MazeAPIError) as info:
        call(client)
    if isinstance(failure, Exception):
        assert type(info.value) is exceptions.MazeConnectionError
        assert info.value.__cause__ is failure
    assert len(server.requests) == 1


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow connect"),
                                 httpx.ReadError("reset"), httpx.RemoteProtocolError("closed"),
                                 httpx.PoolTimeout("pool")])
def test_connection_errors_are_retried_for_idempotent_requests(exc):
    sleeps: list[float] = []
    client, server = make_client(sequence(exc, httpx.Response(200, json={"status": "ok"})), sleeps)
    assert client.health_check().ok
    assert len(server.requests) == 2 and sleeps == [0.25]


def test_connection_error_after_all_retries_is_a_typed_error():
    sleeps: list[float] = []
    client, server = make_client(sequence(httpx.ConnectError("refused")), sleeps, max_retries=2)
    with pytest.raises(exceptions.MazeConnectionError) as info:
        client.get_gpu_info()
    assert info.value.status_code is None
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(server.requests) == 3 and sleeps == [0.25, 0.5]


def test_read_timeout_is_not_retried():
    client, server = make_client(sequence(httpx.ReadTimeout("slow")), [])
    with pytest.raises(exceptions.MazeTimeoutError):
        client.get_run("r1")
    assert len(server.requests) == 1


def test_max_retries_zero_disables_retries():
    client, server = make_client(sequence(httpx.Response(503)), [], max_retries=0)
    with pytest.raises(exceptions.MazeServerError):
        client.get_run("r1")
    assert len(server.requests) == 1


def test_real_connection_refused_is_a_connection_error():
    import socket
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    client = MazeClient(f"http://127.0.0.1:{port}", max_retries=1, sleep=sleeps.append, timeout=2)
    with pytest.raises(exceptions.MazeConnectionError):
        client.health_check()
    assert sleeps == [pytest.approx(0.25, abs=0.125)]


# ---- connection, headers, context manager ---------------------------------------------------

def test_bearer_token_header_from_argument_and_environment(monkeypatch):
    ok = httpx.Response(200, json={"status": "ok"})
    monkeypatch.delenv("MAZE_TOKEN", raising=False)
    client, server = make_client(sequence(ok))
    client.health_check()
    assert "authorization" not in server.requests[0].headers
    client, server = make_client(sequence(ok), token="s3cret")
    client.health_check()
    assert server.requests[0].headers["authorization"] == "Bearer s3cret"
    monkeypatch.setenv("MAZE_TOKEN", "from-env")
    client, server = make_client(sequence(ok))
    client.health_check()
    assert server.requests[0].headers["authorization"] == "Bearer from-env"
    assert "from-env" not in repr(client)


def test_connect_is_a_context_manager_that_closes(monkeypatch):
    server = Server(sequence(httpx.Response(200, json={"status": "ok", "version": "0.1.0"})))
    with maze_client.connect(URL + "/", token="t", transport=httpx.MockTransport(server), timeout=5,
                             max_retries=2) as client:
        assert client.server_url == URL and client.timeout == 5 and client.max_retries == 2
        assert client.health_check().version == "0.1.0"
    assert client.closed
    with pytest.raises(exceptions.MazeConnectionError):
        client.health_check()
    assert len(server.requests) == 1


def test_url_defaults(monkeypatch):
    monkeypatch.delenv("MAZE_SERVER_URL", raising=False)
    assert MazeClient().server_url == "http://127.0.0.1:8000"
    assert MazeClient("localhost:9000/").server_url == "http://localhost:9000"
    monkeypatch.setenv("MAZE_SERVER_URL", "http://maze.example:8080")
    assert MazeClient().server_url == "http://maze.example:8080"


def test_ids_are_escaped_into_one_path_segment():
    client, server = make_client(sequence(httpx.Response(404, json={"detail": "no run"})))
    with pytest.raises(exceptions.MazeNotFoundError):
        client.get_run_summary("../tools")
    assert server.requests[0].url.raw_path == b"/runs/..%2Ftools/summary"


# ---- listing and paging ----------------------------------------------------------------------

def runs_server(total: int, shift_after_first_page: int = 0):
    runs = [{"run_id": f"r{i:03d}", "status": "succeeded", "name": "wf"} for i in range(total)]

    def handler(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        limit, offset = int(params.get("limit", 50)), int(params.get("offset", 0))
        page = runs[offset:offset + limit]
        if offset > 0 and shift_after_first_page:  # newer runs arrived: the list moved down
            page = runs[offset - shift_after_first_page:offset - shift_after_first_page + limit]
        return httpx.Response(200, json={"runs": page, "total": total, "limit": limit, "offset": offset})

    return handler


def test_list_runs_sends_filters_and_skips_none():
    client, server = make_client(runs_server(5))
    runs = client.list_runs(status="succeeded", name="wf", limit=2, offset=1)
    assert [r.run_id for r in runs] == ["r001", "r002"]
    assert all(isinstance(r, Run) for r in runs)
    assert dict(server.requests[0].url.params) == {"status": "succeeded", "name": "wf", "limit": "2",
                                                   "offset": "1"}
    client.list_runs()
    assert dict(server.requests[1].url.params) == {}


def test_list_runs_accepts_a_bare_list():
    client, _ = make_client(sequence(httpx.Response(200, json=[RUN_OK])))
    assert [r.run_id for r in client.list_runs()] == ["r1"]


def test_iter_runs_pages_until_a_short_page():
    client, server = make_client(runs_server(250))
    ids = [r.run_id for r in client.iter_runs(status="succeeded", page_size=100)]
    assert ids == [f"r{i:03d}" for i in range(250)]
    assert [r.url.params["offset"] for r in server.requests] == ["0", "100", "200"]
    assert {r.url.params["status"] for r in server.requests} == {"succeeded"}


def test_iter_runs_exact_multiple_ends_on_an_empty_page_and_is_lazy():
    client, server = make_client(runs_server(200))
    iterator = client.iter_runs(page_size=100)
    assert next(iterator).run_id == "r000"
    assert len(server.requests) == 1
    assert len(list(iterator)) == 199
    assert [r.url.params["offset"] for r in server.requests] == ["0", "100", "200"]


def test_iter_runs_does_not_repeat_runs_when_pages_shift():
    client, _ = make_client(runs_server(30, shift_after_first_page=3))
    ids = [r.run_id for r in client.iter_runs(page_size=10)]
    assert len(ids) == len(set(ids))


# ---- payloads -------------------------------------------------------------------------------

def multipart_parts(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """field name -> (filename, content) of a multipart body."""
    from email.parser import BytesParser
    from email.policy import HTTP
    raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content
    message = BytesParser(policy=HTTP).parsebytes(raw)
    out = {}
    for part in message.iter_parts():
        out[part.get_param("name", header="content-disposition")] = (part.get_filename(),
                                                                     part.get_payload(decode=True))
    return out


def test_submit_dag_sends_the_wire_payload_and_project_archive(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "helper.py").write_text("X = 1\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "data.txt").write_text("hello")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "abs.txt").write_text("absolute")
    monkeypatch.chdir(tmp_path)
    client, server = make_client(sequence(httpx.Response(200, json={"status": "success", "run_id": "abc",
                                                                    "msg": "ok"})))
    dag = client.new_dag("image_analysis")
    t1 = dag.add_task(double, inputs={"x": 3})
    t2 = dag.add_task(double, task_name="again", inputs={"x": t1.output.y})
    assert t1 == "t1" and t2.output.y == "t2.output.y"
    run_id = client.submit_dag(dag, project_files=["pkg", "data.txt", str(elsewhere / "abs.txt")])
    assert run_id == "abc"
    request = server.requests[0]
    assert request.method == "POST" and request.url.path == "/submit_workflow/"
    parts = multipart_parts(request)
    assert set(parts) == {"workflow_payload", "project_archive"}
    payload = json.loads(parts["workflow_payload"][1])
    assert payload["name"] == "image_analysis"
    assert payload["tasks"]["t2"]["dependencies"] == ["t1"]
    assert payload["tasks"]["t2"]["inputs"] == {"x": "t1.output.y"}
    assert payload["tasks"]["t1"]["func_name"] == "double"
    func = cloudpickle.loads(base64.b64decode(payload["tasks"]["t1"]["serialized_func"]))
    assert func(x=4) == {"y": 8}
    with zipfile.ZipFile(io.BytesIO(parts["project_archive"][1])) as archive:
        assert sorted(archive.namelist()) == ["abs.txt", "data.txt", "pkg/helper.py"]
        assert archive.read("pkg/helper.py") == b"X = 1\n"


def test_submit_without_project_files_sends_only_the_payload():
    client, server = make_client(sequence(httpx.Response(200, json={"run_id": "abc"})))
    submit_dag(client)
    assert set(multipart_parts(server.requests[0])) == {"workflow_payload"}


def test_submit_checks_locally_before_sending(tmp_path):
    client, server = make_client(sequence(httpx.Response(200, json={"run_id": "abc"})))
    with pytest.raises(ValueError, match="no tasks"):
        client.submit_dag(client.new_dag())
    dag = client.new_dag()
    dag.add_task(double, inputs={"x": 1})
    with pytest.raises(FileNotFoundError):
        client.submit_dag(dag, project_files=[tmp_path / "missing.py"])
    with pytest.raises(TypeError):
        client.submit_dag({"tasks": {}})  # type: ignore[arg-type]
    assert server.requests == []


def test_submit_without_run_id_in_answer_is_an_error():
    client, _ = make_client(sequence(httpx.Response(200, json={"status": "success"})))
    with pytest.raises(exceptions.MazeAPIError, match="no run_id"):
        submit_dag(client)


def test_zip_project_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.py").write_text("2")
    with pytest.raises(ValueError, match="both be"):
        zip_project([str(tmp_path / "a" / "x.py"), str(tmp_path / "b" / "x.py")])
    data = zip_project({"lib/one.py": "a/x.py", "lib/two.py": "b/x.py"})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["lib/one.py", "lib/two.py"]
    for bad in ("../x.py", "/etc/x.py", "C:/x.py"):
        with pytest.raises(ValueError):
            zip_project({bad: "a/x.py"})
    assert zipfile.ZipFile(io.BytesIO(zip_project(None))).namelist() == []


def test_upload_tool_sends_seed_form_fields(tmp_path):
    archive = tmp_path / "tool.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tool.py", "print('hi')")
    client, server = make_client(sequence(httpx.Response(200, json={"status": "success"})))
    client.upload_tool("my_tool", archive, description="d", type="cpu", version="1.0", author="me",
                       usage_notes="n")
    parts = multipart_parts(server.requests[0])
    assert server.requests[0].url.path == "/tools/upload"
    assert {k: v[1].decode() for k, v in parts.items() if k != "tool_archive"} == {
        "tool_name": "my_tool", "description": "d", "tool_type": "cpu", "version": "1.0", "author": "me",
        "usage_notes": "n"}
    assert parts["tool_archive"][0] == "tool.zip"
    with pytest.raises(TypeError, match="colour"):
        client.upload_tool("my_tool", archive, colour="red")


def test_tools_and_cluster_and_health_are_dataclasses():
    tools = [{"name": "double", "description": "Double", "type": "cpu", "version": "1.0", "author": None,
              "input_parameters": {"x": {"type": "integer"}}}]
    cluster = {"executor": "ray", "nodes": [
        {"node_id": "n1", "alive": True, "resources": {"CPU": 2}, "available": False, "gpus": []},
        {"node_id": "n2", "alive": True, "available": True,
         "gpus": [{"index": 0, "name": "A100", "memory_total": 40960, "memory_free": 1000}]}]}

    def handler(request):
        return httpx.Response(200, json={"/tools": tools, "/cluster": cluster,
                                         "/health": {"status": "ok", "version": "0.1.0",
                                                     "counts": {"runs": 3}}}[request.url.path])

    client, _ = make_client(handler)
    [tool] = client.list_tools()
    assert isinstance(tool, Tool) and tool.name == "double" and tool.type == "cpu"
    assert tool["input_parameters"] == {"x": {"type": "integer"}}
    info = client.get_gpu_info()
    assert isinstance(info, ClusterInfo) and info.available and info.get("available") is True
    assert [g.name for g in info.gpus] == ["A100"] and info.gpus[0].memory_total == 40960
    assert info.gpus[0].memory_free == 1000 and info.devices == info.gpus
    assert [n.node_id for n in info.nodes] == ["n1", "n2"] and not info.nodes[0].available
    health = client.health_check()
    assert isinstance(health, Health) and health.ok and health["counts"] == {"runs": 3}


def test_health_check_reports_a_stopped_engine_instead_of_raising():
    sleeps: list[float] = []
    body = {"status": "error", "version": "0.1.0", "engine": "stopped"}
    client, server = make_client(sequence(httpx.Response(503, json=body)), sleeps, max_retries=2)
    health = client.health_check()
    assert health.status == "error" and not health.ok and health["engine"] == "stopped"
    assert len(server.requests) == 3                  # 503 is retried first, like any GET
    client, _ = make_client(sequence(httpx.Response(503, json={"detail": "starting"})), [], max_retries=0)
    with pytest.raises(exceptions.MazeServerError):
        client.health_check()


def test_summary_prefers_the_run_status_over_the_envelope_status():
    summary = RunSummary.from_dict({"status": "success", "run_status": "running", "run_id": "r",
                                    "tasks": [{"task_id": "t1", "status": "queued", "task_status": "pending",
                                               "duration_s": None}]})
    assert summary.status == "running" and not summary.finished
    assert summary.tasks[0].status == "queued" and not summary.tasks[0].done


def test_model_parsing_is_tolerant():
    run = Run.from_dict({"run_id": "r", "status": "running", "created_at": 1_700_000_000,
                         "finished_at": "2023-11-14T22:13:30Z", "task_counts": {"succeeded": 1, "running": 1},
                         "extra": [1]})
    assert not run.finished and run.duration == pytest.approx(10.0) and run["extra"] == [1]
    assert run.id == "r" and run.task_counts == {"succeeded": 1, "running": 1}
    summary = RunSummary.from_dict({"run_id": "r", "status": "failed", "tasks": {
        "t1": {"status": "succeeded", "func_name": "double", "duration": 0.5},
        "t2": {"status": "failed", "error": "ValueError: x"}}})
    assert summary.finished and summary.counts == {"succeeded": 1, "failed": 1}
    assert summary.task("t2").error == "ValueError: x" and summary.task("t1").duration == 0.5
    result = TaskResult.from_dict({"status": "success", "task_status": "CANCELLED"}, "r", "t1")
    assert result.done and not result.succeeded and result.data is None and result["task_status"] == "CANCELLED"
    assert "data" not in result.raw and result.get("data") is None
    assert ClusterInfo.from_dict({"available": False, "gpus": []}).gpus == []
    assert Health.from_dict({}).status == "unknown"


# ---- wait -----------------------------------------------------------------------------------

def test_wait_polls_until_finished(monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr("maze_client.client.time.sleep", pauses.append)
    client, server = make_client(sequence(httpx.Response(200, json={"run_id": "r1", "status": "running"}),
                                          httpx.Response(200, json={"run_id": "r1", "status": "running"}),
                                          httpx.Response(200, json={"run_id": "r1", "status": "failed"})),
                                 wait_with_events=False)
    run = client.wait("r1")
    assert run.status == "failed" and run.finished
    assert len(server.requests) == 3 and pauses[0] < pauses[1] <= 0.5  # quick first, then longer


def stream_server(sse: bytes | None, statuses: list[str]):
    """/runs/r1 answers the statuses in turn; the event stream answers ``sse`` (404 if None)."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/runs/r1/events/stream":
            if sse is None:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return httpx.Response(200, json={"run_id": "r1", "status": status})
    return handler


def test_wait_follows_the_event_stream_until_the_last_event(monkeypatch):
    monkeypatch.setattr("maze_client.client.time.sleep", _no_sleep)
    sse = (b"retry: 15000\n\n: keep-alive\n\nid: 1\nevent: RunSubmitted\ndata: {}\n\n"
           b"id: 2\nevent: TaskSucceeded\ndata: {}\n\nid: 3\nevent: RunSucceeded\ndata: {}\n\n"
           b"id: 4\nevent: NeverRead\ndata: {}\n\n")
    client, server = make_client(stream_server(sse, ["running", "succeeded"]))
    assert client.wait("r1", timeout=5).status == "succeeded"
    assert server.paths == ["/runs/r1", "/runs/r1/events/stream", "/runs/r1"]
    assert server.requests[1].headers["accept"] == "text/event-stream"


def test_wait_polls_when_the_event_stream_is_missing(monkeypatch):
    monkeypatch.setattr("maze_client.client.time.sleep", lambda s: None)
    client, server = make_client(stream_server(None, ["running", "running", "cancelled"]))
    assert client.wait("r1").status == "cancelled"
    assert server.paths == ["/runs/r1", "/runs/r1/events/stream", "/runs/r1", "/runs/r1"]


def test_wait_times_out_while_following_the_stream(monkeypatch):
    client, _ = make_client(stream_server(b": keep-alive\n\n" * 5, ["running"]))
    with pytest.raises(exceptions.MazeWaitTimeoutError, match="still running"):
        client.wait("r1", timeout=0)


def test_wait_with_progress_bar(monkeypatch):
    summaries = [{"run_id": "r1", "status": "running", "tasks": {"t1": {"status": "running"}}},
                 {"run_id": "r1", "status": "succeeded", "tasks": {"t1": {"status": "succeeded"}}}]

    def handler(request):
        if request.url.path.endswith("/summary"):
            return httpx.Response(200, json=summaries.pop(0))
        return httpx.Response(200, json=RUN_OK)

    monkeypatch.setattr("maze_client.client.time.sleep", lambda s: None)
    client, server = make_client(handler)
    assert client.wait("r1", progress=True).status == "succeeded"
    assert server.paths == ["/runs/r1/summary", "/runs/r1/summary", "/runs/r1"]


def test_is_run_finished():
    client, _ = make_client(sequence(httpx.Response(200, json={"run_id": "r1", "status": "running"}),
                                     httpx.Response(200, json={"run_id": "r1", "status": "cancelled"})))
    assert client.is_run_finished("r1") is False
    assert client.is_run_finished("r1") is True


# ---- downloads and events -------------------------------------------------------------------

def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_download_run_extracts_into_output_dir(tmp_path):
    data = zip_bytes({"out/result.txt": b"42", "input.txt": b"in"})
    client, server = make_client(sequence(httpx.Response(200, content=data,
                                                         headers={"content-type": "application/zip"})))
    out = client.download_run("r1", tmp_path / "dl")
    assert out == tmp_path / "dl"
    assert (out / "out" / "result.txt").read_bytes() == b"42" and (out / "input.txt").read_bytes() == b"in"
    client, _ = make_client(sequence(httpx.Response(200, content=data)))
    saved = client.download_run("r1", tmp_path / "zips", extract=False)
    assert saved == tmp_path / "zips" / "r1.zip" and saved.read_bytes() == data


def test_download_run_is_retried_on_503_as_an_idempotent_request(tmp_path):
    data = zip_bytes({"out/result.txt": b"42"})
    sleeps: list[float] = []
    client, server = make_client(sequence(httpx.Response(503, json={"detail": "busy"}),
                                          httpx.Response(200, content=data)), sleeps)
    out = client.download_run("r1", tmp_path / "dl")
    assert (out / "out" / "result.txt").read_bytes() == b"42"
    assert server.paths == ["/runs/r1/download"] * 2 and [r.method for r in server.requests] == ["GET"] * 2
    assert sleeps == [0.25]


def test_download_run_refuses_members_outside_the_folder(tmp_path):
    client, _ = make_client(sequence(httpx.Response(200, content=zip_bytes({"../evil.txt": b"x"}))))
    with pytest.raises(ValueError, match="outside"):
        client.download_run("r1", tmp_path / "dl")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_skips_symlinks_and_refuses_absolute_names(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
        zf.writestr("ok.txt", "fine")
    written = safe_extract(io.BytesIO(buf.getvalue()), tmp_path / "x")
    assert [p.name for p in written] == ["ok.txt"] and not (tmp_path / "x" / "link").exists()
    with pytest.raises(ValueError):
        safe_extract(io.BytesIO(zip_bytes({"/abs.txt": b"x"})), tmp_path / "y")


def test_download_error_is_typed_even_when_streaming(tmp_path):
    client, _ = make_client(sequence(httpx.Response(404, json={"detail": "run not found"})))
    with pytest.raises(exceptions.MazeNotFoundError) as info:
        client.download_run("nope", tmp_path)
    assert info.value.detail == "run not found"


def test_events_and_event_stream():
    events = [{"seq": 5, "type": "RunSubmitted", "ts": 1.0, "data": {}},
              {"seq": 6, "type": "TaskSucceeded", "ts": 2.0, "data": {"task_id": "t1"}}]
    sse = (": keep-alive\n\n" + "".join(f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n"
                                         for e in events)).encode()

    def handler(request):
        if request.url.path.endswith("/stream"):
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"events": events})

    client, server = make_client(handler)
    got = client.get_events("r1", after=4)
    assert [e.seq for e in got] == [5, 6] and got[1].task_id == "t1"
    assert server.requests[0].url.params["after"] == "4"
    assert [(e.seq, e.type) for e in client.stream_events("r1")] == [(5, "RunSubmitted"), (6, "TaskSucceeded")]


# ---- functions of the user's own modules travel by value ------------------------------------

def test_functions_of_user_modules_are_pickled_by_value(tmp_path, monkeypatch):
    (tmp_path / "my_user_tasks.py").write_text(textwrap.dedent("""
        from maze_client import task

        FACTOR = 3

        @task
        def triple(x: int) -> dict:
            return {"y": FACTOR * x}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_user_tasks  # type: ignore[import-not-found]
    try:
        bodies = {}
        for by_value in (True, False):
            client, server = make_client(sequence(httpx.Response(200, json={"run_id": "r"})),
                                         pickle_by_value=by_value)
            dag = client.new_dag()
            dag.add_task(my_user_tasks.triple, inputs={"x": 2})
            client.submit_dag(dag)
            payload = json.loads(multipart_parts(server.requests[0])["workflow_payload"][1])
            bodies[by_value] = payload["tasks"]["t1"]["serialized_func"]
        # A fresh interpreter without the module on its path: only the by-value payload loads.
        code = ("import base64, sys, cloudpickle; f = cloudpickle.loads(base64.b64decode(sys.argv[1])); "
                "print(f(x=5)['y'])")
        good = subprocess.run([sys.executable, "-c", code, bodies[True]], capture_output=True, text=True,
                              cwd="/", timeout=60)
        assert good.returncode == 0, good.stderr
        assert good.stdout.strip() == "15"
        bad = subprocess.run([sys.executable, "-c", code, bodies[False]], capture_output=True, text=True,
                             cwd="/", timeout=60)
        assert bad.returncode != 0 and "my_user_tasks" in bad.stderr
        assert "my_user_tasks" not in cloudpickle.list_registry_pickle_by_value()
    finally:
        sys.modules.pop("my_user_tasks", None)


def test_a_user_package_travels_whole(tmp_path, monkeypatch):
    pkg = tmp_path / "my_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("def factor():\n    return 7\n")
    (pkg / "tasks.py").write_text(textwrap.dedent("""
        from maze_client import task
        from my_user_pkg.helpers import factor

        @task
        def scale(x: int) -> dict:
            return {"y": factor() * x}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_user_pkg import tasks  # type: ignore[import-not-found]
    try:
        from maze_client._wire import user_modules
        dag = maze_client.DAG()
        dag.add_task(tasks.scale, inputs={"x": 2})
        assert [m.__name__ for m in user_modules(dag)] == ["my_user_pkg"]
        client, server = make_client(sequence(httpx.Response(200, json={"run_id": "r"})))
        client.submit_dag(dag)
        body = json.loads(multipart_parts(server.requests[0])["workflow_payload"][1])["tasks"]["t1"]
        code = ("import base64, sys, cloudpickle; f = cloudpickle.loads(base64.b64decode(sys.argv[1])); "
                "print(f(x=3)['y'])")
        proc = subprocess.run([sys.executable, "-c", code, body["serialized_func"]], capture_output=True,
                              text=True, cwd="/", timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "21"
    finally:
        for name in [m for m in sys.modules if m == "my_user_pkg" or m.startswith("my_user_pkg.")]:
            del sys.modules[name]


def test_maze_and_main_functions_are_left_to_cloudpickle():
    from maze_client._wire import user_modules
    from maze_core.demo import load_corpus
    dag = maze_client.DAG()
    dag.add_task(load_corpus, inputs={"limit": 1})  # maze's own package: the server has it
    dag.add_task(double, inputs={"x": 1})           # this test module is not installed: by value
    assert [m.__name__ for m in user_modules(dag)] == [__name__.split(".")[0]]  # its package, whole
