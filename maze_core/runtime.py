"""Putting a process together: tools from plugins and tool folders into the registry."""

from __future__ import annotations

import json
from typing import Any

from . import events as ev
from .config import MazeConfig
from .events import NewEvent, compact_json

_loaded: set[int] = set()


def load_tools(config: MazeConfig, registry: Any) -> None:
    """Register tools from installed packages (``register_tools``) and from ``[tools] paths``,
    once per registry. A broken package or module is logged and skipped (seed 003)."""
    if id(registry) in _loaded:
        return
    _loaded.add(id(registry))
    from .plugins import load_plugins
    registry.load_plugin_tools(load_plugins())
    for path in config.tools.paths:
        registry.discover_tasks(str(config.resolve(path)), None)


def tool_event(change: str, entry: Any, actor: str) -> NewEvent:
    """The event recording one registry change (``registered`` or ``removed``)."""
    if change == "removed":
        return NewEvent(ev.tool_stream(entry.name), ev.TOOL_REMOVED,
                        {"name": entry.name, "reason": entry.reason or "unregistered"}, actor)
    return NewEvent(ev.tool_stream(entry.name), ev.TOOL_REGISTERED, {
        "name": entry.name, "version": str(entry.version), "source": entry.source,
        "meta": json.loads(compact_json(entry.meta.to_dict())), "digest": entry.digest}, actor)


def tool_sync_events(store: Any, registry: Any, actor: str) -> list[NewEvent]:
    """Events that bring the log's ``tools`` in line with ``registry``: a registration for each tool
    that is new or changed, a removal for each package or folder tool that is gone. Nothing when
    the log already says the same."""
    known = {row["name"]: row for row in store.list_tools(include_removed=True)}
    out = []
    for name in registry.names():
        entry = registry.get(name)
        row = known.get(name)
        if row is None or row["status"] != "active" or row["digest"] != entry.digest:
            out.append(tool_event("registered", entry, actor))
    present = set(registry.names())
    for name, row in known.items():
        if (row["status"] == "active" and name not in present
                and str(row.get("source", "")).startswith(("package:", "dir:"))):
            out.append(NewEvent(ev.tool_stream(name), ev.TOOL_REMOVED,
                                {"name": name, "reason": "no longer installed"}, actor))
    return out
