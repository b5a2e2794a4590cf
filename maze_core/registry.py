"""The tool registry: ``ToolRegistry`` (tools by name, from code, tool folders and plugins) and the
global ``task_registry`` (seed 003's ``register_task``, ``get_task``, ``discover_tasks``); ``@task`` and
``TaskMeta`` live in ``task_meta.py`` and are re-exported here.

``ToolRegistry`` maps tool names to functions. Tools come from direct registration, from a directory
scan (:meth:`ToolRegistry.discover_tasks`) or from plugins (:meth:`ToolRegistry.load_plugin_tools`).
Every registration and removal is announced to subscribers so the engine can record
``ToolRegistered`` / ``ToolRemoved`` events.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import NotFoundError, TaskDefinitionError
from .events import canonical_json
from .loading import task_files
from .task_meta import (
    DEFAULT_VERSION,
    TYPE_FILEPATH,
    TYPE_FOLDERPATH,
    TaskMeta,
    derive_meta,
    get_meta,
    is_task,
    label_of,
    logger,
    task,
)

__all__ = [
    "DEFAULT_VERSION",
    "TYPE_FILEPATH",
    "TYPE_FOLDERPATH",
    "TaskMeta",
    "ToolEntry",
    "ToolRegistry",
    "derive_meta",
    "discover_tasks",
    "get_meta",
    "get_task",
    "is_task",
    "register_task",
    "task",
    "task_registry",
]

Listener = Callable[[str, "ToolEntry"], None]


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """One registered tool. ``digest`` = sha256 of canonical JSON of the metadata dict + source.
    ``reason`` is set only on the entry handed to listeners for a removal."""

    name: str
    func: Callable[..., Any]
    meta: TaskMeta
    source: str
    version: str
    digest: str
    reason: str | None = None


class ToolRegistry:
    """Name -> tool function, with metadata, provenance and change listeners. Thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, ToolEntry] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()       # the entries; readers (the engine loop) take it
        self._announce = threading.Lock()    # orders change announcements; readers never take it

    def register_task(self, func: Callable[..., Any], source: str = "manual",
                      version: str | None = None) -> TaskMeta:
        """Register a decorated function under its task name and return its metadata.

        ``version`` overrides the declared one (e.g. a tool package's version). An undecorated or
        nameless function is logged at ERROR and raises ``TaskDefinitionError``; a name already
        registered is overwritten with a WARNING."""
        try:
            meta = get_meta(func)
        except TaskDefinitionError as exc:
            logger.error("cannot register %s (source %s): %s", label_of(func), source, exc)
            raise
        if version is not None:
            meta = meta.model_copy(update={"version": version})
        digest = hashlib.sha256((canonical_json(meta.to_dict()) + source).encode()).hexdigest()
        entry = ToolEntry(meta.name, func, meta, source, meta.version, digest)
        with self._announce:   # listeners hear of changes in the order they were made
            with self._lock:
                if meta.name in self._entries:
                    logger.warning("task %r re-registered; overwriting", meta.name)
                self._entries[meta.name] = entry
                logger.info("Successfully registered task: %s", meta.name)
            self._notify("registered", entry)   # outside _lock: a listener may wait on a reader
        return meta

    def unregister(self, name: str, reason: str = "removed") -> ToolEntry:
        """Remove a tool (``NotFoundError`` if unknown); listeners see ``reason`` on the entry."""
        with self._announce:
            with self._lock:
                entry = self.get(name)
                del self._entries[name]
                logger.info("Removed task: %s (%s)", name, reason)
            self._notify("removed", replace(entry, reason=reason))
        return entry

    def get(self, name: str) -> ToolEntry:
        """The entry of a registered tool; ``NotFoundError`` naming close matches otherwise."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                return entry
            names = list(self._entries)
        close = difflib.get_close_matches(name, names, n=3)
        hint = (f"; did you mean {', '.join(map(repr, close))}?" if close
                else f" ({len(names)} tasks registered)")
        raise NotFoundError(f"unknown task {name!r}{hint}")

    def get_task(self, name: str) -> Callable[..., Any]:
        """The function registered as ``name`` (``NotFoundError`` otherwise)."""
        return self.get(name).func

    def names(self) -> list[str]:
        """Registered tool names, sorted."""
        with self._lock:
            return sorted(self._entries)

    def list_tasks(self) -> list[dict[str, Any]]:
        """Every tool, sorted by name: name, version, source, description, type, resources and
        the input/output schemas."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.name)
        return [{"name": e.name, "version": e.version, "source": e.source,
                 "description": e.meta.description, "type": e.meta.resources.get("type", "cpu"),
                 "resources": dict(e.meta.resources),
                 "input_parameters": dict(e.meta.input_parameters),
                 "output_parameters": dict(e.meta.output_parameters)} for e in entries]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(change, entry)`` (change: ``'registered'`` | ``'removed'``) on every
        change, in order. Returns a function that unsubscribes. A callback that raises is logged
        at ERROR; the change stands."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def _notify(self, change: str, entry: ToolEntry) -> None:
        for callback in list(self._listeners):
            try:
                callback(change, entry)
            except Exception:
                logger.exception("registry listener %r failed on %s of task %r", callback, change,
                                 entry.name)

    def discover_tasks(self, tasks_root_path: str | Path,
                       package_root_path: str | Path | None = None) -> list[str]:
        """Import every ``.py`` file under ``tasks_root_path`` and register its ``@task`` functions.

        Which files: ``maze_core.loading.task_files`` (files named ``_*``, ``__init__.py``
        included, folders named ``.*`` or ``_*`` and symbolic links are skipped). With
        ``package_root_path`` the files are imported as regular modules named relative to it (it
        is put on ``sys.path``); otherwise each gets a unique synthetic module name. Only functions
        defined in the module itself are registered (imported ones are not registered twice). A
        module that fails to import, or a task that cannot be registered, is logged at ERROR and
        the scan goes on. Returns the names registered, in scan order."""
        root = Path(tasks_root_path).resolve()
        if not root.is_dir():
            raise NotFoundError(f"tasks directory {str(tasks_root_path)!r} does not exist")
        package_root = Path(package_root_path).resolve() if package_root_path is not None else None
        if package_root is not None and str(package_root) not in sys.path:
            sys.path.insert(0, str(package_root))
        registered: list[str] = []
        for path in task_files(root):
            try:
                module = import_file(path, package_root)
            except (Exception, SystemExit) as exc:  # one broken module must not stop the scan
                logger.error("failed to import task module %s: %s: %s", path, type(exc).__name__, exc,
                             exc_info=True)
                continue
            for func in _module_tasks(module):
                try:
                    registered.append(self.register_task(func, source=f"dir:{root}").name)
                except TaskDefinitionError:
                    continue  # already logged at ERROR by register_task
        return registered

    def load_plugin_tools(self, pm: Any, versions: dict[str, str] | None = None) -> list[str]:
        """Collect tools from every plugin's ``register_tools(register)`` hook, called through
        pluggy one plugin at a time (``pm.subset_hook_caller``, wrappers included), so that each
        tool is attributed to its plugin and a plugin that raises costs only its own tools.

        Each function lands with source ``"package:<plugin name>"``. ``versions`` maps plugin
        names to their package's version, given to tools that declare none. A plugin whose hook
        raises is logged at ERROR and skipped; a function that cannot be registered is logged and
        skipped. Returns the names registered."""
        registered: list[str] = []
        impls = pm.hook.register_tools.get_hookimpls()
        wrappers = [impl.plugin for impl in impls if impl.hookwrapper or impl.wrapper]
        for impl in impls:
            if impl.hookwrapper or impl.wrapper:
                continue
            source = f"package:{impl.plugin_name}"
            package_version = (versions or {}).get(impl.plugin_name)

            def register(func: Callable[..., Any], _source: str = source,
                         _version: str | None = package_version) -> None:
                declared = getattr(func, "_task_meta", None)
                undeclared = isinstance(declared, dict) and declared.get("version") in (None, DEFAULT_VERSION)
                try:
                    registered.append(self.register_task(
                        func, source=_source, version=_version if undeclared else None).name)
                except TaskDefinitionError:
                    pass  # already logged at ERROR by register_task

            # this plugin's implementation (and the wrappers of any plugin), through pluggy
            only_this = pm.subset_hook_caller("register_tools", remove_plugins=[
                i.plugin for i in impls if i.plugin is not impl.plugin and i.plugin not in wrappers])
            try:
                only_this(register=register)
            except Exception:
                logger.exception("plugin %r failed in register_tools", impl.plugin_name)
        return registered


_NON_IDENT = re.compile(r"\W")


def import_file(path: Path, package_root: Path | None = None, name: str | None = None) -> Any:
    """Import one file: as a named module under ``package_root``, else as ``name`` or a synthetic
    name made from its path."""
    if package_root is not None and path.is_relative_to(package_root):
        return importlib.import_module(".".join(path.relative_to(package_root).with_suffix("").parts))
    if name is None:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        name = f"maze_tasks_{digest}_{_NON_IDENT.sub('_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _module_tasks(module: Any) -> Iterator[Callable[..., Any]]:
    """Functions defined in ``module`` itself that carry ``_task_meta`` (each once)."""
    seen: set[int] = set()
    for obj in list(vars(module).values()):
        if (inspect.isfunction(obj) and hasattr(obj, "_task_meta") and id(obj) not in seen
                and obj.__module__ == module.__name__):
            seen.add(id(obj))
            yield obj


task_registry = ToolRegistry()
register_task = task_registry.register_task
get_task = task_registry.get_task
discover_tasks = task_registry.discover_tasks
