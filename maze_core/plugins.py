"""The plugins of this process, managed in one place: :class:`PluginSet` loads the plugins of
entry-point group ``maze`` (filtered by ``MAZE_LOAD_PLUGINS``), refreshes them after a
``pip install`` (``maze tools reload``) and resets them (tests). The functions below read what the
plugins provide through their hooks: named stores, executors, schedulers and config sections.

One set serves the process (:data:`plugin_set`, its plugin manager :data:`pm`); built-in and
installed plugins are registered the same way, through the entry points."""

from __future__ import annotations

import importlib
import logging
import os
import site
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import importlib_metadata
import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "maze"
_FRAMEWORK = "maze-framework"        # its modules are never purged from sys.modules

logger = logging.getLogger("maze.tools")


def allowed_plugins() -> set[str] | None:
    """Names from ``MAZE_LOAD_PLUGINS`` (comma-separated entry-point names), or None for all.
    An empty value loads no plugin at all."""
    raw = os.environ.get("MAZE_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


@dataclass
class PackageChanges:
    """What a re-read of the entry points found: plugin (entry-point) names."""

    installed: list[str] = field(default_factory=list)
    upgraded: list[str] = field(default_factory=list)
    uninstalled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class PluginSet:
    """The plugins of one plugin manager: which are registered, from which distribution and
    version, and which failed to load (and why). Thread-safe.

    :meth:`load` registers every entry point of the group once; :meth:`refresh` brings the set in
    line with what is installed now; :meth:`reset` empties it so that the next :meth:`load` reads
    the entry points again. Plugins made in code (tests) come and go with :meth:`registered` and
    :meth:`without`."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self.group = group
        self.pm = pluggy.PluginManager("maze")
        self.pm.add_hookspecs(hookspecs)
        self._lock = threading.RLock()
        self._loaded = False
        self._failed: dict[str, str] = {}                  # entry-point name -> why it failed to load
        self._versions: dict[str, tuple[str, str]] = {}    # entry-point name -> (distribution, version)

    # ------------------------------------------------------------------ loading
    def _entry_points(self) -> dict[str, Any]:
        allowed = allowed_plugins()
        found: dict[str, Any] = {}
        for ep in importlib_metadata.entry_points(group=self.group):
            if allowed is None or ep.name in allowed:
                found.setdefault(ep.name, ep)
        return found

    def _register_entry_point(self, name: str, ep: Any) -> str | None:
        """Load and register one entry point; the error (also recorded) when it fails."""
        try:
            module = _load_entry_point(ep)
        except Exception as exc:  # a broken plugin must not take the others down
            self._failed[name] = error = f"{type(exc).__name__}: {exc}"
            return error
        self.pm.register(module, name=name)
        if ep.dist is not None:
            self._versions[name] = (ep.dist.name, ep.dist.version)
        return None

    def load(self) -> pluggy.PluginManager:
        """Load every plugin of the entry-point group once (filtered by ``MAZE_LOAD_PLUGINS``) and
        return the plugin manager. A plugin that fails to import is reported by ``maze plugins``
        and skipped; the others load."""
        with self._lock:
            if self._loaded:
                return self.pm
            for name, ep in self._entry_points().items():
                if self.pm.get_plugin(name) is not None or name in self._failed:
                    continue
                error = self._register_entry_point(name, ep)
                if error is not None:
                    print(f"maze: plugin {name!r} ({ep.value}) failed to load: {error}", file=sys.stderr)
            self._loaded = True
        return self.pm

    def refresh(self) -> PackageChanges:
        """Re-read the entry points (honouring ``MAZE_LOAD_PLUGINS``) and bring the set in line:
        load packages installed since start-up (or that failed before), load upgraded tool
        packages again (their modules re-imported), and drop tool packages that were uninstalled.
        A package that fails to load is logged at ERROR and reported by ``maze plugins``; the
        others load (the task registry's fail-safe rule). Plugins that provide no tools are never dropped: an
        executor or a store in use cannot be swapped under a running engine."""
        self.load()
        _invalidate_caches()
        found = self._entry_points()
        changes = PackageChanges()
        with self._lock:
            for name, (_dist, version) in list(self._versions.items()):
                plugin = self.pm.get_plugin(name)
                if plugin is None or not _provides_tools(self.pm, plugin):
                    continue
                ep = found.get(name)
                if ep is not None and (ep.dist is None or ep.dist.version == version):
                    continue
                self.pm.unregister(name=name)
                del self._versions[name]
                if ep is None:
                    changes.uninstalled.append(name)
                    logger.info("tool package %r was uninstalled", name)
                else:
                    _purge_modules(ep)
                    changes.upgraded.append(name)
                    logger.info("tool package %r changed version (%s -> %s)", name, version,
                                ep.dist.version)
            for name in [n for n in self._failed if n not in found]:
                del self._failed[name]
            for name, ep in found.items():
                if self.pm.get_plugin(name) is not None:
                    continue
                if self._failed.pop(name, None) is not None:
                    _purge_modules(ep)  # a half-imported package from the failed attempt
                error = self._register_entry_point(name, ep)
                if error is not None:   # one broken package must not take the others down
                    changes.failed[name] = error
                    logger.error("tool package %r (%s) failed to load: %s", name, ep.value, error)
                    continue
                if name not in changes.upgraded:
                    changes.installed.append(name)
                    logger.info("tool package %r installed", name)
        return changes

    def reset(self) -> None:
        """Unregister every plugin and forget every failure: the next :meth:`load` reads the entry
        points again (``MAZE_LOAD_PLUGINS`` included)."""
        with self._lock:
            for plugin in list(self.pm.get_plugins()):
                self.pm.unregister(plugin)
            self._failed.clear()
            self._versions.clear()
            self._loaded = False

    def forget(self, *names: str) -> None:
        """Take the named plugins out of the set: unregistered, their version and any failure
        forgotten. Names not in the set are ignored."""
        with self._lock:
            for name in names:
                if self.pm.get_plugin(name) is not None:
                    self.pm.unregister(name=name)
                self._versions.pop(name, None)
                self._failed.pop(name, None)

    def register(self, plugin: Any, name: str, *, package: str | None = None,
                 version: str | None = None) -> None:
        """Add a plugin made in code (an object or module with ``@hookimpl`` functions)."""
        with self._lock:
            self.pm.register(plugin, name=name)
            if version is not None:
                self._versions[name] = (package or name, version)

    @contextmanager
    def registered(self, plugin: Any, name: str) -> Iterator[Any]:
        """``with plugin_set.registered(Plugin(), "name"):`` the plugin is in the set for the
        block only (tests)."""
        self.load()
        self.register(plugin, name)
        try:
            yield plugin
        finally:
            self.forget(name)

    @contextmanager
    def without(self, *names: str) -> Iterator[None]:
        """``with plugin_set.without("ray"):`` the named plugins are out of the set for the block,
        then back as they were (tests)."""
        self.load()
        with self._lock:
            taken = [(name, self.pm.get_plugin(name), self._versions.get(name)) for name in names
                     if self.pm.get_plugin(name) is not None]
            for name, _plugin, _version in taken:
                self.pm.unregister(name=name)
        try:
            yield
        finally:
            with self._lock:
                for name, plugin, version in taken:
                    if self.pm.get_plugin(name) is None:
                        self.pm.register(plugin, name=name)
                        if version is not None:
                            self._versions[name] = version

    # ------------------------------------------------------------------ what is in the set
    def names(self) -> list[str]:
        """The names of the registered plugins, sorted."""
        self.load()
        return sorted(self.pm.get_name(p) for p in self.pm.get_plugins())

    def versions(self) -> dict[str, str]:
        """Plugin name -> version of the distribution that provides it (where known)."""
        self.load()
        with self._lock:
            return {name: version for name, (_dist, version) in self._versions.items()
                    if version and self.pm.get_plugin(name) is not None}

    def failures(self) -> dict[str, str]:
        """Plugin name -> why it failed to load."""
        self.load()
        with self._lock:
            return dict(self._failed)

    def describe(self) -> list[dict[str, Any]]:
        """Every registered plugin: ``name``, ``package``, ``version``, ``hooks``; failed ones
        with ``error``; sorted by name."""
        pm = self.load()
        out = []
        with self._lock:
            for plugin in pm.get_plugins():
                name = pm.get_name(plugin)
                package, version = self._versions.get(name, (getattr(plugin, "__name__", name), None))
                hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
                out.append({"name": name, "package": package, "version": version, "hooks": hooks})
            for name, error in self._failed.items():
                out.append({"name": name, "package": None, "version": None, "hooks": [], "error": error})
        return sorted(out, key=lambda p: p["name"])

    def config_sections(self) -> dict[str, Any]:
        """Section name -> what its plugin registered for it (``register_config_sections``): a
        pydantic model of the section, or a dict of its defaults."""
        return _collect(self.load().hook.register_config_sections, "config section")


plugin_set = PluginSet()
"""The plugins of this process."""

pm = plugin_set.pm
"""The plugin manager of :data:`plugin_set`."""

# The same objects as plugin_set's, for tests written before PluginSet (tests/test_tools_reload.py);
# new code calls plugin_set.forget() / reset() instead.
_lock = plugin_set._lock
_versions = plugin_set._versions
_failed = plugin_set._failed


def load_plugins() -> pluggy.PluginManager:
    """Load the plugins of this process once (:meth:`PluginSet.load`); the plugin manager."""
    return plugin_set.load()


def get_plugins() -> list[dict[str, Any]]:
    """Every registered plugin: ``name``, ``package``, ``version``, ``hooks``; failed ones with
    ``error``."""
    return plugin_set.describe()


def config_sections() -> dict[str, Any]:
    """The plugins' own sections of config.toml (:meth:`PluginSet.config_sections`)."""
    return plugin_set.config_sections()


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


# ---------------------------------------------------------------------------- refresh helpers
def _invalidate_caches() -> None:
    """Forget what the import system and importlib_metadata remember of the file system, so that a
    ``pip install`` made after this process started is seen."""
    importlib.invalidate_caches()
    finder = getattr(importlib_metadata, "MetadataPathFinder", None)
    if finder is not None and hasattr(finder, "invalidate_caches"):
        finder.invalidate_caches()


def _top_module(ep: Any) -> str:
    return ep.value.split(":", 1)[0].strip().split(".", 1)[0]


def _purge_modules(ep: Any) -> None:
    """Drop a tool package's modules from ``sys.modules`` so that loading it again imports the code
    installed now (an upgrade). The framework's own modules are never dropped."""
    dist = getattr(ep, "dist", None)
    if dist is not None and dist.name.replace("_", "-").lower() == _FRAMEWORK:
        return
    top = _top_module(ep)
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def _activate_path_files(dist: Any) -> bool:
    """Process the ``.pth`` files of a distribution installed after start-up (an editable install
    puts its import hook in one; Python reads them only at start). True if there was one."""
    found = False
    for file in getattr(dist, "files", None) or []:
        if str(file).endswith(".pth"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                site.addpackage(str(path.parent), path.name, None)
                found = True
    if found:
        importlib.invalidate_caches()
    return found


def _load_entry_point(ep: Any) -> Any:
    try:
        return ep.load()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".", 1)[0]
        if missing != _top_module(ep) or not _activate_path_files(getattr(ep, "dist", None)):
            raise
        return ep.load()


def _provides_tools(pm: Any, plugin: Any) -> bool:
    return any(caller.name == "register_tools" for caller in pm.get_hookcallers(plugin) or [])
