"""A process's tool set: tools from plugins and tool folders into the registry, their events,
and reloading them without a restart (:func:`reload_tools`)."""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

from . import events as ev
from .config import MazeConfig
from .events import NewEvent, compact_json
from .plugins import PackageChanges, plugin_set

__all__ = ["PackageChanges", "ReloadReport", "load_tools", "refresh_plugins", "reload_tools",
           "scan_tool_folders", "tool_event", "tool_sync_events"]

logger = logging.getLogger("maze.tools")

TOOLS_STREAM = ev.TOOLS_STREAM       # the stream of tool-set events that name no single tool
TOOLS_RELOADED = ev.TOOLS_RELOADED   # one per reload: what changed, which packages came and went

# the registries that already hold the plugins' tools: weak, so that a registry gone and a new one
# at the same address (an ``id`` reused) is never taken for one already loaded
_loaded: weakref.WeakSet[Any] = weakref.WeakSet()


def _plugin_versions() -> dict[str, str]:
    """Entry-point name -> version of the distribution that provides it."""
    return plugin_set.versions()


def scan_tool_folders(config: MazeConfig, registry: Any) -> list[str]:
    """Register the ``@task`` functions of every ``[tools] paths`` folder (seed 003 rules; the
    files scanned are ``maze_core.loading.task_files``'s). With
    ``[tools] package_root`` the files are imported as modules named relative to it. A folder
    that does not exist is logged at ERROR and skipped. Returns the problems found."""
    problems = []
    root = config.resolve(config.tools.package_root) if config.tools.package_root else None
    for path in config.tools.paths:
        folder = config.resolve(path)
        if not folder.is_dir():
            problems.append(f"[tools] paths: folder {folder} does not exist")
            logger.error(problems[-1])
            continue
        registry.discover_tasks(str(folder), root)
    return problems


def load_tools(config: MazeConfig, registry: Any) -> list[str]:
    """Register tools from installed packages (``register_tools``) and from ``[tools] paths``,
    once per registry. A broken package or module is logged and skipped (seed 003); a tool that
    declares no version gets its package's. Returns the problems found (missing folders)."""
    if registry in _loaded:
        return []
    _loaded.add(registry)
    registry.load_plugin_tools(plugin_set.load(), versions=_plugin_versions())
    return scan_tool_folders(config, registry)


def tool_event(change: str, entry: Any, actor: str) -> NewEvent:
    """The event recording one registry change (``registered`` or ``removed``)."""
    if change == "removed":
        return NewEvent(ev.tool_stream(entry.name), ev.TOOL_REMOVED,
                        {"name": entry.name, "reason": entry.reason or "unregistered"}, actor)
    return NewEvent(ev.tool_stream(entry.name), ev.TOOL_REGISTERED, {
        "name": entry.name, "version": str(entry.version), "source": entry.source,
        "meta": json.loads(compact_json(entry.meta.to_dict())), "digest": entry.digest}, actor)


def _reloadable(source: str) -> bool:
    """Tools that a reload may add, replace or remove: those of packages and tool folders (not
    uploads nor tools registered by code)."""
    return str(source).startswith(("package:", "dir:"))


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
        if row["status"] == "active" and name not in present and _reloadable(row.get("source", "")):
            out.append(NewEvent(ev.tool_stream(name), ev.TOOL_REMOVED,
                                {"name": name, "reason": "no longer installed"}, actor))
    return out


# ---------------------------------------------------------------------------------------- reload
@dataclass
class ReloadReport:
    """The outcome of :func:`reload_tools`: tool names by change, the package changes and the
    problems met (a folder that does not exist). Failed packages and tools that could not be
    registered are logged at ERROR (seed 003) and listed under ``packages.failed``."""

    registered: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    packages: PackageChanges = field(default_factory=PackageChanges)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refresh_plugins() -> PackageChanges:
    """Bring the process's plugins in line with what is installed now
    (:meth:`maze_core.plugins.PluginSet.refresh`)."""
    return plugin_set.refresh()


def _same_code(a: Any, b: Any) -> bool:
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return code_a is not None and code_a == code_b


def reload_tools(config: MazeConfig, registry: Any, engine: Any = None,
                 actor: str = "system") -> ReloadReport:
    """Pick up tool packages installed, upgraded or removed since start-up, and the current state of
    the ``[tools] paths`` folders, without a restart (``maze tools reload``, ``POST /tools/reload``).

    New and changed tools are registered, package and folder tools that are gone are unregistered;
    uploaded tools and tools registered by code are left alone (a package tool of the same name
    does not replace them). A folder tool whose code and metadata did not change keeps its
    function. Registry listeners (a running engine) record each change as it happens; with
    ``engine`` (the door into the log: ``engine.record``), whatever the log (``engine.store``)
    does not yet say is recorded, followed by one ``ToolsReloaded`` event (stream ``tools``)
    carrying the report. The report's tool lists compare with the log when ``engine`` is given
    (a fresh ``maze`` process), else with the registry as it was."""
    from .plugins import load_plugins
    from .registry import ToolRegistry
    store = engine.store if engine is not None else None
    before = {row["name"]: row for row in store.list_tools()} if store is not None else None
    packages = refresh_plugins()
    fresh = ToolRegistry()
    fresh.load_plugin_tools(load_plugins(), versions=_plugin_versions())
    problems = scan_tool_folders(config, fresh)
    report = ReloadReport(packages=packages, problems=problems)
    uninstalled = set(packages.uninstalled)
    reasons: dict[str, str] = {}  # removals made here, with why (the log gets them without an engine)
    unsubscribe = registry.subscribe(
        lambda change, entry: reasons.__setitem__(entry.name, entry.reason) if change == "removed" else None)
    try:
        _apply(fresh, registry, report, uninstalled)
    finally:
        unsubscribe()
    _loaded.add(registry)
    if store is not None:
        now = {name: registry.get(name) for name in registry.names()}
        report.registered = sorted(n for n in now if n not in before)
        report.updated = sorted(n for n in now if n in before and before[n]["digest"] != now[n].digest)
        report.removed = sorted(n for n, row in before.items()
                                if n not in now and _reloadable(row.get("source", "")))
        report.unchanged = sorted(n for n in now if n in before and before[n]["digest"] == now[n].digest)
        catch_up = tool_sync_events(store, registry, actor)
        for event in catch_up:
            if event.type == ev.TOOL_REMOVED and reasons.get(event.data["name"]):
                event.data["reason"] = reasons[event.data["name"]]
        engine.record([*catch_up, NewEvent(TOOLS_STREAM, TOOLS_RELOADED, report.to_dict(), actor)])
    return report


def _apply(fresh: Any, registry: Any, report: ReloadReport, uninstalled: set[str]) -> None:
    """Bring ``registry`` in line with ``fresh`` for package and folder tools; fill ``report``."""
    for name in fresh.names():
        new = fresh.get(name)
        old = registry.get(name) if name in registry else None
        if old is not None and not _reloadable(old.source):
            logger.warning("tool %r of %s is kept; %s provides one of the same name", name, old.source,
                           new.source)
            continue
        if old is not None and old.digest == new.digest and (
                old.func is new.func or (new.source.startswith("dir:") and _same_code(old.func, new.func))):
            report.unchanged.append(name)
            continue
        registry.register_task(new.func, source=new.source, version=new.version)
        (report.updated if old is not None else report.registered).append(name)
    for name in registry.names():
        try:
            entry = registry.get(name)
        except Exception:  # removed meanwhile by another thread
            continue
        if _reloadable(entry.source) and name not in fresh:
            package = entry.source.split(":", 1)[1]
            reason = (f"package {package} uninstalled" if package in uninstalled
                      else f"no longer provided by {entry.source}")
            registry.unregister(name, reason=reason)
            report.removed.append(name)
