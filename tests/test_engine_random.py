"""Random workflows against an independent model of what must happen.

Each task is given a behaviour (succeed, always fail, or fail its first k attempts) and a retry
budget. The model says how every task and run must end; the engine runs 25 random DAGs at once on a
real SQLite file, and the outcome, the projections, the hash chain and a fresh fold of each run's
events must all agree with the model.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from maze_core import events as ev
from maze_core.audit import replay_check, verify_chain
from maze_core.dag import DAG
from maze_core.registry import task
from maze_core.state import RunState

_attempts: Counter[str] = Counter()
_lock = threading.Lock()


@task
def behave(key: str, fail_first: int, upstream: list) -> dict:
    """Fails its first ``fail_first`` attempts (-1: every attempt), else sums its inputs plus one."""
    with _lock:
        _attempts[key] += 1
        attempt = _attempts[key]
    if fail_first < 0 or attempt <= fail_first:
        raise RuntimeError(f"{key} attempt {attempt} fails")
    return {"value": 1 + sum(upstream)}


def random_workflow(rng: random.Random, name: str) -> tuple[DAG, dict[str, str], dict[str, int | None]]:
    """A random DAG, the final status the model expects of each task, and the expected values."""
    dag = DAG(name)
    expected: dict[str, str] = {}
    values: dict[str, int | None] = {}
    ids: list[str] = []
    for i in range(rng.randint(1, 12)):
        parents = rng.sample(ids, k=min(len(ids), rng.randint(0, 3)))
        kind = rng.choices(["ok", "fail", "flaky"], weights=[6, 1, 2])[0]
        retries = rng.randint(0, 2)
        fail_first = {"ok": 0, "fail": -1, "flaky": rng.randint(1, 3)}[kind]
        tid = dag.add_task(behave, inputs={"key": f"{name}/{i}", "fail_first": fail_first,
                                           "upstream": [f"{p}.output.value" for p in parents]},
                           retries=retries)
        if any(expected[p] in ("failed", "skipped") for p in parents):
            expected[tid], values[tid] = "skipped", None
        elif fail_first < 0 or fail_first > retries:
            expected[tid], values[tid] = "failed", None
        else:
            expected[tid], values[tid] = "succeeded", 1 + sum(values[p] for p in parents)
        ids.append(tid)
    return dag, expected, values


@pytest.fixture(params=["fifo", "daps"])
def policy_engine(request, tmp_path):
    """The engine under each scheduling policy: the outcome must not depend on the order."""
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry

    from .conftest import make_config
    with _lock:
        _attempts.clear()    # attempt counts are per workflow name: each policy starts afresh
    eng = Engine.from_config(make_config(tmp_path, validate_events=True, scheduler=request.param),
                             registry=ToolRegistry())
    eng.start()
    yield eng
    eng.stop()
    eng.store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_workflows_end_as_the_model_says(policy_engine, seed):
    engine = policy_engine
    rng = random.Random(seed)
    runs = {}
    for n in range(25):
        dag, expected, values = random_workflow(rng, f"s{seed}-r{n}")
        runs[engine.submit(dag)] = (dag, expected, values)
    for run_id, (dag, expected, values) in runs.items():
        row = engine.wait(run_id, timeout=60)
        want_run = "failed" if any(s != "succeeded" for s in expected.values()) else "succeeded"
        assert row["status"] == want_run, (run_id, expected)
        stored = {r["task_id"]: r["status"] for r in engine.store.list_tasks(run_id)}
        assert stored == expected
        for tid, value in values.items():
            if value is not None:
                assert engine.result(run_id, tid) == {"value": value}
        # the fold of the log alone gives the same statuses as the projection
        folded = RunState.from_events(run_id, engine.store.read_stream(ev.run_stream(run_id)))
        assert {tid: t.status for tid, t in folded.tasks.items()} == expected
        assert folded.status == want_run and folded.open == 0
        # attempts: a task that succeeded after k failures was queued k + 1 times
        queued = Counter(e.data["task_id"] for e in engine.store.read_stream(ev.run_stream(run_id))
                         if e.type == ev.TASK_QUEUED)
        for tid, node in dag.tasks.items():
            fail_first = node.inputs["fail_first"]
            if expected[tid] == "succeeded":
                assert queued[tid] == fail_first + 1
            elif expected[tid] == "failed":
                assert queued[tid] == node.retries + 1
            else:
                assert queued[tid] == 0
    assert verify_chain(engine.store).ok
    assert replay_check(engine.store) == []
    assert engine.stats().active_attempts == 0, "the engine's count of attempts in flight (group commit) drifted"
