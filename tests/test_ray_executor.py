"""The Ray executor on a simulated cluster (the session's ``ray_cluster``: a 2-CPU head and a
4-CPU node with two fake 10,000 MB GPUs): the executor contract, GPU placement by memory, the
devices a task saw, warm-model affinity, impossible requests, cancel, timeouts, a worker that
dies, and a node that leaves."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from maze_core import DAG, task
from maze_core.errors import DAGValidationError, ResourceError
from maze_core.resources import normalize
from maze_core.testing.executor_contract import ExecutorContract, value_of

from .conftest import make_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _executor(**cfg):
    from maze_ray import RayConfig, RayExecutor
    return RayExecutor(RayConfig(**cfg))


class TestRayContract(ExecutorContract):
    @pytest.fixture
    def executor(self, ray_cluster):
        # prefetch 1: a fixed admission depth, so the contract can compare capacity before/after
        ex = _executor(address=ray_cluster.address, prefetch=1)
        yield ex
        ex.shutdown(wait=False)


def test_admission_depth_adapts_to_task_durations():
    books = _executor(prefetch=16)._books
    assert books.depth() == 1.0, "before any task ends: one queued task per CPU"
    books.avg_s = 0.0005                   # half-millisecond tasks: queue ~5 ms of them per CPU
    assert books.depth() == pytest.approx(10.0)
    books.avg_s = 0.00001
    assert books.depth() == 16.0, "never more than [ray] prefetch"
    books.avg_s = 2.0                      # long tasks stay in the policy's queue
    assert books.depth() == 1.0
    assert _executor(prefetch=0)._books.depth() == 0.0


# ---------------------------------------------------------------------------- engine on Ray
@pytest.fixture
def ray_engine(tmp_path, ray_cluster):
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry
    cfg = make_config(tmp_path, validate_events=True)
    ex = _executor(address=ray_cluster.address)
    eng = Engine.from_config(cfg, executor=ex, registry=ToolRegistry())
    eng.start()
    yield eng
    eng.stop(wait=False)
    eng.store.close()


def _events(engine, run_id, type_=None):
    return [e for e in engine.store.read_stream(f"run:{run_id}") if type_ is None or e.type == type_]


def _until(done, limit: float = 60.0) -> None:
    """Poll ``done()`` until it is true or ``limit`` seconds passed (the assertion after says why)."""
    deadline = time.monotonic() + limit
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def _wait_file(path: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


@task(name="where", gpu_mem=6000)
def where_6g(release: str, tag: str) -> dict:
    import ray
    start = time.time()
    _wait_file(release)
    return {"tag": tag, "node": ray.get_runtime_context().get_node_id(),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
            "pid": os.getpid()}


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_fan_out_runs_on_ray_and_records_where(ray_engine):
    @task
    def square(x: int) -> dict:
        return {"y": x * x, "pid": os.getpid()}

    @task
    def total(parts: list) -> dict:
        return {"sum": sum(p["y"] for p in parts)}

    dag = DAG("ray-fan")
    refs = [dag.add_task(square, inputs={"x": i}) for i in range(8)]
    s = dag.add_task(total, inputs={"parts": [f"{r}.output" for r in refs]})
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_id, s) == {"sum": sum(i * i for i in range(8))}
    pids = {ray_engine.result(run_id, r)["pid"] for r in refs}
    assert os.getpid() not in pids, "bodies run in Ray worker processes, not in the driver"
    started = _events(ray_engine, run_id, "TaskStarted")
    assert started and all(e.data["worker"]["executor"] == "ray" for e in started)


def _spy_submits(engine) -> list:
    """The invocations the engine hands to its executor, in order."""
    seen = []
    submit_many = engine.executor.submit_many

    def spy(invocations):
        seen.extend(invocations)
        return submit_many(invocations)

    engine.executor.submit_many = spy
    return seen


BIG = 300_000      # characters: far over [engine] inline_result_limit, so stored as a blob


@task
def produce(n: int) -> dict:
    return {"blob": "x" * n, "n": n, "pid": os.getpid()}


def test_large_results_reach_consumers_from_rays_store_not_the_driver(ray_engine):
    """A blob result stays in Ray's object store for its consumers: the engine hands them a Pick
    of it, the worker resolves the path there, and the log still holds the whole result."""
    from maze_core.executor import Pick

    @task
    def consume(blob: str, n: int, both: list) -> dict:
        return {"len": len(blob), "n": n, "same": both == [blob, n], "pid": os.getpid()}

    @task
    def tiny() -> dict:
        return {"v": 1}

    @task
    def plus(v: int) -> dict:
        return {"v": v + 1}

    seen = _spy_submits(ray_engine)
    dag = DAG("handoff")
    p = dag.add_task(produce, inputs={"n": BIG})
    c = dag.add_task(consume, inputs={"blob": p.output.blob, "n": p.output.n,
                                      "both": [p.output.blob, p.output.n]})
    small = dag.add_task(plus, inputs={"v": dag.add_task(tiny).output.v})
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_id, c) == {"len": BIG, "n": BIG, "same": True,
                                            "pid": ray_engine.result(run_id, c)["pid"]}
    assert ray_engine.result(run_id, small) == {"v": 2}
    inv = next(i for i in seen if i.task_id == c)
    assert len(inv.held) == 1, "one upstream object, however many references into it"
    assert inv.kwargs["blob"] == Pick(inv.held[0], ("blob",), f"{p}.output.blob")
    assert type(inv.kwargs["both"][1]) is Pick and inv.kwargs["both"][1].path == ("n",)
    assert len(repr(inv.kwargs)) < 1000, "the consumer's arguments carry no copy of the value"
    small_inv = next(i for i in seen if i.task_id == small)
    assert small_inv.held == () and small_inv.kwargs == {"v": 1}, "small results travel inline"
    produced = next(e for e in _events(ray_engine, run_id, "TaskSucceeded") if e.data["task_id"] == p)
    assert produced.data["result_ref"]["size"] > BIG, "the log holds the whole result, as a blob"
    assert ray_engine.result(run_id, p)["blob"] == "x" * BIG


def test_a_bad_path_into_a_held_result_fails_at_once_without_retries(ray_engine):
    @task(retries=2)
    def consume(x: str) -> dict:
        return {"x": x}

    dag = DAG("handoff-bad-path")
    p = dag.add_task(produce, inputs={"n": BIG})
    c = dag.add_task(consume, inputs={"x": p.output.nope})
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "failed"
    failed = _events(ray_engine, run_id, "TaskFailed")
    assert [e.data["task_id"] for e in failed] == [c]
    error = failed[0].data["error"]
    assert error.startswith("ReferenceResolutionError") and "'nope'" in error and "blob" in error, error
    assert not _events(ray_engine, run_id, "TaskRetrying"), "a retry cannot fix a wrong path"


def test_a_retried_consumer_gets_the_logged_value(ray_engine, tmp_path):
    """The executor's copy may be what failed (a node that held it left): a retry decodes the
    result from the log instead."""
    @task(retries=1)
    def flaky(blob: str, marker: str) -> dict:
        if not os.path.exists(marker):
            Path(marker).write_text("failed once")
            raise RuntimeError("first attempt fails")
        return {"len": len(blob)}

    seen = _spy_submits(ray_engine)
    dag = DAG("handoff-retry")
    p = dag.add_task(produce, inputs={"n": BIG})
    c = dag.add_task(flaky, inputs={"blob": p.output.blob, "marker": str(tmp_path / "m")})
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_id, c) == {"len": BIG}
    first, second = [i for i in seen if i.task_id == c]
    assert (first.attempt, len(first.held)) == (1, 1)
    assert (second.attempt, second.held) == (2, ()) and second.kwargs["blob"] == "x" * BIG


def test_gpu_memory_packing_and_visible_devices(ray_engine, ray_cluster, tmp_path):
    release = tmp_path / "release"
    dag = DAG("pack")
    # three 6,000 MB tasks on two 10,000 MB GPUs: never two on one device at the same time
    big = [dag.add_task(where_6g, inputs={"release": str(release), "tag": f"big{i}"}) for i in range(3)]
    run_id = ray_engine.submit(dag)
    _until(lambda: len(_events(ray_engine, run_id, "TaskStarted")) >= 2)
    time.sleep(0.3)
    assert len(_events(ray_engine, run_id, "TaskStarted")) == 2, "the third must wait for a device"
    release.touch()
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    out = [ray_engine.result(run_id, t) for t in big]
    assert {o["node"] for o in out} == {ray_cluster.gpu_node_id}
    assert all(o["cuda"] in ("0", "1") for o in out)
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            if a["cuda"] == b["cuda"]:
                assert not _overlap(a, b), f"two 6,000 MB tasks shared GPU {a['cuda']}: {a} {b}"
    assert {o["cuda"] for o in out[:2]} == {"0", "1"} or len({o["cuda"] for o in out}) == 2
    # what the events say matches what the task saw
    workers = {e.data["task_id"]: e.data["worker"] for e in _events(ray_engine, run_id, "TaskStarted")}
    for t, o in zip(big, out, strict=True):
        assert workers[t]["gpus"] == [int(o["cuda"])] and workers[t]["node_id"] == o["node"]


def test_small_gpu_tasks_share_a_device(ray_engine, tmp_path):
    @task(gpu_mem=4000, cpu_num=0.5)
    def small(release: str, tag: str) -> dict:
        start = time.time()
        Path(f"{release}.{tag}").touch()
        _wait_file(release)
        return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}

    release = tmp_path / "release"
    dag = DAG("share")
    ids = [dag.add_task(small, inputs={"release": str(release), "tag": str(i)}) for i in range(4)]
    run_id = ray_engine.submit(dag)
    for i in range(4):   # every body is running before any may end
        _wait_file(f"{release}.{i}", 60)
    release.touch()
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    out = [ray_engine.result(run_id, t) for t in ids]
    per_device = {d: [o for o in out if o["cuda"] == d] for d in ("0", "1")}
    assert sorted(len(v) for v in per_device.values()) == [2, 2], per_device
    for pair in per_device.values():
        assert _overlap(pair[0], pair[1]), "two 4,000 MB tasks ran together on one 10,000 MB GPU"


def test_two_gpus_for_one_task(ray_engine):
    @task(resources={"gpu": 2})
    def both() -> dict:
        return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

    dag = DAG("two")
    t = dag.add_task(both)
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_id, t) == {"cuda": "0,1"}


def test_warm_model_affinity(ray_engine, tmp_path):
    @task(gpu_mem=6000, model_name="whisper-small")
    def transcribe(release: str) -> dict:
        _wait_file(release)
        return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

    @task(gpu_mem=6000)
    def blocker(release: str) -> dict:
        _wait_file(release)
        return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

    # GPU 0 is busy, so the model first lands on GPU 1 ...
    hold = tmp_path / "hold"
    dag = DAG("warm-1")
    b = dag.add_task(blocker, inputs={"release": str(hold)})
    run_b = ray_engine.submit(dag)
    _until(lambda: _events(ray_engine, run_b, "TaskStarted"))
    dag = DAG("warm-2")
    t1 = dag.add_task(transcribe, inputs={"release": str(tmp_path / "go")})
    (tmp_path / "go").touch()
    first = ray_engine.submit(dag)
    assert ray_engine.wait(first, timeout=60)["status"] == "succeeded"
    hold.touch()
    assert ray_engine.wait(run_b, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_b, b)["cuda"] == "0"
    assert ray_engine.result(first, t1)["cuda"] == "1"
    # ... and with both GPUs free, it goes back to the GPU where the model is warm
    dag = DAG("warm-3")
    t2 = dag.add_task(transcribe, inputs={"release": str(tmp_path / "go")})
    again = ray_engine.submit(dag)
    assert ray_engine.wait(again, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(again, t2)["cuda"] == "1"


@pytest.mark.parametrize(("resources", "expect"), [
    ({"gpu_mem": 20000}, "20000 MB of GPU memory"),
    ({"gpu": 3}, "needs 3 GPU(s)"),
    ({"cpu_num": 64}, "64 CPUs"),
    ({"mem": "4T"}, "MB of memory"),
])
def test_impossible_requests_fail_at_once(ray_engine, resources, expect):
    @task
    def noop() -> dict:
        return {}

    dag = DAG("impossible")
    dag.add_task(noop, resources=resources)
    started = time.monotonic()
    with pytest.raises(DAGValidationError) as err:
        ray_engine.submit(dag)
    assert expect in str(err.value)
    assert time.monotonic() - started < 5


def test_bad_resource_values_are_named():
    with pytest.raises(ResourceError, match="gpu: must not be negative"):
        normalize({"gpu": -1})
    with pytest.raises(ResourceError, match="4 bananas"):
        normalize({"mem": "4 bananas"})
    assert normalize({"mem": "4G"})["mem"] == 4096


def test_cancel_kills_the_running_body_and_frees_its_gpu(ray_engine, tmp_path):
    @task(gpu_mem=6000)
    def hang(pidfile: str) -> dict:
        Path(pidfile).write_text(str(os.getpid()))
        time.sleep(120)
        return {}

    pidfile = tmp_path / "pid"
    dag = DAG("cancel-gpu")
    t = dag.add_task(hang, inputs={"pidfile": str(pidfile)})
    run_id = ray_engine.submit(dag)
    _wait_file(str(pidfile))
    pid = int(pidfile.read_text())
    ray_engine.cancel(run_id, t)
    assert ray_engine.wait(run_id, timeout=30)["status"] == "cancelled"
    _until(lambda: not _alive(pid), 20)
    assert not _alive(pid), "the worker running the cancelled task must be stopped"
    gpus = [g for n in ray_engine.executor.describe()["nodes"] for g in n["gpus"]]
    assert all(g["used_mb"] == 0 and g["tasks"] == 0 for g in gpus), gpus


def test_timeout_stops_a_hanging_gpu_task(ray_engine, tmp_path):
    # GPU tasks start a fresh worker process each (max_calls=1): the timeout counts from when
    # the task could run, so it covers that start, which takes seconds on a loaded machine
    @task(gpu_mem=6000, timeout=4.0)
    def hang(pidfile: str) -> dict:
        Path(pidfile).write_text(str(os.getpid()))
        time.sleep(120)
        return {}

    @task
    def fine() -> dict:
        return {"ok": True}

    pidfile = tmp_path / "pid"
    dag = DAG("timeout-gpu")
    dag.add_task(hang, inputs={"pidfile": str(pidfile)})
    ok = dag.add_task(fine)
    run_id = ray_engine.submit(dag)
    state = ray_engine.wait(run_id, timeout=60)
    assert state["status"] == "failed"
    failed = _events(ray_engine, run_id, "TaskFailed")
    assert failed and "Timeout" in failed[-1].data["error"]
    assert ray_engine.result(run_id, ok) == {"ok": True}, "the other branch is not disturbed"
    pid = int(pidfile.read_text())
    _until(lambda: not _alive(pid), 20)
    assert not _alive(pid)
    gpus = [g for n in ray_engine.executor.describe()["nodes"] for g in n["gpus"]]
    assert all(g["used_mb"] == 0 for g in gpus)


def test_worker_death_is_retried_and_recorded(ray_engine, tmp_path):
    @task(retries=1)
    def fragile(marker: str) -> dict:
        if not os.path.exists(marker):
            Path(marker).write_text("died once")
            os._exit(1)
        return {"survived": True}

    dag = DAG("crash")
    t = dag.add_task(fragile, inputs={"marker": str(tmp_path / "m")})
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_id, t) == {"survived": True}
    retried = _events(ray_engine, run_id, "TaskRetrying")
    assert len(retried) == 1 and retried[0].data["error"].startswith("WorkerLost"), retried
    assert [e.data["attempt"] for e in _events(ray_engine, run_id, "TaskSucceeded")] == [2]


def test_node_loss_retries_elsewhere(ray_engine, ray_cluster, tmp_path):
    """A GPU node joins, a task lands on it (the other GPUs are busy), the node leaves: the
    attempt fails as WorkerLost and the retry runs on a node that is still there."""
    import ray
    hold, go = tmp_path / "hold", tmp_path / "go"
    dag = DAG("busy")
    for i in range(2):
        dag.add_task(where_6g, inputs={"release": str(hold), "tag": f"b{i}"})
    busy = ray_engine.submit(dag)
    _until(lambda: len(_events(ray_engine, busy, "TaskStarted")) >= 2)
    node = ray_cluster.cluster.add_node(num_cpus=1, num_gpus=1, labels={"maze.gpu_mem_mb": "10000"})
    try:

        @task(gpu_mem=6000, retries=2)
        def victim(release: str) -> dict:
            import ray as _ray
            _wait_file(release, 120)
            return {"node": _ray.get_runtime_context().get_node_id()}

        _until_schedulable(node.node_id)
        ray_engine.executor.refresh(force=True)
        dag = DAG("victim")
        v = dag.add_task(victim, inputs={"release": str(go)})
        run_id = ray_engine.submit(dag)
        _until(lambda: _events(ray_engine, run_id, "TaskStarted"))
        first = _events(ray_engine, run_id, "TaskStarted")[0].data["worker"]
        assert first["node_id"] == node.node_id
        time.sleep(0.5)   # let the body start on the doomed node
        ray_cluster.cluster.remove_node(node)
        _until(lambda: _events(ray_engine, run_id, "TaskRetrying"))
        lost = _events(ray_engine, run_id, "TaskRetrying")
        assert lost and lost[0].data["error"].startswith("WorkerLost"), lost
        go.touch()
        hold.touch()
        assert ray_engine.wait(run_id, timeout=90)["status"] == "succeeded"
        assert ray_engine.result(run_id, v)["node"] == ray_cluster.gpu_node_id
        assert ray_engine.wait(busy, timeout=60)["status"] == "succeeded"
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert node.node_id not in alive
        assert all(n["node_id"] != node.node_id or not n["alive"]
                   for n in ray_engine.executor.describe()["nodes"])
    finally:
        if node in ray_cluster.cluster.worker_nodes:
            ray_cluster.cluster.remove_node(node)


def test_task_runs_in_the_runs_working_directory(ray_engine, tmp_path):
    @task
    def write() -> dict:
        Path("out.txt").write_text("hello")
        return {"cwd": os.getcwd()}

    workdir = tmp_path / "sandbox"
    workdir.mkdir()
    dag = DAG("cwd")
    t = dag.add_task(write)
    run_id = ray_engine.submit(dag, workdir=str(workdir))
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_id, t)["cwd"] == str(workdir)
    assert (workdir / "out.txt").read_text() == "hello"


def _until_schedulable(node_id: str) -> None:
    """A node just added is in the GCS before every raylet can place work on it: wait for that."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def ping() -> str:
        return ray.get_runtime_context().get_node_id()

    deadline = time.monotonic() + 30
    while True:
        try:
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            assert ray.get(ping.options(scheduling_strategy=strategy).remote(), timeout=10) == node_id
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------- commands
def test_maze_cluster_shows_nodes_gpus_and_running_tasks(ray_cluster, ray_engine, cli_env, tmp_path):
    import json
    import subprocess

    from .conftest import maze_exe
    release = tmp_path / "release"
    dag = DAG("running")
    held = dag.add_task(where_6g, inputs={"release": str(release), "tag": "held"})
    run_id = ray_engine.submit(dag)
    _until(lambda: _events(ray_engine, run_id, "TaskStarted"))
    env = {**cli_env, "MAZE_RAY_ADDRESS": ray_cluster.address}   # same data folder as ray_engine
    out = subprocess.run([maze_exe(), "cluster", "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    nodes = {n["node_id"]: n for n in info["nodes"] if n["alive"]}
    assert ray_cluster.gpu_node_id in nodes and ray_cluster.head_node_id in nodes
    gpus = nodes[ray_cluster.gpu_node_id]["gpus"]
    assert [(g["index"], g["memory_mb"]) for g in gpus] == [(0, 10000), (1, 10000)]
    assert nodes[ray_cluster.gpu_node_id]["cpu"] == 4
    running = [t for t in info["running_tasks"] if t["run_id"] == run_id]
    assert [t["task_id"] for t in running] == [held]
    assert running[0]["worker"]["node_id"] == ray_cluster.gpu_node_id
    assert running[0]["worker"]["gpus"] in ([0], [1])
    text = subprocess.run([maze_exe(), "cluster"], env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "gpu 1: 10000 MB" in text.stdout
    assert "gpus=2 (Ray books them per-device)" in text.stdout, text.stdout
    assert "Maze tasks running: 1" in text.stdout and "where" in text.stdout
    gpu = running[0]["worker"]["gpus"][0]
    assert f"gpu {gpu}: 10000 MB, running 1 Maze task(s)" in text.stdout
    release.touch()
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"


def test_maze_worker_rejects_a_bad_address(cli_env):
    import subprocess

    from .conftest import maze_exe
    out = subprocess.run([maze_exe(), "worker", "--address", "nohost"], env=cli_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "HOST:PORT" in out.stderr
    out = subprocess.run([maze_exe(), "worker", "--address", "h:1", "--gpu-mem", "lots"], env=cli_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "MB per GPU" in out.stderr


def test_an_unreachable_cluster_is_a_clear_error_in_seconds(cli_env, tmp_path):
    import subprocess

    from .conftest import maze_exe
    env = {**cli_env, "MAZE_ENGINE_EXECUTOR": "ray", "MAZE_RAY_ADDRESS": "127.0.0.1:9"}
    started = time.monotonic()
    out = subprocess.run([maze_exe(), "demo"], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode != 0
    assert "no Ray head answers at 127.0.0.1:9" in out.stderr
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------------------- review findings
def _pid_and_devices() -> dict:
    return {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_gpu_tasks_never_share_a_worker_process(ray_cluster):
    """A process that ran a GPU task keeps its CUDA context (on the device it saw first) and its
    allocator's memory: Ray retires such workers after one task (max_calls=1 for GPU functions).
    Maze's bodies must get the same: a second GPU task, on the other device, in a fresh process."""
    from maze_core.testing.executor_contract import ReportCollector
    ex = _executor(address=ray_cluster.address)
    collector = ReportCollector()
    ex.start(collector)
    try:
        seen = []
        for i in range(3):
            res = normalize({"gpu": 1})
            grant = ex.try_reserve(res)
            assert grant
            ex.submit(_inv(f"g{i}", _pid_and_devices, res, grant))
            end = collector.until_end(f"g{i}")[-1]
            assert end.kind == "succeeded", end.error
            seen.append(value_of(end))
        assert len({s["pid"] for s in seen}) == 3, f"GPU tasks reused a worker process: {seen}"
    finally:
        ex.shutdown(wait=False)


def _inv(task_id, func, res, grant):
    from maze_core.executor import Invocation
    return Invocation("run-review", task_id, 1, func, {}, res, grant=grant,
                      func_name=getattr(func, "__name__", "f"))


def test_cpu_admission_follows_nodes_that_join_and_leave(ray_cluster, monkeypatch):
    """CPU-only work must see the cluster change too: a node that left no longer counts as CPUs
    to start tasks on (else tasks queued in Ray are reported started and time out there)."""
    from maze_ray import nodes as mod
    monkeypatch.setattr(mod, "REFRESH_S", 0.0)
    ex = _executor(address=ray_cluster.address, prefetch=0)
    collector_calls = []
    ex.start(collector_calls.append)
    node = ray_cluster.cluster.add_node(num_cpus=2)
    try:
        one = normalize({"cpu": 1})

        def cpus_after_reserving() -> float:
            grant = ex.try_reserve(one)
            if grant:
                ex.release(one, grant)
            return ex.capacity()["cpu"]

        _until(lambda: cpus_after_reserving() == 6, 30)
        assert ex.capacity()["cpu"] == 6, "a node that joined must count"
        ray_cluster.cluster.remove_node(node)
        _until(lambda: cpus_after_reserving() == 4)
        assert ex.capacity()["cpu"] == 4, "a node that left must not count"
    finally:
        if node in ray_cluster.cluster.worker_nodes:
            ray_cluster.cluster.remove_node(node)
        ex.shutdown(wait=False)


def test_a_ray_failure_with_a_blank_message_is_still_reported():
    """The results thread turns Ray's exception into the attempt's failure; one whose text is
    blank raised IndexError there, which ended the thread: no task was ever reported again."""
    from maze_core.executor import Invocation
    from maze_core.testing.executor_contract import ReportCollector
    from maze_ray.jobs import Job
    ex = _executor()
    collector = ReportCollector()
    ex._report = collector
    inv = Invocation("run-review", "blank", 1, _pid_and_devices, {}, normalize({"cpu": 1}))
    job = Job(inv, None, True, 1.0, 0, {}, started=True)
    ex._books.jobs[("run-review", "blank")] = job
    ex._done(job, None, RuntimeError("  \n "))
    end = collector.until_end("blank")[-1]
    assert end.kind == "failed" and end.error.startswith("RuntimeError")


def _block_then_mark(release: str, marker: str) -> dict:
    _until(lambda: os.path.exists(release))
    Path(marker).write_text("ran")
    return {}


def test_shutdown_leaves_nothing_running_on_a_shared_cluster(ray_cluster, tmp_path, monkeypatch):
    """The executor does not own the session's Ray: after shutdown(wait=True) has waited its
    limit, a body still running and a task still in the backlog must not go on (or start) on
    the cluster behind Maze's back."""
    from maze_core.testing.executor_contract import ReportCollector
    from maze_ray import executor as mod
    monkeypatch.setattr(mod, "SHUTDOWN_WAIT_S", 0.5, raising=False)
    ex = _executor(address=ray_cluster.address, prefetch=1)
    collector = ReportCollector()
    ex.start(collector)
    release = tmp_path / "release"
    from maze_core.executor import Invocation
    running = Invocation("run-review", "running", 1, _block_then_mark,
                         {"release": str(release), "marker": str(tmp_path / "running")},
                         normalize({"cpu": 4}))
    queued = Invocation("run-review", "queued", 1, _block_then_mark,
                        {"release": str(release), "marker": str(tmp_path / "queued")},
                        normalize({"cpu": 1}))
    for inv in (running, queued):
        inv.grant = ex.try_reserve(inv.resources)
        assert inv.grant
        ex.submit(inv)
    collector.until_started("running")
    time.sleep(0.3)                         # the body is under way
    t0 = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - t0 < 10
    release.touch()
    time.sleep(2.0)
    assert not (tmp_path / "running").exists(), "a body outlived the executor's shutdown"
    assert not (tmp_path / "queued").exists(), "a backlog task started after the executor's shutdown"


# ---------------------------------------------------------------------------- fusion of tiny tasks
def _warm(engine, tool, n: int = 4, **inputs) -> None:
    """Run ``tool`` a few times, so that the executor learns it is tiny."""
    dag = DAG("warm")
    for i in range(n):
        dag.add_task(tool, inputs={"i": 1000 + i, **inputs})
    assert engine.wait(engine.submit(dag), timeout=60)["status"] == "succeeded"


def _fused(engine, run_id) -> dict[str, int]:
    return {e.data["task_id"]: e.data["worker"].get("fused", 1)
            for e in _events(engine, run_id, "TaskStarted")}


def test_tiny_tasks_run_fused_each_with_its_own_events(ray_engine):
    @task
    def tiny(i: int) -> dict:
        return {"i": i, "pid": os.getpid()}

    _warm(ray_engine, tiny)
    dag = DAG("fuse")
    ids = [dag.add_task(tiny, inputs={"i": i}) for i in range(40)]
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert [ray_engine.result(run_id, t)["i"] for t in ids] == list(range(40))
    fused = _fused(ray_engine, run_id)
    assert sorted(fused) == sorted(ids), "every call has its own TaskStarted"
    assert max(fused.values()) > 1, f"tiny calls of one tool were not fused: {fused}"
    ends = _events(ray_engine, run_id, "TaskSucceeded")
    assert len(ends) == 40 and all(e.data["attempt"] == 1 for e in ends)
    assert all(e.data["duration_s"] < 1 for e in ends), "each call's own duration, not the batch's"


def test_fusion_can_be_turned_off(tmp_path, ray_cluster):
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry

    @task
    def tiny(i: int) -> dict:
        return {"i": i}

    eng = Engine.from_config(make_config(tmp_path), registry=ToolRegistry(),
                             executor=_executor(address=ray_cluster.address, fuse=False))
    eng.start()
    try:
        _warm(eng, tiny)
        dag = DAG("no-fuse")
        for i in range(20):
            dag.add_task(tiny, inputs={"i": i})
        run_id = eng.submit(dag)
        assert eng.wait(run_id, timeout=60)["status"] == "succeeded"
        assert set(_fused(eng, run_id).values()) == {1}
    finally:
        eng.stop(wait=False)
        eng.store.close()


def test_a_call_that_kills_a_fused_batch_fails_alone(ray_engine):
    """The batch's worker dies: its calls run again one by one, so only the culprit fails (as
    WorkerLost), and the others are neither failed nor charged an attempt."""
    @task
    def maybe_die(i: int, die: int = -1) -> dict:
        if i == die:
            os._exit(3)
        return {"i": i}

    _warm(ray_engine, maybe_die)
    dag = DAG("fuse-crash")
    ids = [dag.add_task(maybe_die, inputs={"i": i, "die": 5}) for i in range(16)]
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "failed"
    assert _fused(ray_engine, run_id)[ids[5]] > 1, "the culprit ran in a fused batch"
    failed = _events(ray_engine, run_id, "TaskFailed")
    assert [e.data["task_id"] for e in failed] == [ids[5]]
    assert failed[0].data["error"].startswith("WorkerLost"), failed[0].data["error"]
    ok = _events(ray_engine, run_id, "TaskSucceeded")
    assert sorted(e.data["task_id"] for e in ok) == sorted(ids[:5] + ids[6:])
    assert all(e.data["attempt"] == 1 for e in ok) and not _events(ray_engine, run_id, "TaskRetrying")
    assert len(_events(ray_engine, run_id, "TaskStarted")) == 16, "a rerun is not a new start"


def test_cancelling_a_call_of_a_fused_batch_stops_it_and_not_the_others(ray_engine, tmp_path):
    @task
    def quick_or_hang(i: int, release: str = "", pidfile: str = "") -> dict:
        if i == 3:
            Path(pidfile).write_text(str(os.getpid()))
            _wait_file(release, 60)
        return {"i": i}

    release, pidfile = tmp_path / "release", tmp_path / "pid"
    _warm(ray_engine, quick_or_hang)
    dag = DAG("fuse-cancel")
    ids = [dag.add_task(quick_or_hang, inputs={"i": i, "release": str(release), "pidfile": str(pidfile)})
           for i in range(8)]
    run_id = ray_engine.submit(dag)
    _wait_file(str(pidfile))
    pid = int(pidfile.read_text())
    _until(lambda: ids[3] in _fused(ray_engine, run_id), 10)   # its TaskStarted may wait for a commit
    assert _fused(ray_engine, run_id)[ids[3]] > 1, "the hanging call ran in a fused batch"
    ray_engine.cancel(run_id, ids[3])
    ray_engine.wait(run_id, timeout=60)
    ok = {e.data["task_id"] for e in _events(ray_engine, run_id, "TaskSucceeded")}
    assert ok == set(ids) - {ids[3]}, "the calls after the cancelled one still ran"
    assert [e.data["task_id"] for e in _events(ray_engine, run_id, "TaskCancelled")] == [ids[3]]
    _until(lambda: not _alive(pid), 30)
    assert not _alive(pid), "the batch's worker was stopped"
    release.touch()


def test_a_lost_upstream_object_is_classified_and_retried_once_from_the_log(ray_engine):
    """Ray may lose an object it held for a consumer (its node left; the producer is not rerun):
    not the consumer's fault, so it is tried once more whatever its retries, from the log."""
    import ray.exceptions as rex

    from maze_core.executor import Invocation, TaskUpdate
    ex = ray_engine.executor
    inv = Invocation("r", "t2", 1, produce, {}, normalize({}), held=("ref",))
    job = type("J", (), {"members": None, "ref": None})()
    lost = rex.ObjectLostError("00" * 28, "owner", "call site")
    assert ex._update(job, inv, None, lost).lost_input
    assert not ex._update(job, Invocation("r", "t2", 1, produce, {}, normalize({})), None, lost).lost_input
    assert not ex._update(job, inv, None, rex.WorkerCrashedError()).lost_input

    @task
    def consume(blob: str) -> dict:
        return {"len": len(blob)}

    update = ex._update
    lose: dict[str, int] = {}

    def losing(job, inv, outcome, exc):   # the consumer's copy of the producer's result is "lost"
        if inv.task_id in lose and inv.attempt <= lose[inv.task_id]:
            return TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed",
                              error="WorkerLost: the object was lost", lost_input=bool(inv.held))
        return update(job, inv, outcome, exc)

    ex._update = losing
    dag = DAG("lost-input")
    p = dag.add_task(produce, inputs={"n": BIG})
    c = dag.add_task(consume, inputs={"blob": p.output.blob})
    lose[c] = 1
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    assert ray_engine.result(run_id, c) == {"len": BIG}
    assert [e.data["attempt"] for e in _events(ray_engine, run_id, "TaskRetrying")] == [1]
    lose[c] = 9          # the retry holds no Ray object: a failure then is the task's own
    run_id = ray_engine.submit(dag)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "failed"
    assert [e.data["attempt"] for e in _events(ray_engine, run_id, "TaskFailed")] == [2]


def test_cancelling_a_run_stops_each_fused_batch_once(ray_engine, tmp_path):
    """A whole run cancelled: each batch is stopped once, none of its calls is rerun."""
    @task
    def wait_for(i: int, release: str = "") -> dict:
        if release:
            Path(f"{release}.{i}").touch()
            _wait_file(release, 60)
        return {"i": i}

    _warm(ray_engine, wait_for)
    reruns = []
    resubmit = ray_engine.executor._resubmit
    ray_engine.executor._resubmit = lambda invs, *a: (reruns.extend(invs), resubmit(invs, *a))
    release = tmp_path / "release"
    dag = DAG("fuse-cancel-run")
    ids = [dag.add_task(wait_for, inputs={"i": i, "release": str(release)}) for i in range(12)]
    run_id = ray_engine.submit(dag)
    _wait_file(f"{release}.0")
    _until(lambda: len(_fused(ray_engine, run_id)) == 12, 10)
    assert max(_fused(ray_engine, run_id).values()) > 1, "the calls ran in fused batches"
    ray_engine.cancel(run_id)
    assert ray_engine.wait(run_id, timeout=60)["status"] == "cancelled"
    assert sorted(e.data["task_id"] for e in _events(ray_engine, run_id, "TaskCancelled")) == sorted(ids)
    assert reruns == [], "no call of a cancelled run is run again"
    assert not _events(ray_engine, run_id, "TaskSucceeded")
    release.touch()


# ---------------------------------------------------------------------------- Ray books per device
@task(cpu_num=0.5)
def hold_gpu(tag: str, release: str) -> dict:
    Path(f"{release}.{tag}").touch()
    _wait_file(release, 120)
    return {"tag": tag, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _hold(engine, tag: str, release: Path, **resources) -> str:
    """Submit one hold_gpu task and wait until its body runs; returns the run id."""
    dag = DAG(f"hold-{tag}")
    dag.add_task(hold_gpu, inputs={"tag": tag, "release": str(release)}, resources=resources)
    run_id = engine.submit(dag)
    _wait_file(f"{release}.{tag}", 60)
    assert os.path.exists(f"{release}.{tag}"), f"{tag} did not start"
    return run_id


def test_ray_books_each_devices_memory_as_the_ledger_does(ray_engine, tmp_path):
    import ray
    release = tmp_path / "release"
    try:
        run_id = _hold(ray_engine, "six", release, gpu_mem=6000)
        device = _events(ray_engine, run_id, "TaskStarted")[0].data["worker"]["gpus"][0]
        _until(lambda: ray.available_resources().get(f"maze_gpu{device}_mb") == 4000, 20)
        free = ray.available_resources()      # (Ray updates its view asynchronously)
        assert free.get(f"maze_gpu{device}_mb") == 4000, free
        assert free.get(f"maze_gpu{1 - device}_mb") == 10000, free
        nodes = ray_engine.executor.describe()["nodes"]
        assert [n["gpu_accounting"] for n in nodes if n["gpus"]] == ["per-device"]
    finally:
        release.touch()
    assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"


def test_a_warm_model_on_another_device_does_not_make_ray_queue_a_task_that_fits(ray_engine, tmp_path):
    """Warm-model affinity puts a task on a device Ray's own best fit would not choose. Booked by
    fractions, Ray's books and the ledger then differ, and Ray queues a task the ledger has room
    for (Z below), while Maze reports it started. Booked per device, Ray follows the ledger."""
    first = tmp_path / "first"
    try:   # the model's first run lands on device 1: device 0 is full
        runs = [_hold(ray_engine, "full", first, gpu_mem=10000),
                _hold(ray_engine, "m0", first, gpu_mem=3000, model_name="whisper")]
    finally:
        first.touch()
    for run_id in runs:
        assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
    release = tmp_path / "release"
    try:
        runs = [_hold(ray_engine, "x", release, gpu_mem=4000),          # device 0 (a tie)
                _hold(ray_engine, "m", release, gpu_mem=3000, model_name="whisper"),  # warm: 1
                _hold(ray_engine, "y", release, gpu_mem=6000),          # best fit: 0 is full
                _hold(ray_engine, "z", release, gpu_mem=7000)]          # 1 has exactly 7,000
    finally:
        release.touch()
    seen = {}
    for run_id in runs:
        assert ray_engine.wait(run_id, timeout=60)["status"] == "succeeded"
        out = ray_engine.result(run_id, "t1")
        seen[out["tag"]] = out["cuda"]
    assert seen == {"x": "0", "m": "1", "y": "0", "z": "1"}, seen


def test_device_resources_for_a_node_of_this_machine():
    from maze_ray.bootstrap import device_resources
    assert device_resources(2, [10000]) == {"maze_gpu0_mb": 10000, "maze_gpu1_mb": 10000}
    assert device_resources(2, [8000, 24000]) == {"maze_gpu0_mb": 8000, "maze_gpu1_mb": 24000}
    assert device_resources(0, [10000]) == {}, "no GPUs"
    assert device_resources(3, [8000, 24000]) == {}, "memories that do not match the GPUs"
    if shutil.which("nvidia-smi") is None:     # CI: no GPU memory to read, none given
        assert device_resources(2, []) == {}, "unknown memory: booked by fractions"


def test_maze_worker_and_head_offer_a_ray_resource_per_gpu():
    import json

    from maze_ray.cluster import _devices
    flag, value = _devices(2, [24000])
    assert flag == "--resources" and json.loads(value) == {"maze_gpu0_mb": 24000, "maze_gpu1_mb": 24000}
    assert _devices(0, [24000]) == [], "a node without GPUs offers none"
