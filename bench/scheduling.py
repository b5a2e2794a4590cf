"""Scheduling policies side by side: 30 runs submitted at once, mixed shapes, on 2 CPUs.

    .venv/bin/python bench/scheduling.py [--rounds 3] [--executor local|ray] [--scale 1.0]

The workload (the same runs, in the same shuffled submission order, for every policy):
  - 10 long chains: 10 steps of 40 ms each;
  - 8 wide fan-outs: one split, 12 branches of 120 ms, one join;
  - 12 small runs: one task of 20 ms.
Task bodies sleep, so the 2 CPUs are slots, not compute: what differs is only the order in which
each policy hands out the slots. Before measuring, each engine runs every tool once (a warm-up
that both policies get), so ``daps`` starts with the durations an engine that has been running a
while would know. Reported per policy: mean and p95 run latency (submit -> run finished) and the
makespan, medians over the rounds, and the fifo/daps ratio (> 1: daps is better).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maze_core import DAG, task  # noqa: E402
from maze_core.config import MazeConfig  # noqa: E402
from maze_core.engine import Engine  # noqa: E402
from maze_core.registry import ToolRegistry  # noqa: E402

SCALE = 1.0


@task(name="chain_step")
def chain_step(i: int, prev: int = 0) -> dict:
    time.sleep(0.040 * SCALE)
    return {"i": prev + 1}


@task(name="split")
def split(n: int) -> dict:
    time.sleep(0.010 * SCALE)
    return {"parts": list(range(n))}


@task(name="branch")
def branch(part: int) -> dict:
    time.sleep(0.120 * SCALE)
    return {"part": part}


@task(name="join")
def join(parts: list) -> dict:
    time.sleep(0.010 * SCALE)
    return {"n": len(parts)}


@task(name="quick")
def quick(x: int) -> dict:
    time.sleep(0.020 * SCALE)
    return {"x": x}


def chain(name: str, length: int = 10) -> DAG:
    dag = DAG(name)
    prev = dag.add_task(chain_step, inputs={"i": 0})
    for i in range(1, length):
        prev = dag.add_task(chain_step, inputs={"i": i, "prev": prev.output.i})
    return dag


def fan(name: str, width: int = 12) -> DAG:
    dag = DAG(name)
    s = dag.add_task(split, inputs={"n": width})
    parts = [dag.add_task(branch, inputs={"part": f"{s}.output.parts.{i}"}) for i in range(width)]
    dag.add_task(join, inputs={"parts": [p.output.part for p in parts]})
    return dag


def small(name: str) -> DAG:
    dag = DAG(name)
    dag.add_task(quick, inputs={"x": 1})
    return dag


def workload(seed: int = 7) -> list[DAG]:
    dags = ([chain(f"chain-{i}") for i in range(10)] + [fan(f"fan-{i}") for i in range(8)]
            + [small(f"small-{i}") for i in range(12)])
    random.Random(seed).shuffle(dags)
    return dags


def make_engine(policy: str, executor: str, folder: Path) -> Engine:
    cfg = MazeConfig()
    cfg.paths.data_dir = str(folder / policy)
    cfg.engine.scheduler = policy
    cfg.engine.executor = executor
    cfg.local.cpus = 2
    cfg.local.prefetch = 0        # the policy, not a backlog, decides what runs next
    cfg.ray = {"num_cpus": 2, "prefetch": 0}
    reg = ToolRegistry()
    eng = Engine.from_config(cfg, registry=reg)
    eng.start()
    return eng


def measure(eng: Engine, seed: int) -> dict[str, float]:
    warm = [eng.submit(d) for d in (chain("warm-c", 2), fan("warm-f", 2), small("warm-s"))]
    for r in warm:
        eng.wait(r, timeout=120)
    dags = workload(seed)
    t0 = time.time()
    run_ids = [eng.submit(d) for d in dags]
    latencies = []
    for r in run_ids:
        row = eng.wait(r, timeout=600)
        assert row["status"] == "succeeded", row
    for r in run_ids:
        row = eng.store.get_run(r)
        latencies.append(row["finished_at"] - t0)
    latencies.sort()
    return {"mean": statistics.fmean(latencies),
            "p95": latencies[math.ceil(0.95 * len(latencies)) - 1],   # nearest rank
            "makespan": max(latencies)}


def main() -> None:
    global SCALE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--executor", default="local", choices=["local", "ray"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every sleep")
    args = ap.parse_args()
    SCALE = args.scale
    policies = ["fifo", "daps"]
    results: dict[str, list[dict[str, float]]] = {p: [] for p in policies}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for p in policies:   # with Ray, both engines share the one Ray of this process
            engines[p] = make_engine(p, args.executor, Path(tmp))
        try:
            for rnd in range(args.rounds):
                for p in (policies if rnd % 2 == 0 else policies[::-1]):   # alternate who goes first
                    results[p].append(measure(engines[p], seed=rnd))
                    print(f"round {rnd + 1} {p:>4}: " + "  ".join(
                        f"{k} {v:.2f}s" for k, v in results[p][-1].items()), flush=True)
        finally:
            for eng in engines.values():
                eng.stop()
    med = {p: {k: statistics.median(r[k] for r in results[p]) for k in ("mean", "p95", "makespan")}
           for p in policies}
    print(f"\n30 runs (10 chains x10, 8 fan-outs x12, 12 single tasks) on 2 CPUs, executor "
          f"{args.executor}, medians of {args.rounds} rounds")
    print(f"{'policy':<8}{'mean latency':>14}{'p95 latency':>14}{'makespan':>12}")
    for p in policies:
        m = med[p]
        print(f"{p:<8}{m['mean']:>13.2f}s{m['p95']:>13.2f}s{m['makespan']:>11.2f}s")
    print(f"{'fifo/daps':<8}{med['fifo']['mean'] / med['daps']['mean']:>13.2f}x"
          f"{med['fifo']['p95'] / med['daps']['p95']:>13.2f}x"
          f"{med['fifo']['makespan'] / med['daps']['makespan']:>11.2f}x")


if __name__ == "__main__":
    main()
