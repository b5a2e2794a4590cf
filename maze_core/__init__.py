"""Maze core: events, the task registry, DAGs and the engine. Imports no Ray and no FastAPI.

Public names are imported lazily so that ``from maze_core import task`` stays light (the SDK
uses it without loading the engine or the store).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "hookimpl": "maze_core.hookspecs",
    "hookspec": "maze_core.hookspecs",
    "task": "maze_core.registry",
    "TaskMeta": "maze_core.registry",
    "ToolRegistry": "maze_core.registry",
    "task_registry": "maze_core.registry",
    "register_task": "maze_core.registry",
    "get_task": "maze_core.registry",
    "discover_tasks": "maze_core.registry",
    "TYPE_FILEPATH": "maze_core.registry",
    "TYPE_FOLDERPATH": "maze_core.registry",
    "DAG": "maze_core.dag",
    "load_config": "maze_core.config",
    "MazeConfig": "maze_core.config",
    "Engine": "maze_core.engine",
    "current_task": "maze_core.task_context",
    "TaskContext": "maze_core.task_context",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maze_core' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
