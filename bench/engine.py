"""Engine overhead against its floor, measured side by side in one process.

W1 wide: 1 source -> 1,000 no-op tasks -> 1 sink (throughput, tasks/s).
W2 chain: 200 no-op tasks one after another (latency, ms per task).
Each runs on Maze (local executor, every event persisted to a real SQLite file) and on plain
concurrent.futures (the floor: no events, no store). Then raw event-store appends (events/s).
Then, unless --no-ray, the same two DAGs on Maze's Ray executor (an embedded Ray with 2 CPUs)
next to the same DAGs written as plain Ray tasks in the same Ray (the peer: no persistence). W1
also runs with fusion off ([ray] fuse = false: one Ray task per Maze task), to show what
fusing tiny calls buys.

    python bench/engine.py [--repeat 5] [--scheduler daps|fifo] [--no-ray]

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


def maze_engine(tmp: Path, executor: str = "local", scheduler: str = "daps") -> Engine:
    cfg = MazeConfig()
    cfg.paths.data_dir = str(tmp)
    cfg.engine.executor = executor
    cfg.engine.scheduler = scheduler
    cfg.local.cpus = CPUS
    cfg.logging.level = "WARNING"
    cfg.ray = {"num_cpus": CPUS, "num_gpus": 0}
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


def ray_peer():
    import ray

    @ray.remote
    def r_noop(x: int = 0) -> dict:
        return {"x": x}

    @ray.remote
    def r_x(d: dict) -> int:
        return d["x"]

    @ray.remote
    def r_sink(values: list) -> dict:
        return {"n": len(values)}

    def wide() -> float:
        start = time.perf_counter()
        x = ray.get(r_noop.remote(1))["x"]
        refs = [r_noop.remote(x) for _ in range(WIDE)]
        ray.get(r_sink.remote([d["x"] for d in ray.get(refs)]))
        return time.perf_counter() - start

    def chain() -> float:
        """Each step gets the upstream's field, read by the driver (what Maze's DAG does)."""
        start = time.perf_counter()
        ref = r_noop.remote(0)
        for _ in range(CHAIN - 1):
            ref = r_noop.remote(ray.get(ref)["x"])
        ray.get(ref)
        return time.perf_counter() - start

    def chain_refs() -> float:
        """Ray at its best: the whole chain submitted at once, values passed as ObjectRefs."""
        start = time.perf_counter()
        ref = r_noop.remote(0)
        for _ in range(CHAIN - 1):
            ref = r_noop.remote(r_x.remote(ref))
        ray.get(ref)
        return (time.perf_counter() - start) / 2   # two Ray tasks per step

    return wide, chain, chain_refs


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
    parser.add_argument("--scheduler", default="daps", choices=["daps", "fifo"])
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor part")
    args = parser.parse_args()
    w1_maze, w1_floor, w2_maze, w2_floor, appends = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        eng = maze_engine(Path(tmp) / "maze", scheduler=args.scheduler)
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
    if not args.no_ray:
        bench_ray(args)


def bench_ray(args: argparse.Namespace) -> None:
    w1_maze, w1_plain, w1_ray, w2_maze, w2_ray = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        eng = maze_engine(Path(tmp) / "ray", executor="ray", scheduler=args.scheduler)
        peer_wide, peer_chain, peer_refs = ray_peer()
        w2_refs = []
        wide, chain = wide_dag(), chain_dag()
        maze_run(eng, wide), peer_wide(), maze_run(eng, chain), peer_chain()   # warm-up: workers
        ray_cfg = eng.executor.cfg
        for _ in range(args.repeat):
            w1_maze.append((WIDE + 2) / maze_run(eng, wide))
            ray_cfg.fuse = False          # the same engine, one Ray task per Maze task
            w1_plain.append((WIDE + 2) / maze_run(eng, wide))
            ray_cfg.fuse = True
            w1_ray.append((WIDE + 2) / peer_wide())
            w2_maze.append(maze_run(eng, chain) / CHAIN * 1000)
            w2_ray.append(peer_chain() / CHAIN * 1000)
            w2_refs.append(peer_refs() / CHAIN * 1000)
        eng.stop()
    med = statistics.median
    print(f"Ray executor, embedded Ray with {CPUS} CPUs, scheduler {args.scheduler}:")
    print(f"W1 wide  ({WIDE} tasks): maze {med(w1_maze):8.0f} tasks/s | raw Ray {med(w1_ray):8.0f} tasks/s "
          f"| maze/ray {med(w1_maze) / med(w1_ray):.2f}x (target >= 0.7x)")
    print(f"         (maze with [ray] fuse = false, a Ray task per Maze task: {med(w1_plain):.0f} tasks/s, "
          f"{med(w1_plain) / med(w1_ray):.2f}x)")
    print(f"W2 chain ({CHAIN} tasks): maze {med(w2_maze):8.3f} ms/task | raw Ray {med(w2_ray):8.3f} ms/task "
          f"| overhead +{med(w2_maze) - med(w2_ray):.3f} ms/task (target <= +1.5 ms)")
    print(f"         (raw Ray passing ObjectRefs, whole chain submitted at once: {med(w2_refs):.3f} ms/task)")


if __name__ == "__main__":
    main()
