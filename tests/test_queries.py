"""The read model (maze_core.queries): one task's result or failure, every task's outcome, paged."""

from __future__ import annotations

import pytest

from maze_core import queries, results
from maze_core.dag import DAG
from maze_core.errors import NotFoundError, RunStateError
from maze_core.registry import task


@task
def make(n: int) -> dict:
    return {"n": n}


@task
def as_tuple(n: int) -> tuple:
    return (n, n)


@task
def fail(x: int = 0) -> dict:
    raise ValueError(f"bad {x}")


def _run(engine, dag: DAG) -> str:
    run_id = engine.submit(dag)
    engine.wait(run_id, timeout=20)
    return run_id


def test_task_result_and_failure(engine):
    dag = DAG("q")
    ok = dag.add_task(make, inputs={"n": 3})
    tup = dag.add_task(as_tuple, inputs={"n": 2})
    bad = dag.add_task(fail, inputs={"x": 7})
    run_id = _run(engine, dag)
    store = engine.store
    assert queries.task_result(store, run_id, ok) == {"n": 3}
    assert queries.task_result(store, run_id, tup, results.decode) == (2, 2)
    assert queries.task_result(store, run_id, tup)["__maze_blob__"]   # the JSON view
    assert engine.result(run_id, tup) == (2, 2)
    failure = queries.task_failure(store, run_id, bad)
    assert "bad 7" in failure.error and "ValueError" in failure.traceback
    with pytest.raises(RunStateError, match="has no result: it is failed"):
        queries.task_result(store, run_id, bad)
    with pytest.raises(NotFoundError, match="has no task"):
        queries.task_result(store, run_id, "nope")
    with pytest.raises(NotFoundError, match="does not exist"):
        queries.task_result(store, "no-such-run", ok)
    outcomes = queries.task_outcomes(store, run_id)
    assert outcomes[ok] == {"result": {"n": 3}}
    assert "ValueError" in outcomes[bad]["traceback"]


def test_scan_pages_give_the_same_answer(engine):
    """A page smaller than the stream still finds each task's last event (paging is bounded memory)."""
    dag = DAG("paged")
    refs = [dag.add_task(make, inputs={"n": i}) for i in range(6)]
    run_id = _run(engine, dag)
    whole = queries.last_task_events(engine.store, run_id, {"TaskSucceeded"}, page=100_000)
    paged = queries.last_task_events(engine.store, run_id, {"TaskSucceeded"}, page=2)
    assert {k: e.seq for k, e in whole.items()} == {k: e.seq for k, e in paged.items()}
    assert len(paged) == len(refs)
    one = queries.last_task_events(engine.store, run_id, {"TaskSucceeded"}, refs[4], page=3)
    assert list(one) == [(refs[4], "TaskSucceeded")]
    assert queries.stored_result(engine.store, run_id, refs[4]) == {"n": 4}
