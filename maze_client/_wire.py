"""The workflow payload the SDK sends: ``DAG.to_wire()`` (seed 001's format), with the functions of
the user's own modules pickled *by value*.

cloudpickle pickles a function of an importable module by reference (``module.name``); the server
then has to import that module, which works for tool packages installed there but not for a
``mytasks.py`` next to the user's script. Seed 000 says the DAG is sent with the functions' code,
so functions from modules not installed (``maze_core.loading.installed``: not in site-packages,
not under the Python installation; not a Maze package) are pickled by value. If that fails (a
global that cannot be pickled), the payload falls back to plain references.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import ModuleType
from typing import Any

import cloudpickle

from maze_core.dag import DAG
from maze_core.loading import installed, module_location

logger = logging.getLogger("maze.client")

_LOCK = threading.Lock()
_MAZE_PACKAGES = {"maze_core", "maze_client", "maze_api", "maze_sqlite", "maze_local", "maze_daps",
                  "maze_ray", "maze_server"}


def user_modules(dag: DAG) -> list[ModuleType]:
    """Modules of the DAG's functions that belong to the user's project, not the installation.

    For a function of ``mypkg.tasks`` the whole top-level package ``mypkg`` is returned (when it
    too is the user's), so that what ``mypkg.tasks`` uses from ``mypkg.helpers`` travels as well."""
    def is_users(module: ModuleType | None) -> bool:
        path = module_location(module)
        return path is not None and not installed(path)

    found: dict[str, ModuleType] = {}
    for node in dag.tasks.values():
        name = getattr(node.func, "__module__", None)
        if not name or name == "__main__":
            continue
        top = name.split(".")[0]
        if top in _MAZE_PACKAGES or top.startswith("maze_tool_"):
            continue
        module = sys.modules.get(name)
        if not is_users(module):
            continue
        top_module = sys.modules.get(top)
        chosen = top_module if top_module is not None and is_users(top_module) else module
        assert chosen is not None
        found.setdefault(chosen.__name__, chosen)
    return list(found.values())


def dag_payload(dag: DAG, by_value: bool = True) -> dict[str, Any]:
    """The ``workflow_payload`` JSON object of ``dag``."""
    modules = user_modules(dag) if by_value else []
    if not modules:
        return dag.to_wire()
    with _LOCK:
        already = set(cloudpickle.list_registry_pickle_by_value())
        added = []
        for module in modules:
            if module.__name__ not in already:
                cloudpickle.register_pickle_by_value(module)
                added.append(module)
        try:
            return dag.to_wire()
        except Exception as exc:  # a global that cannot be pickled: fall back to references
            logger.warning("pickling the tasks of %s by value failed (%s: %s); sending references",
                           ", ".join(m.__name__ for m in modules), type(exc).__name__, exc)
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)
    return dag.to_wire()
