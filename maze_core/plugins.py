"""The plugin manager: entry-point loading, ``MAZE_LOAD_PLUGINS`` and the registries of named
stores, executors and schedulers that plugins fill."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import importlib_metadata
import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "maze"

pm = pluggy.PluginManager("maze")
pm.add_hookspecs(hookspecs)

_lock = threading.Lock()
_loaded = False
_failed: dict[str, str] = {}                      # entry-point name -> why it failed to load
_versions: dict[str, tuple[str, str]] = {}        # entry-point name -> (distribution, version)


def allowed_plugins() -> set[str] | None:
    """Names from ``MAZE_LOAD_PLUGINS`` (comma-separated entry-point names), or None for all.
    An empty value loads no plugin at all."""
    raw = os.environ.get("MAZE_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Load every plugin of entry-point group ``maze`` once (filtered by ``MAZE_LOAD_PLUGINS``).

    A plugin that fails to import is reported by ``maze plugins`` and skipped; the others load."""
    global _loaded
    with _lock:
        if _loaded:
            return pm
        allowed = allowed_plugins()
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            if pm.get_plugin(ep.name) is not None or ep.name in _failed:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                _failed[ep.name] = f"{type(exc).__name__}: {exc}"
                print(f"maze: plugin {ep.name!r} ({ep.value}) failed to load: {exc}", file=sys.stderr)
                continue
            pm.register(module, name=ep.name)
            if ep.dist is not None:
                _versions[ep.name] = (ep.dist.name, ep.dist.version)
        _loaded = True
    return pm



def get_plugins() -> list[dict[str, Any]]:
    """Every registered plugin: ``name``, ``package``, ``version``, ``hooks``; failed ones with
    ``error``."""
    load_plugins()
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        package, version = _versions.get(name, (getattr(plugin, "__name__", name), None))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "package": package, "version": version, "hooks": hooks})
    for name, error in _failed.items():
        out.append({"name": name, "package": None, "version": None, "hooks": [], "error": error})
    return sorted(out, key=lambda p: p["name"])


def _collect(hook: Any, kind: str) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}

    def register(name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{kind} names must be non-empty strings, got {name!r}")
        if name in found:
            raise PluginError(f"two plugins register a {kind} named {name!r}")
        found[name] = factory

    hook(register=register)
    return found


def stores() -> dict[str, Callable[..., Any]]:
    return _collect(load_plugins().hook.register_stores, "store")


def executors() -> dict[str, Callable[..., Any]]:
    return _collect(load_plugins().hook.register_executors, "executor")


def schedulers() -> dict[str, Callable[..., Any]]:
    return _collect(load_plugins().hook.register_schedulers, "scheduler")


AUTO_EXECUTORS = ("ray", "local")   # what ``executor = "auto"`` tries, in order


def _importable(name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pick(kind: str, name: str) -> Callable[..., Any]:
    """The factory of the ``kind`` ('store', 'executor', 'scheduler') called ``name``.

    ``executor = "auto"`` is the first of ``AUTO_EXECUTORS`` that is registered (and, for
    ``ray``, whose library is installed)."""
    table = {"store": stores, "executor": executors, "scheduler": schedulers}[kind]()
    if kind == "executor" and name == "auto":
        for candidate in AUTO_EXECUTORS:
            if candidate in table and (candidate != "ray" or _importable("ray")):
                return table[candidate]
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        hint = " (MAZE_LOAD_PLUGINS is set)" if allowed_plugins() is not None else ""
        raise PluginError(f"no {kind} named {name!r} is registered{hint}; available: {known}")
    return table[name]
