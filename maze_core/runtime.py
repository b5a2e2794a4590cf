"""Putting a process together: tools from plugins and tool folders into the registry."""

from __future__ import annotations

from typing import Any

from .config import MazeConfig

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
