"""The daps policy: critical path first within a run, least work left first across runs, ageing
so nothing starves, durations learned from events and from the store, backfilling."""

from __future__ import annotations

import pytest

from maze_core import events as ev
from maze_core.resources import normalize
from maze_core.scheduler import ReadyTask
from maze_daps import DapsScheduler, DurationModel

from .test_fifo import Slots


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(type_: str, run: str, data: dict, seq: int = 1) -> ev.Event:
    return ev.Event(seq, f"run:{run}", 1, type_, 0.0, "test", data, "")


def submitted(run: str, tasks: dict[str, tuple[str, list[str]]]) -> ev.Event:
    """tasks: id -> (func_name, dependencies)."""
    return event(ev.RUN_SUBMITTED, run, {"name": run, "tasks": {
        tid: {"func_name": f, "dependencies": deps} for tid, (f, deps) in tasks.items()}})


def ready(run: str, task_id: str, func: str, cpu: float = 1) -> ReadyTask:
    return ReadyTask(run, task_id, func, normalize({"cpu": cpu}), 0, 0.0)


def succeeded(run: str, task_id: str, seconds: float) -> ev.Event:
    return event(ev.TASK_SUCCEEDED, run, {"task_id": task_id, "attempt": 1, "duration_s": seconds})


def teach(s: DapsScheduler, durations: dict[str, float]) -> None:
    for func, seconds in durations.items():
        s.model.observe(func, seconds)


def test_critical_path_first_within_a_run():
    s = DapsScheduler(clock=Clock())
    teach(s, {"step": 1.0, "leaf": 1.0})
    # a -> b -> c is a chain; d and e stand alone: a is on the longest path
    s.observe(submitted("r", {"d": ("leaf", []), "e": ("leaf", []), "a": ("step", []),
                              "b": ("step", ["a"]), "c": ("step", ["b"])}))
    for tid, f in (("d", "leaf"), ("e", "leaf"), ("a", "step")):
        s.add(ready("r", tid, f))
    assert [t.task_id for t in s.select(Slots(1))] == ["a"]
    assert len(s) == 2


def test_learned_durations_reorder_the_critical_path():
    s = DapsScheduler(clock=Clock())
    s.observe(submitted("r", {"x": ("fast", []), "y": ("slow", [])}))
    for i in range(5):   # what the events teach: "slow" takes 3 s, "fast" 0.1 s
        s.observe(submitted(f"h{i}", {"t": ("slow", []), "u": ("fast", [])}))
        s.observe(succeeded(f"h{i}", "t", 3.0))
        s.observe(succeeded(f"h{i}", "u", 0.1))
    assert s.model.estimate("slow") == pytest.approx(3.0)
    assert s.model.estimate("fast") == pytest.approx(0.1)
    s.add(ready("r", "x", "fast"))
    s.add(ready("r", "y", "slow"))
    assert [t.task_id for t in s.select(Slots(1))] == ["y"]


def test_least_work_left_goes_first_across_runs():
    clock = Clock()
    s = DapsScheduler(clock=clock)
    teach(s, {"f": 1.0})
    s.observe(submitted("big", {f"t{i}": ("f", []) for i in range(10)}))
    s.observe(submitted("small", {"t0": ("f", [])}))
    for i in range(10):
        s.add(ready("big", f"t{i}", "f"))
    s.add(ready("small", "t0", "f"))
    first = s.select(Slots(1))
    assert [(t.run_id, t.task_id) for t in first] == [("small", "t0")]


def test_ageing_lets_a_big_run_pass_newcomers():
    clock = Clock()
    s = DapsScheduler(aging=0.5, clock=clock)
    teach(s, {"f": 1.0})
    s.observe(submitted("big", {f"t{i}": ("f", []) for i in range(10)}))
    s.add(ready("big", "t0", "f"))
    clock.now += 30          # waited 30 s: 15 s of credit against its 10 s of work
    s.observe(submitted("fresh", {"t0": ("f", []), "t1": ("f", [])}))
    s.add(ready("fresh", "t0", "f"))
    assert s.priority("big") < s.priority("fresh")
    assert [t.run_id for t in s.select(Slots(1))] == ["big"]
    with pytest.raises(ValueError):
        DapsScheduler(aging=0)


def test_no_run_starves_under_a_stream_of_small_runs():
    """Small runs keep arriving; the big run still gets every one of its tasks within bounds."""
    clock = Clock()
    s = DapsScheduler(aging=0.5, clock=clock)
    teach(s, {"f": 1.0})
    s.observe(submitted("big", {f"t{i}": ("f", []) for i in range(5)}))
    for i in range(5):
        s.add(ready("big", f"t{i}", "f"))
    big_done, step = 0, 0
    while big_done < 5 and step < 200:
        step += 1
        s.observe(submitted(f"s{step}", {"t": ("f", [])}))
        s.add(ready(f"s{step}", "t", "f"))
        for t in s.select(Slots(1)):
            clock.now += 1.0
            s.observe(succeeded(t.run_id, t.task_id, 1.0))
            big_done += t.run_id == "big"
    assert big_done == 5, "the big run starved"
    assert step < 40


def test_backfill_and_remove():
    s = DapsScheduler(clock=Clock())
    s.observe(submitted("r", {"big": ("f", []), "small": ("g", [])}))
    s.add(ready("r", "big", "f", cpu=4))
    s.add(ready("r", "small", "g", cpu=1))
    s.add(ready("r", "small", "g", cpu=1))      # duplicates are ignored
    assert len(s) == 2
    assert [t.task_id for t in s.select(Slots(2))] == ["small"]
    assert s.remove("r", "big") and not s.remove("r", "big")
    assert s.select(Slots(8)) == [] and len(s) == 0


def test_tasks_of_runs_it_never_saw_submitted_are_scheduled():
    s = DapsScheduler(clock=Clock())
    s.add(ready("resumed", "t3", "f"))
    assert [t.task_id for t in s.select(Slots(1))] == ["t3"]


def test_unknown_tools_are_estimated_at_the_mean_of_known_ones():
    m = DurationModel(default_s=1.0)
    assert m.estimate("never") == 1.0
    m.observe("a", 2.0)
    m.observe("b", 4.0)
    assert m.estimate("never") == pytest.approx(3.0)


def test_engine_seeds_the_model_from_the_store(tmp_path):
    from maze_core import DAG, task
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry

    from .conftest import make_config

    @task
    def nap() -> dict:
        import time
        time.sleep(0.05)
        return {}

    cfg = make_config(tmp_path, scheduler="daps")
    with Engine.from_config(cfg, registry=ToolRegistry()) as eng:
        dag = DAG("learn")
        dag.add_task(nap)
        assert eng.wait(eng.submit(dag), timeout=30)["status"] == "succeeded"
        assert eng.scheduler.model.estimate("nap") >= 0.05
    with Engine.from_config(cfg, registry=ToolRegistry()) as again:   # a restart keeps it
        assert again.scheduler.model.samples["nap"] == 1
        assert again.scheduler.model.estimate("nap") >= 0.05


def test_critical_path_holds_when_roots_are_added_before_the_graph_is_seen():
    """The engine adds a run's roots when it applies RunSubmitted, and the policy observes that
    event only after the commit: the graph arrives after the roots. The critical path must still
    count, for the roots already waiting and for the tasks that become ready later."""
    s = DapsScheduler(clock=Clock())
    teach(s, {"step": 1.0, "leaf": 1.5})
    # a -> b -> c is a chain of 3 s; d stands alone (1.5 s)
    graph = {"d": ("leaf", []), "a": ("step", []), "b": ("step", ["a"]), "c": ("step", ["b"])}
    s.add(ready("r", "d", "leaf"))
    s.add(ready("r", "a", "step"))
    s.observe(submitted("r", graph))
    assert [t.task_id for t in s.select(Slots(1))] == ["a"], "a heads a 3 s path, d is 1.5 s"
    s.observe(succeeded("r", "a", 1.0))
    s.add(ready("r", "b", "step"))
    assert [t.task_id for t in s.select(Slots(1))] == ["b"], "b heads a 2 s path, d is 1.5 s"


def test_the_first_dispatch_of_a_run_already_follows_its_critical_path(tmp_path):
    """The engine dispatches a run's roots in the same turn it records the run, before the policy
    observes RunSubmitted: plan() hands the DAG over first. With one slot, the first task queued
    decides, and it must be the chain's root, not one of the leaves listed before it."""
    from maze_core import DAG, task
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry

    from .conftest import make_config

    @task
    def leaf() -> dict:
        return {}

    @task
    def step(prev: dict | None = None) -> dict:
        return {}

    cfg = make_config(tmp_path, scheduler="daps")
    cfg.local.cpus = 1
    cfg.local.prefetch = 0
    with Engine.from_config(cfg, registry=ToolRegistry()) as eng:
        teach(eng.scheduler, {"leaf": 1.0, "step": 1.0})
        dag = DAG("plan")
        for _ in range(3):
            dag.add_task(leaf)
        prev = dag.add_task(step)
        root = prev
        for _ in range(3):
            prev = dag.add_task(step, inputs={"prev": prev.output})
        run_id = eng.submit(dag)
        assert eng.wait(run_id, timeout=30)["status"] == "succeeded"
        queued = [e.data["task_id"] for e in eng.store.read_stream(f"run:{run_id}")
                  if e.type == ev.TASK_QUEUED]
    assert queued[0] == root, queued
