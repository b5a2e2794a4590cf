"""The server API and the SDK, end to end, against raw Ray and raw HTTP measured in the same run.

W3: one-task workflows built, submitted and awaited through the SDK (``new_dag`` + ``add_task`` +
``submit_dag`` + ``wait`` + ``get_task_result``), one after another: median and p95 ms per
workflow. Target: <= 20 ms median.
Peers, same run, same machine:
  - raw Ray round trip: ``ray.get(f.remote())`` of a trivial remote function on an embedded Ray
    (``ray.init(address="local", num_cpus=2)``), in a subprocess of its own;
  - HTTP floor: ``GET /health`` through the same SDK client (what any request costs).
Then 200 concurrent ``POST /get/`` (one keep-alive connection each, a minimal asyncio HTTP/1.1
load generator), in ``--rounds`` bursts: p50/p99 ms, errors, requests/s.

The bench starts its own server (uvicorn + ``maze_api.create_app``, SQLite in a temporary folder)
on a free loopback port in a subprocess, with the local executor unless ``--executor ray``.

    python bench/api.py [--n 100] [--concurrency 200] [--rounds 5] [--executor local|ray]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from maze_client import MazeClient, task

REPO = Path(__file__).resolve().parent.parent

SERVER = """
import sys, uvicorn
from maze_core.config import load_config
from maze_api import create_app
uvicorn.run(create_app(load_config()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""

RAY_ROUND_TRIP = """
import json, statistics, sys, time
import ray
n = int(sys.argv[1])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         configure_logging=False)

@ray.remote
def f(x):
    return {"y": x}

for i in range(20):                      # warm-up: start the workers
    ray.get(f.remote(i))
times = []
for i in range(n):
    start = time.perf_counter()
    ray.get(f.remote(i))
    times.append((time.perf_counter() - start) * 1000)
ray.shutdown()
print(json.dumps(times))
"""


@task(name="bench_echo", description="Return its input")
def echo(x: int) -> dict:
    return {"y": x}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_server(tmp: Path, executor: str) -> tuple[subprocess.Popen, str]:
    config = tmp / "config.toml"
    config.write_text(f"""
[paths]
project_root = "{tmp}"
data_dir = "{tmp / 'data'}"

[engine]
executor = "{executor}"
scheduler = "fifo"

[local]
cpus = 2

[ray]
num_cpus = 2

[logging]
level = "WARNING"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAZE_")}
    env["MAZE_CONFIG"] = str(config)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{(tmp / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer /health within 120 s")


def w3(client: MazeClient, n: int) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        dag = client.new_dag("w3")
        t1 = dag.add_task(echo, inputs={"x": i})
        run_id = client.submit_dag(dag)
        run = client.wait(run_id, timeout=60)
        result = client.get_task_result(run_id, t1)
        times.append((time.perf_counter() - start) * 1000)
        assert run.status == "succeeded" and result["data"] == {"y": i}, (run, result)
    return times


def http_floor(client: MazeClient, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.health_check()
        times.append((time.perf_counter() - start) * 1000)
    return times


class _Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for ``POST /get/``: a load
    generator much lighter than an HTTP client library (httpx's async client spent more CPU per
    request than the server on this 2-core machine, so it measured itself)."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self) -> tuple[float, bool]:
        assert self.reader is not None and self.writer is not None
        start = time.perf_counter()
        try:
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await self.reader.readexactly(length)
            ok = head.startswith(b"HTTP/1.1 200") and b'"task_status":"finished"' in body
        except (OSError, asyncio.IncompleteReadError, ValueError):
            ok = False
        return (time.perf_counter() - start) * 1000, ok

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def concurrent_gets(url: str, run_id: str, task_id: str, concurrency: int,
                          rounds: int) -> tuple[list[float], int, list[float]]:
    """``rounds`` bursts of ``concurrency`` simultaneous ``POST /get/``, one connection each
    (opened before the first burst). Returns every latency (ms), the errors and each burst's wall
    time (s)."""
    parsed = httpx.URL(url)
    body = json.dumps({"run_id": run_id, "task_id": task_id}).encode()
    request = (f"POST /get/ HTTP/1.1\r\nHost: {parsed.host}:{parsed.port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    connections = [_Connection(parsed.host, parsed.port, request) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in connections))
    try:
        await asyncio.gather(*(c.post() for c in connections))          # warm-up burst
        latencies: list[float] = []
        errors, walls = 0, []
        for _ in range(rounds):
            start = time.perf_counter()
            results = await asyncio.gather(*(c.post() for c in connections))
            walls.append(time.perf_counter() - start)
            latencies += [t for t, _ in results]
            errors += sum(1 for _, ok in results if not ok)
        return latencies, errors, walls
    finally:
        for c in connections:
            c.close()


def ray_round_trip(n: int) -> list[float] | None:
    proc = subprocess.run([sys.executable, "-c", RAY_ROUND_TRIP, str(n)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        print(f"raw Ray round trip failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):7.2f} ms | p95 {percentile(values, 95):7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="W3 workflows (and Ray round trips)")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent POST /get/ per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of concurrent POST /get/")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"server executor: {args.executor}")
    ray_times = ray_round_trip(args.n)
    with tempfile.TemporaryDirectory() as tmpdir:
        proc, url = start_server(Path(tmpdir), args.executor)
        try:
            with MazeClient(url, timeout=60) as client:
                w3(client, 10)                                      # warm-up
                w3_times = w3(client, args.n)
                floor = http_floor(client, args.n)
                dag = client.new_dag("get-target")
                t1 = dag.add_task(echo, inputs={"x": 7})
                run_id = client.submit_dag(dag)
                client.wait(run_id, timeout=60)
            get_times, errors, walls = asyncio.run(concurrent_gets(url, run_id, t1, args.concurrency,
                                                                   args.rounds))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    med = statistics.median
    print(f"W3 one-task workflow via SDK (n={args.n}): {fmt(w3_times)}  (target: median <= 20 ms)")
    print(f"HTTP floor GET /health via SDK (n={args.n}): {fmt(floor)}")
    if ray_times:
        print(f"raw Ray round trip ray.get(f.remote()) (n={args.n}): {fmt(ray_times)}")
        print(f"ratios: W3/Ray median {med(w3_times) / med(ray_times):.1f}x, "
              f"p95 {percentile(w3_times, 95) / percentile(ray_times, 95):.1f}x; "
              f"W3/HTTP floor median {med(w3_times) / med(floor):.1f}x")
    else:
        print(f"ratios: W3/HTTP floor median {med(w3_times) / med(floor):.1f}x (no Ray figure)")
    print(f"{args.concurrency} concurrent POST /get/ x {args.rounds} rounds: p50 {percentile(get_times, 50):.2f} ms | "
          f"p99 {percentile(get_times, 99):.2f} ms | errors {errors} | "
          f"{args.concurrency / med(walls):,.0f} requests/s (median round {med(walls) * 1000:.0f} ms)")
    verdict = "meets" if med(w3_times) <= 20 else "misses"
    print(f"W3 median {med(w3_times):.2f} ms {verdict} the 20 ms target")


if __name__ == "__main__":
    main()
