"""A run's events are read a page at a time (issue 11, "exhausts the server"): ``GET
/runs/{id}/events`` and the live stream never load a run's whole history, and a token holds a
bounded number of live streams. Against a real uvicorn server on loopback, the real engine (local
executor) and SQLite files in a temporary folder; the long run is a real run of thousands of tiny
tasks, recorded by the engine.

What the store was asked is watched through its public read methods (a counting wrapper on the
engine's store, which the server shares): that, not memory, is what these tests measure."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from maze_api import create_app
from maze_api.routes.events import STREAM_PAGE
from maze_api.testing import logging_restored, serve
from maze_core import events as ev
from maze_core.dag import DAG
from maze_core.engine import Engine
from maze_core.registry import ToolRegistry, task
from maze_sqlite import store as sqlite_store
from maze_sqlite.store import SqliteStore
from tests.conftest import make_config

# Each test that holds streams has a token of its own, so that no test meets slots another one
# left for the server to free. alice owns the long run; carol and erin are admins (they see it).
TOKENS = {name: f"{name}-paging-token-0123456789" for name in ("alice", "bob", "carol", "dave", "erin")}
TASKS = 5000          # ~15,000 events (~13 MB): RunSubmitted, three per task, RunSucceeded
CAP = 2               # [server] max_streams_per_token in these tests
GATES: dict[str, threading.Event] = {}


@pytest.fixture(scope="module", autouse=True)
def _leave_logging_as_found():
    with logging_restored():
        yield


@task
def tiny(i: int) -> dict:
    """A result of 2 KB makes the run's events weigh ~13 MB: several times what loopback sockets
    buffer for a client that does not read (Linux grows a send buffer up to 4 MB), so that a server
    reading page by page is seen to stop long before the end."""
    return {"pad": "x" * 2000}


@task
def gated(name: str) -> dict:
    if not GATES.setdefault(name, threading.Event()).wait(20):
        raise TimeoutError(f"gate {name} never opened")
    return {}


class ReadLog:
    """Every call of the store's read methods about one stream: (method, limit, rows returned)."""

    def __init__(self, store: object, stream: str):
        self.stream = stream
        self.calls: list[tuple[str, int | None, int]] = []
        self._lock = threading.Lock()
        for name in ("read_stream", "read_stream_page", "read_all"):
            original = getattr(store, name, None)
            if original is not None:
                setattr(store, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            out = original(*args, **kwargs)
            stream = args[0] if args and name != "read_all" else kwargs.get("stream")
            if name == "read_all" or stream == self.stream:
                limit = kwargs.get("limit", args[2] if name == "read_stream_page" and len(args) > 2 else None)
                with self._lock:
                    self.calls.append((name, limit, len(out)))
            return out
        return counted

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    def rows(self) -> int:
        with self._lock:
            return sum(n for _, _, n in self.calls)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paging")
    cfg = make_config(tmp)
    cfg.server.tokens = [f"{name}={token}" for name, token in TOKENS.items()]
    cfg.server.admins = ["carol", "erin"]
    cfg.server.sse_heartbeat_s = 0.2
    cfg.server.max_streams_per_token = CAP
    cfg.logging.level = "WARNING"
    engine = Engine.from_config(cfg, registry=ToolRegistry(), actor="server")
    engine.start()
    dag = DAG("long")
    for i in range(TASKS):
        dag.add_task(tiny, inputs={"i": i})
    run_id = engine.submit(dag, actor="alice")
    assert engine.wait(run_id, timeout=60)["status"] == "succeeded"
    stream = ev.run_stream(run_id)
    reads = ReadLog(engine.store, stream)
    app = create_app(cfg, engine)
    with serve(app) as url:
        yield {"url": url, "engine": engine, "run_id": run_id, "reads": reads,
               "seqs": [e.seq for e in engine.store.read_stream(stream)]}
    for gate in GATES.values():
        gate.set()
    engine.stop()
    engine.store.close()


def client_of(api, name: str) -> httpx.Client:
    return httpx.Client(base_url=api["url"], headers={"Authorization": f"Bearer {TOKENS[name]}"}, timeout=30)


@pytest.fixture
def alice(api):
    with client_of(api, "alice") as c:
        yield c


def sse_ids(response: httpx.Response) -> list[int]:
    return [int(line[4:]) for line in response.iter_lines() if line.startswith("id: ")]


def gated_run(engine: Engine, name: str, actor: str = "alice") -> str:
    dag = DAG(name)
    dag.add_task(gated, inputs={"name": name})
    return engine.submit(dag, actor=actor)


# ---------------------------------------------------------------------------- the index
def test_sqlite_pages_a_stream_from_an_index_on_stream_and_seq(tmp_path: Path) -> None:
    """The page query is answered from ``events_stream_seq`` (no sort of the whole stream), and a
    file made before migration m003 gets the index when it is opened."""
    path = tmp_path / "maze.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        plan = " ".join(row[-1] for row in conn.execute(
            f"EXPLAIN QUERY PLAN {sqlite_store._STREAM_PAGE}", ("run:x", 10, 1)))
        assert "events_stream_seq" in plan and "TEMP B-TREE" not in plan, plan
        conn.execute("DROP INDEX events_stream_seq")    # as a file written before m003
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_events_stream_seq_index'")
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_stream_seq" in indexes


# ---------------------------------------------------------------------------- GET .../events
def test_a_page_at_the_end_of_a_long_run_reads_only_that_page(api, alice):
    seqs, reads = api["seqs"], api["reads"]
    assert len(seqs) == 3 * TASKS + 2
    reads.clear()
    started = time.perf_counter()
    body = alice.get(f"/runs/{api['run_id']}/events", params={"after": seqs[-11], "limit": 1}).json()
    elapsed = time.perf_counter() - started
    assert [e["seq"] for e in body["events"]] == [seqs[-10]]
    assert body["last_seq"] == seqs[-10] and body["more"] is True and body["finished"] is True
    # one paged read of limit + 1 rows (the extra one says `more`), not the run's 15,000 events
    assert reads.calls == [("read_stream_page", 2, 2)], reads.calls
    assert elapsed < 2.0   # generous for a loaded CI machine; the rows read are the real check

    reads.clear()
    tail = alice.get(f"/runs/{api['run_id']}/events", params={"after": seqs[-4], "limit": 10}).json()
    assert [e["seq"] for e in tail["events"]] == seqs[-3:] and tail["more"] is False
    assert tail["events"][-1]["type"] == "RunSucceeded"
    assert reads.rows() <= 11
    past = alice.get(f"/runs/{api['run_id']}/events", params={"after": seqs[-1]}).json()
    assert past["events"] == [] and past["last_seq"] == seqs[-1] and past["more"] is False


def test_paging_with_last_seq_walks_the_whole_run(api, alice):
    got, after, pages = [], 0, 0
    while True:
        body = alice.get(f"/runs/{api['run_id']}/events", params={"after": after, "limit": 4000}).json()
        got += [e["seq"] for e in body["events"]]
        after, pages = body["last_seq"], pages + 1
        if not body["more"]:
            break
    assert got == api["seqs"] and pages == 4


# ---------------------------------------------------------------------------- the live stream
def test_a_stream_sends_pages_in_order_and_ends(api, alice):
    seqs, reads = api["seqs"], api["reads"]
    reads.clear()
    count = 2 * STREAM_PAGE + 50            # three pages, the last one short
    with alice.stream("GET", f"/runs/{api['run_id']}/events/stream",
                      headers={"Last-Event-ID": str(seqs[-count - 1])}) as response:
        assert response.status_code == 200
        assert sse_ids(response) == seqs[-count:]   # each once, in order, then the stream ended
    assert [name for name, _, _ in reads.calls] == ["read_stream_page"] * 3, reads.calls
    assert all(limit == STREAM_PAGE for _, limit, _ in reads.calls)
    # past the end of a finished run: nothing to send, and the stream ends at once
    with alice.stream("GET", f"/runs/{api['run_id']}/events/stream", params={"after": seqs[-1]}) as response:
        assert sse_ids(response) == []


def test_a_slow_reader_costs_a_page_not_the_run(api):
    """A client that does not read: the server reads a page, sends it until the socket pushes
    back, and reads the next only when that one is gone. Before, the first read loaded all
    15,000 events (200,000 in the issue: 1.7 GB for five such clients). When the client leaves,
    the stream stuck sending to it ends and frees its slot."""
    reads = api["reads"]
    reads.clear()
    host, port = api["url"].removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window: pushes back early
    sock.settimeout(10)
    try:
        sock.connect((host, int(port)))
        sock.sendall(f"GET /runs/{api['run_id']}/events/stream HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: Bearer {TOKENS['carol']}\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        # wait until the server stops reading (it waits on the client), at most 10 s
        deadline, stable_since, seen = time.monotonic() + 10, time.monotonic(), -1
        while time.monotonic() - stable_since < 0.5:
            assert time.monotonic() < deadline, "the server never stopped reading"
            rows = reads.rows()
            if rows != seen:
                seen, stable_since = rows, time.monotonic()
            time.sleep(0.05)
        calls = list(reads.calls)
        assert calls and all(name == "read_stream_page" and limit == STREAM_PAGE
                             for name, limit, _ in calls), calls
        assert max(n for _, _, n in calls) <= STREAM_PAGE
        assert seen < len(api["seqs"]) // 2, f"the server read {seen} events for a client that read none"
    finally:
        sock.close()
    run_id = gated_run(api["engine"], "slow-reader", "carol")
    try:
        with client_of(api, "carol") as carol:
            for response in hold_streams(carol, f"/runs/{run_id}/events/stream", CAP):   # all her slots
                response.close()
    finally:
        GATES.setdefault("slow-reader", threading.Event()).set()


# ---------------------------------------------------------------------------- streams per token
def hold_streams(client: httpx.Client, path: str, count: int, timeout: float = 5.0) -> list[httpx.Response]:
    """Open ``count`` streams at once, retrying a 429 while the server has not yet noticed that
    an earlier client left (it frees that stream's slot when it does)."""
    deadline = time.monotonic() + timeout
    opened: list[httpx.Response] = []
    while len(opened) < count:
        response = client.send(client.build_request("GET", path), stream=True)
        if response.status_code == 200:
            opened.append(response)
            continue
        response.close()
        if response.status_code != 429 or time.monotonic() > deadline:
            for other in opened:
                other.close()
            raise AssertionError(f"stream {len(opened) + 1} of {count}: {response.status_code} "
                                 f"(a slot whose client left was never freed?)")
        time.sleep(0.05)
    return opened


def test_streams_per_token_are_capped_and_freed_when_a_client_leaves(api):
    run_id = gated_run(api["engine"], "cap", "dave")
    path = f"/runs/{run_id}/events/stream"
    dave, bob = client_of(api, "dave"), client_of(api, "bob")
    first = dave.send(dave.build_request("GET", path), stream=True)
    second = dave.send(dave.build_request("GET", path), stream=True)
    try:
        assert first.status_code == second.status_code == 200
        refused = dave.send(dave.build_request("GET", path), stream=True)     # were it a stream, it
        try:                                                                 # would never end
            assert refused.status_code == 429
            refused.read()
            assert "max_streams_per_token" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) > 0
        finally:
            refused.close()
        with bob.stream("GET", f"/runs/{gated_run(api['engine'], 'cap-bob', 'bob')}/events/stream") as other:
            assert other.status_code == 200          # another token has slots of its own
        first.close()                                # the client leaves: its slot comes back
        (third,) = hold_streams(dave, path, 1)
        third.close()
    finally:
        first.close()
        second.close()
        dave.close()
        bob.close()
        GATES.setdefault("cap", threading.Event()).set()
        GATES.setdefault("cap-bob", threading.Event()).set()


def test_a_stream_that_ends_frees_its_slot(api):
    """Streams of a finished run end at once; opened one after another, far more than the cap,
    each finds a slot (the slot is freed before the client sees the stream end)."""
    last = api["seqs"][-1]
    erin = client_of(api, "erin")
    for _ in range(3 * CAP):
        with erin.stream("GET", f"/runs/{api['run_id']}/events/stream",
                          headers={"Last-Event-ID": str(last - 1)}) as response:
            assert response.status_code == 200, response.read()
            assert sse_ids(response) == [last]
    # and the cap still holds afterwards: no slot was freed twice
    run_id = gated_run(api["engine"], "after-ends", "erin")
    path = f"/runs/{run_id}/events/stream"
    opened = [erin.send(erin.build_request("GET", path), stream=True) for _ in range(CAP + 1)]
    try:
        assert [r.status_code for r in opened] == [200] * CAP + [429]
    finally:
        for response in opened:
            response.close()
        erin.close()
        GATES.setdefault("after-ends", threading.Event()).set()
