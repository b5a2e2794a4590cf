"""``MazeClient``: the Python SDK for a Maze server (the original Maze SDK's API, with retries, pooling and typed results).

::

    from maze_client import MazeClient, task

    @task
    def add(a: int, b: int) -> dict:
        return {"sum": a + b}

    with MazeClient("http://127.0.0.1:8000") as client:
        dag = client.new_dag("demo")
        t1 = dag.add_task(add, inputs={"a": 1, "b": 2})
        t2 = dag.add_task(add, inputs={"a": t1.output.sum, "b": 10})   # or "t1.output.sum"
        run_id = client.submit_dag(dag)
        client.wait(run_id)
        print(client.get_task_result(run_id, t2)["data"])              # {'sum': 13}

Nothing here imports Ray, FastAPI or uvicorn: the client needs only httpx, cloudpickle and the light
parts of ``maze_core`` (``@task`` and the DAG wire format).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from maze_core.dag import DAG

from ._files import ProjectFiles, safe_extract, zip_project
from ._http import HTTP, RetryPolicy, join_params
from ._wire import dag_payload
from .exceptions import MazeAPIError, MazeAuthenticationError, MazeServerError, MazeWaitTimeoutError
from .models import (
    ClusterInfo,
    Event,
    Health,
    Run,
    RunSummary,
    TaskResult,
    Tool,
)

__all__ = ["DEFAULT_URL", "MazeClient", "connect"]

DEFAULT_URL = "http://127.0.0.1:8000"
# the events that end a run's event stream ("end": the server's engine stopped)
_LAST_EVENTS = frozenset({"RunSucceeded", "RunFailed", "RunCancelled", "end"})
_TOOL_FIELDS = {"description": "description", "type": "tool_type", "tool_type": "tool_type",
                "version": "version", "author": "author", "usage_notes": "usage_notes"}


def _seg(value: str) -> str:
    """A path segment, escaped (``/`` included), so ids cannot walk to another endpoint."""
    return quote(str(value), safe="")


def _normalize_url(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


class MazeClient:
    """A connection to a Maze server.

    :param server_url: base URL, e.g. ``"http://localhost:8000"`` (``MAZE_SERVER_URL`` or
        ``http://127.0.0.1:8000`` when None).
    :param token: bearer token sent as ``Authorization: Bearer ...`` (``MAZE_TOKEN`` when None).
    :param timeout: seconds per request (None: no limit).
    :param max_retries: how many times an idempotent request is sent again after 429/502/503/504
        or a connection error, waiting with exponential backoff and jitter (or ``Retry-After``).
    :param backoff_factor: the first wait in seconds; each further one doubles, up to ``backoff_max``.
    :param retry_after_max: the longest ``Retry-After`` honoured, in seconds.
    :param transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).
    :param sleep: the function that waits between retries (tests pass a recorder).
    :param pickle_by_value: ship the functions of the user's own modules by value (see ``_wire``).
    :param wait_with_events: ``wait`` follows the run's event stream (else it only polls).

    Use it as a context manager, or call :meth:`close`, to release its pooled connections.
    """

    def __init__(self, server_url: str | None = None, token: str | None = None, *,
                 timeout: float | None = 30.0, max_retries: int = 3, backoff_factor: float = 0.25,
                 backoff_max: float = 8.0, retry_after_max: float = 60.0,
                 transport: httpx.BaseTransport | None = None, headers: Mapping[str, str] | None = None,
                 verify: Any = True, sleep: Callable[[float], None] = time.sleep,
                 random_source: Callable[[], float] = random.random,
                 pickle_by_value: bool = True, wait_with_events: bool = True,
                 max_connections: int = 100) -> None:
        self.server_url = _normalize_url(server_url or os.environ.get("MAZE_SERVER_URL") or DEFAULT_URL)
        self.token = token if token is not None else (os.environ.get("MAZE_TOKEN") or None)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries, backoff_factor=backoff_factor,
                                        backoff_max=backoff_max, retry_after_max=retry_after_max)
        self.pickle_by_value = pickle_by_value
        self.wait_with_events = wait_with_events
        self._http = HTTP(self.server_url, token=self.token, timeout=timeout, policy=self.retry_policy,
                          transport=transport, headers=dict(headers or {}), verify=verify, sleep=sleep,
                          random=random_source,
                          limits=httpx.Limits(max_connections=max_connections,
                                              max_keepalive_connections=min(max_connections, 20)))

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:  # the name the original client used
        return self.server_url

    @property
    def max_retries(self) -> int:
        return self.retry_policy.max_retries

    @property
    def session(self) -> httpx.Client:
        """The underlying pooled ``httpx.Client`` (the original client exposed its session too)."""
        return self._http.client

    def close(self) -> None:
        """Close the pooled connections. The client cannot be used afterwards."""
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.closed

    def __enter__(self) -> MazeClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MazeClient({self.server_url!r}{', token=***' if self.token else ''})"

    # ---- workflows (the original SDK) --------------------------------------------------------

    def new_dag(self, name: str = "") -> DAG:
        """A new, empty workflow; add tasks with ``dag.add_task(func, inputs=...)``."""
        return DAG(name=name)

    def submit_dag(self, dag: DAG, project_files: ProjectFiles | None = None) -> str:
        """Submit ``dag`` and return its ``run_id`` (``POST /submit_workflow/``).

        ``project_files`` (paths of files or folders, or a dict of name to path) are zipped and
        extracted into the run's directory on the server, which is the tasks' working directory.
        Never retried: a submit that fails on the way may or may not have been accepted."""
        if not isinstance(dag, DAG):
            raise TypeError(f"submit_dag expects a DAG (client.new_dag()), got {type(dag).__name__}")
        if not dag.tasks:
            raise ValueError("the DAG has no tasks; add some with dag.add_task(...)")
        payload = json.dumps(dag_payload(dag, self.pickle_by_value), separators=(",", ":")).encode()
        files = {"workflow_payload": ("workflow.json", payload, "application/json")}
        if project_files is not None:
            files["project_archive"] = ("project.zip", zip_project(project_files), "application/zip")
        body = self._http.json("POST", "/submit_workflow/", files=files)
        run_id = body.get("run_id") if isinstance(body, Mapping) else None
        if not run_id:
            raise MazeAPIError(f"the server accepted the workflow but sent no run_id: {body!r}",
                               method="POST", url="/submit_workflow/")
        return str(run_id)

    def get_task_result(self, run_id: str, task_id: str) -> TaskResult:
        """A task's status and result (``POST /get/``): ``result["task_status"]``, ``result["data"]``
        (when it succeeded), ``result["error"]`` (when it failed); also ``result.data`` etc."""
        body = self._http.json("POST", "/get/", idempotent=True,
                               json={"run_id": str(run_id), "task_id": str(task_id)})
        return TaskResult.from_dict(body or {}, run_id=str(run_id), task_id=str(task_id))

    def get_run(self, run_id: str) -> Run:
        """The run's status, timestamps and task counts (``GET /runs/{run_id}``)."""
        return Run.from_dict(self._http.json("GET", f"/runs/{_seg(run_id)}") or {})

    def is_run_finished(self, run_id: str) -> bool:
        """True once every task of the run is in a final state (the run succeeded, failed or was
        cancelled)."""
        return self.get_run(run_id).finished

    def get_run_summary(self, run_id: str) -> RunSummary:
        """Every task's status, name and timing (``GET /runs/{run_id}/summary``)."""
        body = self._http.json("GET", f"/runs/{_seg(run_id)}/summary") or {}
        return RunSummary.from_dict(body, run_id=str(run_id))

    def wait(self, run_id: str, timeout: float | None = None, progress: bool = False,
             poll_interval: float = 0.5) -> Run:
        """Block until the run is finished and return it; raise ``MazeWaitTimeoutError`` after
        ``timeout`` seconds. ``progress=True`` draws a rich progress bar of finished tasks.

        One look at the run first; if it is still going, the client follows the run's event
        stream (server-sent events) and returns as soon as the run's last event arrives. Where the
        stream cannot be had it polls instead, every few ms at first, backing off to
        ``poll_interval`` seconds."""
        run_id = str(run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            return self._wait_with_progress(run_id, deadline, timeout, poll_interval)
        run = self.get_run(run_id)
        if run.finished:
            return run
        if self.wait_with_events and self._await_last_event(run_id, deadline, timeout, run.status):
            run = self.get_run(run_id)
            if run.finished:
                return run
        delay = 0.002
        while True:
            delay = self._pause(deadline, delay, poll_interval, run_id, timeout, run.status)
            run = self.get_run(run_id)
            if run.finished:
                return run

    def _await_last_event(self, run_id: str, deadline: float | None, timeout: float | None,
                          status: str) -> bool:
        """Follow ``/runs/{run_id}/events/stream`` until the run's last event (or the server ends
        the stream). False when the stream is not available or broke: the caller polls instead."""
        read = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        try:
            response = self._http.request("GET", f"/runs/{_seg(run_id)}/events/stream", stream=True,
                                          headers={"Accept": "text/event-stream"},
                                          timeout=httpx.Timeout(self.timeout, read=read))
        except MazeAPIError as exc:
            if isinstance(exc, MazeAuthenticationError):
                raise
            return False
        try:
            for line in response.iter_lines():
                if line.startswith("event:") and line[6:].strip() in _LAST_EVENTS:
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    break
            else:
                return True                                 # the server ended the stream
        except httpx.ReadTimeout:
            pass
        except httpx.TransportError:
            return False
        finally:
            response.close()
        raise MazeWaitTimeoutError(f"run {run_id} is still {status} after {timeout} s", url=f"/runs/{run_id}")

    def _pause(self, deadline: float | None, delay: float, poll_interval: float, run_id: str,
               timeout: float | None, status: str) -> float:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MazeWaitTimeoutError(f"run {run_id} is still {status} after {timeout} s",
                                           url=f"/runs/{run_id}")
            delay = min(delay, left)
        time.sleep(delay)
        return min(poll_interval, delay * 1.5)

    def _wait_with_progress(self, run_id: str, deadline: float | None, timeout: float | None,
                            poll_interval: float) -> Run:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        delay = 0.002
        with Progress(*columns, transient=False) as bar:
            handle = bar.add_task(f"run {run_id[:12]}", total=None, status="")
            while True:
                summary = self.get_run_summary(run_id)
                done = sum(1 for t in summary.tasks if t.done)
                counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items()))
                bar.update(handle, total=len(summary.tasks) or None, completed=done, status=counts)
                if summary.finished:
                    return self.get_run(run_id)
                delay = self._pause(deadline, delay, max(poll_interval, 0.05), run_id, timeout,
                                    summary.status)

    def cancel_task(self, run_id: str, task_id: str) -> dict[str, Any]:
        """Cancel a task (``POST /runs/{run_id}/tasks/{task_id}/cancel``); a running one is
        cancelled on a best-effort basis. Tasks depending on it end as skipped."""
        return self._http.json("POST", f"/runs/{_seg(run_id)}/tasks/{_seg(task_id)}/cancel") or {}

    def download_run(self, run_id: str, output_dir: str | os.PathLike[str], *,
                     extract: bool = True) -> Path:
        """Download the run's directory (``GET /runs/{run_id}/download``) and extract it into
        ``output_dir`` (created if needed); returns that folder. ``extract=False`` saves the ZIP
        as ``output_dir/<run_id>.zip`` and returns its path. Names that would land outside
        ``output_dir`` are refused, symbolic links skipped."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        response = self._http.request("GET", f"/runs/{_seg(run_id)}/download", stream=True)
        try:
            with tempfile.TemporaryFile() as spool:
                for chunk in response.iter_bytes():
                    spool.write(chunk)
                spool.seek(0)
                if not extract:
                    target = out / f"{Path(str(run_id)).name}.zip"
                    with open(target, "wb") as fh:
                        while chunk := spool.read(1 << 20):
                            fh.write(chunk)
                    return target
                safe_extract(spool, out)
        finally:
            response.close()
        return out

    def destroy_run(self, run_id: str) -> dict[str, Any]:
        """Delete the run's files and records on the server (``POST /runs/destroy``); only a
        finished run can be destroyed (``MazeBadRequestError`` otherwise)."""
        return self._http.json("POST", "/runs/destroy", json={"run_id": str(run_id)}) or {}

    # ---- runs --------------------------------------------------------------------------------

    def list_runs(self, status: str | None = None, name: str | None = None, limit: int | None = None,
                  offset: int | None = None) -> list[Run]:
        """Runs, newest first, filtered by ``status`` and ``name``, one page (``GET /runs``)."""
        params = join_params([("status", status), ("name", name), ("limit", limit), ("offset", offset)])
        body = self._http.json("GET", "/runs", params=params)
        return [Run.from_dict(item) for item in _items(body, "runs")]

    def iter_runs(self, status: str | None = None, name: str | None = None,
                  page_size: int = 100) -> Iterator[Run]:
        """Every run matching the filters, fetched ``page_size`` at a time. A run seen on an earlier
        page is not yielded twice (new submissions shift the pages while iterating)."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        seen: set[str] = set()
        offset = 0
        while True:
            page = self.list_runs(status=status, name=name, limit=page_size, offset=offset)
            for run in page:
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    yield run
            if len(page) < page_size:
                return
            offset += len(page)

    def get_events(self, run_id: str, after: int = 0) -> list[Event]:
        """The run's events with ``seq`` greater than ``after`` (``GET /runs/{run_id}/events``)."""
        body = self._http.json("GET", f"/runs/{_seg(run_id)}/events", params={"after": after})
        return [Event.from_dict(item) for item in _items(body, "events")]

    def stream_events(self, run_id: str, after: int = 0) -> Iterator[Event]:
        """Follow the run's events live (server-sent events, ``GET /runs/{run_id}/events/stream``)
        until the server ends the stream (it does once the run is finished)."""
        response = self._http.request("GET", f"/runs/{_seg(run_id)}/events/stream",
                                      params={"after": after}, stream=True,
                                      headers={"Accept": "text/event-stream"},
                                      timeout=httpx.Timeout(self.timeout, read=None))
        try:
            for data in _sse_data(response.iter_lines()):
                try:
                    item = json.loads(data)
                except ValueError:
                    continue
                if isinstance(item, Mapping):
                    yield Event.from_dict(item)
        finally:
            response.close()

    # ---- tools -------------------------------------------------------------------------------

    def list_tools(self) -> list[Tool]:
        """Every tool the server has registered (``GET /tools``)."""
        return [Tool.from_dict(item) for item in _items(self._http.json("GET", "/tools"), "tools")]

    def upload_tool(self, name: str, archive_path: str | os.PathLike[str], **metadata: Any) -> dict[str, Any]:
        """Upload a tool package (a ZIP) as ``name`` (``POST /tools/upload``). ``metadata``:
        ``description``, ``type`` (or ``tool_type``), ``version``, ``author``, ``usage_notes``.
        A tool of that name raises ``MazeConflictError``."""
        unknown = set(metadata) - set(_TOOL_FIELDS)
        if unknown:
            raise TypeError(f"upload_tool got unknown metadata {sorted(unknown)}; "
                            f"known: {sorted(_TOOL_FIELDS)}")
        form = {"tool_name": name}
        for key, value in metadata.items():
            if value is not None:
                form[_TOOL_FIELDS[key]] = str(value)
        path = Path(archive_path)
        with open(path, "rb") as fh:
            return self._http.json("POST", "/tools/upload", data=form,
                                   files={"tool_archive": (path.name, fh, "application/zip")}) or {}

    def delete_tool(self, name: str) -> dict[str, Any]:
        """Remove an uploaded tool (``DELETE /tools/{tool_name}``)."""
        return self._http.json("DELETE", f"/tools/{_seg(name)}") or {}

    def reload_tools(self) -> dict[str, Any]:
        """Ask the server to rescan its tool folders and plugins (``POST /tools/reload``)."""
        return self._http.json("POST", "/tools/reload") or {}

    # ---- run files (used by workers) ---------------------------------------------------------

    def get_file_hashes(self, run_id: str) -> dict[str, str]:
        """Relative path to SHA-256 of every file in the run directory (``GET /files/hashes``)."""
        body = self._http.json("GET", f"/files/hashes/{_seg(run_id)}") or {}
        hashes = body.get("files", body.get("hashes", body)) if isinstance(body, Mapping) else body
        if isinstance(hashes, list):
            return {item["path"]: item.get("sha256") or item.get("hash") for item in hashes}
        return dict(hashes)

    def download_files(self, run_id: str, files: list[str], output_dir: str | os.PathLike[str]) -> list[Path]:
        """Fetch some files of the run directory into ``output_dir`` (``POST /files/download``)."""
        response = self._http.request("POST", f"/files/download/{_seg(run_id)}", idempotent=True,
                                      json={"files": list(files)}, stream=True)
        try:
            with tempfile.TemporaryFile() as spool:
                for chunk in response.iter_bytes():
                    spool.write(chunk)
                spool.seek(0)
                return safe_extract(spool, output_dir)
        finally:
            response.close()

    def upload_files(self, run_id: str, files: Mapping[str, str | os.PathLike[str]]) -> dict[str, Any]:
        """Upload files into the run directory (``POST /files/upload``): relative name -> local path."""
        handles = {name: open(path, "rb") for name, path in files.items()}  # noqa: SIM115
        try:
            parts = {name: (Path(name).name, fh, "application/octet-stream") for name, fh in handles.items()}
            return self._http.json("POST", f"/files/upload/{_seg(run_id)}", files=parts) or {}
        finally:
            for fh in handles.values():
                fh.close()

    # ---- server ------------------------------------------------------------------------------

    def health_check(self) -> Health:
        """The server's status, version and counts (``GET /health``). A server that answers 503
        with its health (the engine stopped) gives ``Health(status="error")``, not an exception."""
        try:
            return Health.from_dict(self._http.json("GET", "/health") or {})
        except MazeServerError as exc:
            if exc.status_code == 503 and isinstance(exc.detail, Mapping) and "status" in exc.detail:
                return Health.from_dict(exc.detail)
            raise

    def get_gpu_info(self) -> ClusterInfo:
        """The cluster's nodes and their GPUs (``GET /cluster``): ``info.available`` is True when
        there is at least one GPU; ``info.gpus`` lists them all."""
        return ClusterInfo.from_dict(self._http.json("GET", "/cluster") or {})

    get_cluster_info = get_gpu_info


def connect(server_url: str | None = None, token: str | None = None, **options: Any) -> MazeClient:
    """A :class:`MazeClient`; use it as ``with maze_client.connect(url, token=...) as client:``."""
    return MazeClient(server_url, token, **options)


def _items(body: Any, key: str) -> list[Mapping[str, Any]]:
    """The list in a response: the body itself, or ``body[key]`` / ``body["items"]``."""
    if isinstance(body, Mapping):
        body = body.get(key, body.get("items", []))
    if not isinstance(body, list):
        return []
    return [item for item in body if isinstance(item, Mapping)]


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        fieldname, _, value = line.partition(":")
        if fieldname == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
