"""Folders importable by one thread only.

Loading a workflow unpickles functions defined in its project archive, and uploading a tool imports
its modules: both need a folder importable while they run. Putting it on ``sys.path`` would make it
importable by every thread of the server for that time - a task running meanwhile that imports
``utils`` for the first time could get the ``utils.py`` of somebody's project. ``importable(folder)``
instead serves top-level imports from ``folder`` to the calling thread alone, ahead of the rest of
``sys.path`` (as ``sys.path[0]`` would, builtin modules excepted); submodules of a package found
there follow its ``__path__`` as usual.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

_lock = threading.Lock()


class _ThreadFolders(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._local = threading.local()

    def folders(self) -> list[str]:
        return getattr(self._local, "folders", None) or []

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> Any:
        folders = self.folders()
        if not folders or path is not None:   # top-level names only
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, folders, target)

    @contextlib.contextmanager
    def importable(self, folder: str) -> Iterator[None]:
        before = self.folders()
        self._local.folders = [folder, *before]
        try:
            yield
        finally:
            self._local.folders = before
            sys.path_importer_cache.pop(folder, None)
            importlib.invalidate_caches()


_finder: _ThreadFolders | None = None


def _installed() -> _ThreadFolders:
    global _finder
    with _lock:
        if _finder is None or _finder not in sys.meta_path:
            _finder = _finder or _ThreadFolders()
            # where sys.path[0] would be searched: after builtin and frozen modules, before the path
            at = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder),
                      len(sys.meta_path))
            sys.meta_path.insert(at, _finder)
        return _finder


def importable(folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """Within the block, the calling thread (only) imports top-level modules from ``folder`` first."""
    return _installed().importable(str(folder))
