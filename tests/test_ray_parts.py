"""The Ray executor's pure parts on their own (no Ray is started): admission and the books that
mirror Ray's queue, fusion of tiny calls, the view of a node, call options and end reports."""

from __future__ import annotations

import pytest

from maze_core.executor import Invocation
from maze_core.resources import normalize
from maze_ray import books as books_mod
from maze_ray import fusion
from maze_ray.books import Books
from maze_ray.bootstrap import GPU_MEM_LABEL, ExecutorError, check_reachable
from maze_ray.fusion import Fusion, split
from maze_ray.jobs import Job
from maze_ray.ledger import Gpu, Node, Placement
from maze_ray.nodes import configured_memory, node_from
from maze_ray.remotes import call_context, task_options
from maze_ray.results import body_ran, task_update


def _books(cpus: float = 2, prefetch: float = 1.0, mem: int = 0, gpus: list[int] | None = None) -> Books:
    books = Books(prefetch)
    books.set_nodes([Node("n1", "", cpus, mem, [Gpu(i, m) for i, m in enumerate(gpus or [])])])
    return books


def _inv(task_id: str, cpu: float = 1, func=None, attempt: int = 1, **extra) -> Invocation:
    return Invocation("r", task_id, attempt, func or _tiny, {}, normalize({"cpu": cpu}), **extra)


def _job(task_id: str, cpu: float = 1, members: list[Invocation] | None = None) -> Job:
    inv = members[0] if members else _inv(task_id, cpu)
    return Job(inv, object(), True, float(cpu), 0, {}, members=members)


def _tiny(i: int = 0) -> int:
    return i


# ---------------------------------------------------------------------------- admission
def test_admission_holds_cpus_within_capacity_times_one_plus_depth():
    books = _books(cpus=2, prefetch=1)
    one = normalize({"cpu": 1})
    grants = [books.reserve(one) for _ in range(5)]
    assert grants == [True] * 4 + [False], "2 CPUs, depth 1: four admitted"
    books.release(1.0, 0, True)
    assert books.reserve(one) is True and books.cpu_held == 4


def test_the_first_task_is_admitted_whatever_its_size():
    books = _books(cpus=2, prefetch=0)
    assert books.reserve(normalize({"cpu": 8})) is True, "nothing held: it may wait for the cluster"
    assert books.reserve(normalize({"cpu": 1})) is False


def test_admission_counts_memory_where_the_cluster_has_some():
    books = _books(cpus=8, mem=1000)
    assert books.reserve(normalize({"cpu": 1, "mem": 600}))
    assert not books.reserve(normalize({"cpu": 1, "mem": 600})), "1,200 of 1,000 MB"
    assert books.reserve(normalize({"cpu": 1, "mem": 400}))
    assert books.mem_held == 1000


def test_a_gpu_task_is_placed_by_the_ledger_and_freed_with_its_grant():
    books = _books(cpus=4, gpus=[10000])
    grant = books.reserve(normalize({"gpu_mem": 6000}))
    assert isinstance(grant, Placement) and grant.gpus == (0,)
    assert books.reserve(normalize({"gpu_mem": 6000})) is False, "the GPU has 4,000 MB left"
    books.release(1.0, 0, grant)
    assert isinstance(books.reserve(normalize({"gpu_mem": 6000})), Placement)


def test_the_depth_follows_the_mean_task_time():
    books = Books(prefetch=16)
    assert books.depth() == 1.0
    books.learn(0.0005)
    assert books.avg_s == 0.0005 and books.depth() == pytest.approx(10.0)
    books.learn(0.0015)
    assert books.avg_s == pytest.approx(0.0006), "a moving average"
    assert Books(prefetch=0.5).depth() == 0.5, "never more than prefetch, even before any task"


def test_capacity_counts_live_nodes_only():
    books = Books(1.0)
    gone = books.set_nodes([Node("a", "", 2, 100, [Gpu(0, 10)]), Node("b", "", 4, 200)])
    assert gone == [] and books.capacity() == {"cpu": 6.0, "mem": 300, "gpu": 1.0, "nodes": 2}
    assert books.set_nodes([Node("a", "", 2, 100, [Gpu(0, 10)])]) == ["b"]
    assert books.cpu_total == 2.0 and books.mem_total == 100


# ---------------------------------------------------------------------------- the books of Ray's queue
def test_a_job_submitted_into_free_cpus_starts_else_it_waits():
    books = _books(cpus=2)
    a, b, c = _job("a"), _job("b"), _job("c")
    assert books.enter(a) == [a] and books.enter(b) == [b]
    assert books.enter(c) == [] and list(books.backlog) == [c] and not c.started
    assert books.cpu_running == 2
    taken, promoted = books.take(a)
    assert [i.task_id for i in taken] == ["a"] and promoted == [c] and c.started
    assert books.cpu_running == 2 and not books.backlog


def test_a_newcomer_waits_behind_the_backlog_even_when_it_fits():
    books = _books(cpus=2)
    one, big = _job("one"), _job("big", cpu=2)
    books.enter(one)
    assert books.enter(big) == [], "1 CPU free, it needs 2"
    small = _job("small")
    assert books.enter(small) == [], "it fits, but waits for its turn in Ray's queue"
    assert books.take(big)[1] == [small], "at the next turn it passes the big one"


def test_the_backlog_lets_smaller_jobs_by_and_stops_when_no_cpu_is_free():
    books = _books(cpus=2)
    a, b = _job("a"), _job("b")
    books.enter(a)
    books.enter(b)
    big, small, zero = _job("big", cpu=2), _job("small"), _job("zero", cpu=0)
    for job in (big, small, zero):
        assert books.enter(job) == []
    assert books.take(small)[1] == [], "no CPU free: the walk stops at the big one"
    assert list(books.backlog) == [big, zero]
    assert books.take(a)[1] == [zero], "a CPU free: the big one does not fit, the next goes by"
    assert books.take(b)[1] == [big]


def test_a_job_larger_than_the_cluster_starts_when_nothing_runs():
    books = _books(cpus=2)
    huge = _job("huge", cpu=8)
    assert books.enter(huge) == [huge]


def test_a_rerun_that_was_announced_starts_unreported():
    books = _books(cpus=1)
    books.enter(_job("a"))
    rerun = _job("b")
    assert books.enter(rerun, announced=True) == [] and rerun.started and books.cpu_running == 2


def test_a_batch_holds_its_cpu_until_its_last_call_is_taken():
    books = _books(cpus=4)
    members = [_inv(f"m{i}") for i in range(3)]
    batch = _job("m0", members=members)
    for _ in members:
        books.reserve(normalize({"cpu": 1}))
    waiting = _job("w", cpu=4)
    assert books.enter(batch) == [batch] and books.enter(waiting) == []
    assert set(books.jobs) == {("r", "m0"), ("r", "m1"), ("r", "m2"), ("r", "w")}
    taken, promoted = books.take(batch, only={("r", "m1")})
    assert [i.task_id for i in taken] == ["m1"] and promoted == [] and books.cpu_running == 1
    assert books.cpu_held == 2, "each call released what it reserved"
    assert books.take(batch, only={("r", "m1")}) == ([], []), "taken once"
    taken, promoted = books.take(batch)
    assert [i.task_id for i in taken] == ["m0", "m2"] and promoted == [waiting]


def test_a_job_that_never_started_leaves_the_backlog_when_taken():
    books = _books(cpus=1)
    books.enter(_job("a"))
    waiting = _job("w")
    books.enter(waiting)
    assert [i.task_id for i in books.take(waiting)[0]] == ["w"]
    assert not books.backlog and books.cpu_running == 1


def test_a_placeholder_holds_its_calls_reservation_and_place():
    books = _books(cpus=2)
    holder = books.hold(_inv("h", cpu=1))
    assert holder.ref is None and books.jobs[("r", "h")] is holder and books.cpu_held == 1
    assert [i.task_id for i in books.take(holder)[0]] == ["h"] and books.cpu_held == 0


def test_clearing_the_books_returns_each_job_once():
    books = _books(cpus=1)
    members = [_inv("m0"), _inv("m1")]
    batch, waiting = _job("m0", members=members), _job("w")
    books.enter(batch)
    books.enter(waiting)
    assert books.clear() == [batch, waiting]
    assert not books.jobs and not books.backlog and books.cpu_running == books.cpu_held == 0


def test_gpu_tasks_are_counted_per_node():
    books = _books(cpus=4, gpus=[10000])
    grant = books.reserve(normalize({"gpu_mem": 1000}))
    inv = _inv("g")
    books.enter(Job(inv, object(), grant, 1.0, 0, {}))
    books.enter(_job("c"))
    assert books.gpu_tasks() == {"n1": 1}


def test_pipeline_constant_is_the_books_own():
    assert books_mod.PIPELINE_S == 0.005


# ---------------------------------------------------------------------------- fusion
def test_fused_batches_keep_every_cpu_busy():
    fuse = Fusion()

    def tiny(i):
        return i

    fuse.stats[tiny] = [10, 0.00001]
    group = [Invocation("r", f"t{i}", 1, tiny, {"i": i}, normalize({})) for i in range(10)]
    assert [len(b) for b in split(group, 0.00001, 4.0)] == [3, 3, 3, 1], "at least a batch per CPU"
    assert [len(b) for b in split(group, 0.0008, 4.0)] == [2] * 5, "0.8 ms calls: two make 2 ms"
    big = [Invocation("r", f"t{i}", 1, tiny, {"i": i}, normalize({})) for i in range(1000)]
    assert max(len(b) for b in split(big, 0.0, 4.0)) == 64, "FUSE_MAX calls at most"
    assert fuse.group_of(group[0]) is not None
    assert fuse.group_of(Invocation("r", "t", 2, tiny, {}, normalize({}))) is None, "a retry runs alone"
    assert fuse.group_of(Invocation("r", "t", 1, tiny, {}, normalize({}), timeout=600)) is None, \
        "a call behind a hung one in its batch would time out with it"
    assert fuse.group_of(Invocation("r", "t", 1, tiny, {}, normalize({"cpu_num": 2}))) is None
    fuse.stats[tiny] = [10, 0.01]
    assert fuse.group_of(group[0]) is None, "10 ms calls are not tiny"
    fuse.stats[tiny] = [2, 0.0]
    assert fuse.group_of(group[0]) is None, "not before FUSE_MIN_SEEN runs"


def test_calls_that_wait_on_held_results_or_a_gpu_run_alone():
    fuse = Fusion()
    fuse.stats[_tiny] = [10, 0.00001]
    assert fuse.group_of(_inv("a", held=("ref",))) is None, "upstream results in Ray's store"
    gpu = Invocation("r", "g", 1, _tiny, {}, normalize({"gpu": 1}), grant=True)
    assert fuse.group_of(gpu) is None
    placed = _inv("p", grant=Placement("n1", (0,), 1.0, 0))
    assert fuse.group_of(placed) is None


def test_a_tools_duration_is_learned_fast_then_smoothed():
    fuse = Fusion()
    fuse.learn(_tiny, 1.0)
    fuse.learn(_tiny, 0.0)
    assert fuse.stats[_tiny] == [2, 0.5], "the first runs weigh half"
    fuse.learn(_tiny, 0.5)
    fuse.learn(_tiny, 1.5)
    assert fuse.stats[_tiny] == [4, pytest.approx(0.6)], "then a tenth"


def test_only_the_newest_tools_are_remembered(monkeypatch):
    monkeypatch.setattr(fusion, "TOOLS_KEPT", 2)
    fuse = Fusion()
    funcs = [lambda: 1, lambda: 2, lambda: 3]
    fuse.learn(funcs[0], 0.1)
    fuse.learn(funcs[1], 0.1)
    fuse.learn(funcs[0], 0.1)       # used again: the newest
    fuse.learn(funcs[2], 0.1)
    assert list(fuse.stats) == [funcs[0], funcs[2]]


def test_a_turn_goes_to_ray_in_order_each_group_in_its_first_place():
    fuse = Fusion()

    def other(i: int = 0) -> int:
        return i

    fuse.stats[_tiny] = [10, 0.0005]        # 4 calls make a 2 ms batch
    lone = _inv("lone", func=other)
    turn = [_inv("t0"), lone] + [_inv(f"t{i}") for i in range(1, 6)]
    units = list(fuse.plan(turn, cpus=1.0))
    assert [[i.task_id for i in u] for u in units] == [["t0", "t1", "t2", "t3"], ["t4", "t5"], ["lone"]]
    assert [[i.task_id for i in u] for u in fuse.plan([lone, _inv("x")], cpus=1.0)] == [["lone"], ["x"]]


# ---------------------------------------------------------------------------- nodes, options, ends
def test_a_node_with_per_device_resources_knows_its_gpus_memory_exactly():
    info = {"NodeID": "n1", "NodeManagerAddress": "10.0.0.2", "Alive": True,
            "Resources": {"CPU": 8.0, "memory": 2048 * 1024 * 1024, "GPU": 2.0,
                          "maze_gpu0_mb": 10000.0, "maze_gpu1_mb": 24000.0}}
    asked = []
    node = node_from(info, lambda *a: asked.append(a) or [])
    assert node.exact and [g.memory_mb for g in node.gpus] == [10000, 24000] and asked == []
    assert (node.node_id, node.address, node.cpu, node.mem, node.alive) == ("n1", "10.0.0.2", 8.0, 2048, True)


def test_a_node_without_them_asks_for_its_gpus_memory():
    info = {"NodeID": "n2", "Alive": False, "Labels": {GPU_MEM_LABEL: "8000"},
            "Resources": {"CPU": 4.0, "GPU": 3.0}}
    asked = []
    node = node_from(info, lambda *a: asked.append(a) or [5000, 6000])
    assert not node.exact and not node.alive and node.labels == {GPU_MEM_LABEL: "8000"}
    assert asked == [("n2", 3, {GPU_MEM_LABEL: "8000"}, False)]
    assert [g.memory_mb for g in node.gpus] == [5000, 6000, 0], "a GPU nobody knows: 0 (unknown)"


def test_gpu_memory_from_a_label_or_the_configuration():
    assert configured_memory(2, {GPU_MEM_LABEL: "10000"}, [1]) == [10000, 10000]
    assert configured_memory(2, {GPU_MEM_LABEL: "8000,24000.0"}, []) == [8000, 24000]
    assert configured_memory(2, {GPU_MEM_LABEL: "lots"}, [7000]) == [7000, 7000], "a bad label"
    assert configured_memory(2, {}, [7000, 9000]) == [7000, 9000]
    assert configured_memory(2, {}, []) is None, "nobody says: read it on the node"


def test_an_address_is_checked_before_ray_is_asked():
    check_reachable("auto")
    check_reachable("ray://head:10001")
    with pytest.raises(ExecutorError, match="HOST:PORT"):
        check_reachable("head")


def test_a_cpu_call_becomes_ray_options_and_a_context():
    inv = Invocation("r", "t", 2, _tiny, {}, normalize({"cpu": 2, "mem": 512}), cwd="/runs/r")
    opts, ctx, worker = task_options(inv, "ray")
    assert opts == {"num_cpus": 2.0, "memory": 512 * 1024 * 1024}
    assert ctx == call_context(inv) == {"task": ("r", "t", 2), "cwd": "/runs/r"}
    assert worker == {"executor": "ray"}
    assert call_context(_inv("u")) == {"task": ("r", "u", 1)}


def test_what_a_worker_returned_becomes_the_calls_report():
    inv = _inv("t")
    job = _job("t")
    ok = task_update(job, inv, ("ok", {"value": 1}, {}, 0.25), None)
    assert (ok.kind, ok.encoded, ok.duration_s, ok.handle) == ("succeeded", ({"value": 1}, {}), 0.25, None)
    failed = task_update(job, inv, ("error", "ValueError: no", "tb", 0.5, True), None)
    assert (failed.kind, failed.error, failed.traceback, failed.retryable) == ("failed", "ValueError: no", "tb", True)
    assert body_ran(("ok", {}, {}, 0.1)) and body_ran(("error", "E", "", 0.1, True))
    assert not body_ran(("error", "an input did not resolve", "", 0.0, False))
