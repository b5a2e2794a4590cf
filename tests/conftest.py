"""Shared fixtures: real SQLite files in a temporary folder, a real engine with the local executor."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from maze_core.config import MazeConfig

REPO = Path(__file__).resolve().parent.parent


def make_config(tmp_path: Path, **engine) -> MazeConfig:
    cfg = MazeConfig()
    cfg.paths.project_root = str(tmp_path)
    cfg.paths.data_dir = str(tmp_path / "data")
    cfg.engine.retry_backoff = 0.01
    cfg.engine.executor = "local"     # tests that want Ray ask for the shared ray_cluster fixture
    cfg.engine.scheduler = "fifo"
    cfg.local.cpus = 2
    for key, value in engine.items():
        setattr(cfg.engine, key, value)
    return cfg


@pytest.fixture
def config(tmp_path: Path) -> MazeConfig:
    return make_config(tmp_path, validate_events=True)


@pytest.fixture
def engine(config: MazeConfig):
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry
    eng = Engine.from_config(config, registry=ToolRegistry())
    eng.start()
    yield eng
    eng.stop()
    eng.store.close()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the real ``maze`` command on a private data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAZE_")}
    env["MAZE_PATHS_DATA_DIR"] = str(tmp_path / "data")
    env["MAZE_LOGGING_LEVEL"] = "WARNING"
    env.setdefault("MAZE_ENGINE_EXECUTOR", "local")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def maze_exe() -> str:
    return str(Path(sys.executable).parent / "maze")


@pytest.fixture(scope="session")
def ray_cluster():
    """One simulated Ray cluster for the whole test session: a head that runs nothing (0 CPUs)
    and one node with 4 CPUs and 2 fake GPUs of 10,000 MB each, booked per device (the Ray
    resources ``maze_gpu0_mb`` and ``maze_gpu1_mb``, as ``maze worker`` adds them; nodes that
    tests add are booked by fractions of GPUs, with the ``maze.gpu_mem_mb`` label). Tests add
    and remove further nodes themselves and leave the cluster as they found it, so the executor
    contract sees one node that a single task can fill."""
    ray = pytest.importorskip("ray")
    from types import SimpleNamespace

    from ray.cluster_utils import Cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=4, num_gpus=2,
                                resources={"maze_gpu0_mb": 10000, "maze_gpu1_mb": 10000})
    ray.init(address=cluster.address, namespace="maze-tests", logging_level="ERROR",
             log_to_driver=False, configure_logging=False)
    try:
        yield SimpleNamespace(cluster=cluster, address=cluster.address, gpu_node_id=gpu_node.node_id,
                              head_node_id=cluster.head_node.node_id)
    finally:
        ray.shutdown()
        cluster.shutdown()
