"""Engine overhead against its floor, measured side by side in one process.

W1 wide: 1 source -> 1,000 no-op tasks -> 1 sink (throughput, tasks/s).
W2 chain: 200 no-op tasks one after another (latency, ms per task).
Each runs on Maze (local executor, every event persisted to a real SQLite file) and on plain
concurrent.futures (the floor: no events, no store). Then raw event-store appends (events/s).

    python bench/engine.py [--repeat 5]

Prints medians of --repeat runs and the Maze/floor ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from maze_core.config import MazeConfig
from maze_core.dag import DAG
from maze_core.engine import Engine
from maze_core.events import NewEvent
from maze_core.registry import ToolRegistry, task

WIDE, CHAIN, CPUS = 1000, 200, 2


@task
def noop(x: int = 0) -> dict:
    return {"x": x}


@task
def sink(values: list) -> dict:
    return {"n": len(values)}


def wide_dag() -> DAG:
    dag = DAG("w1-wide")
    src = dag.add_task(noop, inputs={"x": 1})
    mids = [dag.add_task(noop, inputs={"x": src.output.x}) for _ in range(WIDE)]
    dag.add_task(sink, inputs={"values": [m.output.x for m in mids]})
    return dag


def chain_dag() -> DAG:
    dag = DAG("w2-chain")
    prev = dag.add_task(noop, inputs={"x": 0})
    for _ in range(CHAIN - 1):
        prev = dag.add_task(noop, inputs={"x": prev.output.x})
    return dag


def maze_engine(tmp: Path) -> Engine:
    cfg = MazeConfig()
    cfg.paths.data_dir = str(tmp)
    cfg.local.cpus = CPUS
    cfg.logging.level = "WARNING"
    eng = Engine.from_config(cfg, registry=ToolRegistry())
    eng.start(resume=False)
    return eng


def maze_run(eng: Engine, dag: DAG) -> float:
    start = time.perf_counter()
    run_id = eng.submit(dag)
    assert eng.wait(run_id)["status"] == "succeeded"
    return time.perf_counter() - start


def floor_wide(pool: ThreadPoolExecutor) -> float:
    start = time.perf_counter()
    x = pool.submit(noop, 1).result()["x"]
    futures = [pool.submit(noop, x) for _ in range(WIDE)]
    wait(futures)
    pool.submit(sink, [f.result()["x"] for f in futures]).result()
    return time.perf_counter() - start


def floor_chain(pool: ThreadPoolExecutor) -> float:
    start = time.perf_counter()
    x = 0
    for _ in range(CHAIN):
        x = pool.submit(noop, x).result()["x"]
    return time.perf_counter() - start


def store_appends(tmp: Path, batches: int = 50, size: int = 1000) -> float:
    from maze_sqlite.store import SqliteStore
    tmp.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(tmp / "append.db")
    events = [NewEvent("run:bench", "TaskQueued", {"task_id": f"t{i}", "attempt": 1}) for i in range(size)]
    start = time.perf_counter()
    for _ in range(batches):
        store.append(events)
    elapsed = time.perf_counter() - start
    store.close()
    return batches * size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    w1_maze, w1_floor, w2_maze, w2_floor, appends = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        eng = maze_engine(Path(tmp) / "maze")
        pool = ThreadPoolExecutor(max_workers=CPUS)
        wide, chain = wide_dag(), chain_dag()
        maze_run(eng, wide), floor_wide(pool)                      # warm-up
        for i in range(args.repeat):
            w1_maze.append((WIDE + 2) / maze_run(eng, wide))
            w1_floor.append((WIDE + 2) / floor_wide(pool))
            w2_maze.append(maze_run(eng, chain) / CHAIN * 1000)
            w2_floor.append(floor_chain(pool) / CHAIN * 1000)
            appends.append(store_appends(Path(tmp) / f"a{i}"))
        eng.stop()
        pool.shutdown()
    med = statistics.median
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"medians of {args.repeat}")
    print(f"W1 wide  ({WIDE} tasks): maze {med(w1_maze):8.0f} tasks/s | futures {med(w1_floor):8.0f} tasks/s "
          f"| maze/futures {med(w1_maze) / med(w1_floor):.2f}x (target >= 2,000 tasks/s)")
    print(f"W2 chain ({CHAIN} tasks): maze {med(w2_maze):8.3f} ms/task | futures {med(w2_floor):8.3f} ms/task "
          f"| overhead +{med(w2_maze) - med(w2_floor):.3f} ms/task")
    print(f"event store appends (batches of 1,000): {med(appends):,.0f} events/s (target >= 50,000)")


if __name__ == "__main__":
    main()
