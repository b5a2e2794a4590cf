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
    env["PYTHONUNBUFFERED"] = "1"
    return env


def maze_exe() -> str:
    return str(Path(sys.executable).parent / "maze")
