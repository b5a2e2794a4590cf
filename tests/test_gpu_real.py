"""The Ray executor on real NVIDIA GPUs, with real CUDA work (torch). Skipped without a CUDA GPU,
so CI (no GPU) skips it; on a GPU machine run it on its own, since it starts an embedded Ray on
the machine's real GPUs:

    python -m pytest tests/test_gpu_real.py -v -s

It checks what the fake-GPU tests cannot: that nvidia-smi's memory reaches the ledger, that the
devices a task is granted are the ones CUDA sees inside it, and that two tasks sharing a device by
memory really run on it at the same time.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not (torch.cuda.is_available() and shutil.which("nvidia-smi")):
    pytest.skip("no CUDA GPU here (CI has none): the fake-GPU tests cover placement",
                allow_module_level=True)

from maze_core import DAG, task  # noqa: E402
from maze_core.errors import DAGValidationError  # noqa: E402

from .conftest import make_config  # noqa: E402


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory):
    import ray

    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry
    from maze_ray import RayConfig, RayExecutor
    if ray.is_initialized():
        pytest.skip("needs its own Ray on the real GPUs: run this file on its own")
    cfg = make_config(tmp_path_factory.mktemp("gpu"), validate_events=True)
    eng = Engine.from_config(cfg, registry=ToolRegistry(), executor=RayExecutor(RayConfig()))
    eng.start()
    yield eng
    eng.stop()
    eng.store.close()


def _wait_file(path: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


@task(gpu_mem=2000, cpu_num=0.5)
def matmul(n: int, tag: str, meet: str) -> dict:
    import torch as t
    start = time.time()
    Path(f"{meet}.{tag}").touch()
    a = t.randn(n, n, device="cuda")
    checksum = float((a @ a.T).trace().item())
    _wait_file(f"{meet}.go")          # both tasks hold their device memory at the same time
    return {"tag": tag, "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "devices_seen": t.cuda.device_count(), "name": t.cuda.get_device_name(0),
            "allocated_mb": t.cuda.memory_allocated() / 2**20, "checksum": checksum,
            "start": start, "end": time.time(), "pid": os.getpid()}


def test_real_gpu_memory_reaches_the_ledger(gpu_engine):
    gpus = [g for n in gpu_engine.executor.describe()["nodes"] for g in n["gpus"]]
    print("ledger:", gpus)
    assert gpus and all(g["memory_mb"] > 1000 for g in gpus), "nvidia-smi's memory reached the ledger"


def test_two_tasks_share_a_real_gpu_by_memory_and_see_only_it(gpu_engine, tmp_path):
    meet = str(tmp_path / "meet")
    dag = DAG("real-gpu")
    ids = [dag.add_task(matmul, inputs={"n": 2048, "tag": tag, "meet": meet}) for tag in ("a", "b")]
    run_id = gpu_engine.submit(dag)
    for tag in ("a", "b"):
        _wait_file(f"{meet}.{tag}")
    Path(f"{meet}.go").touch()
    assert gpu_engine.wait(run_id, timeout=300)["status"] == "succeeded"
    out = [gpu_engine.result(run_id, t) for t in ids]
    print("tasks saw:", out)
    for o in out:
        assert o["devices_seen"] == 1 and o["cuda_visible"] is not None and o["allocated_mb"] > 10
        assert o["checksum"] > 0, "a real CUDA matmul ran"
    if sum(len(n["gpus"]) for n in gpu_engine.executor.describe()["nodes"]) == 1:
        assert out[0]["cuda_visible"] == out[1]["cuda_visible"] == "0", "one GPU: both on it"
    assert out[0]["start"] < out[1]["end"] and out[1]["start"] < out[0]["end"], "they ran together"
    assert out[0]["pid"] != out[1]["pid"]


def test_more_memory_than_any_real_gpu_fails_at_once(gpu_engine):
    @task(gpu_mem=10_000_000)
    def huge() -> dict:
        return {}

    dag = DAG("too-big")
    dag.add_task(huge)
    with pytest.raises(DAGValidationError, match="MB of GPU memory"):
        gpu_engine.submit(dag)
