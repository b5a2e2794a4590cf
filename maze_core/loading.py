"""The rules for loading user code, in one place: which modules are installed (imported by name
everywhere) and which are the user's own (shipped by value), purging a folder's modules, and which
files of a tool folder are scanned.

Used by the CLI (``maze run``), the SDK's payload (``maze_client._wire``), the server (run folders
and uploaded tools) and the tool registry (``[tools] paths``). Light: the standard library only
(cloudpickle when shipping), so the SDK may import it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

__all__ = ["installed", "module_location", "own_modules", "purge_modules_under", "ship_by_value",
           "task_files"]


def _install_roots() -> tuple[Path, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            roots.add(paths[key])
    return tuple(Path(r).resolve() for r in roots if r)


def installed(path: Path | str) -> bool:
    """Whether ``path`` belongs to an installation rather than to the user's project: it lies in a
    ``site-packages`` / ``dist-packages`` folder (any environment, a virtualenv inside the project
    folder too) or under the running Python's installation (``sys.prefix``, ``sys.base_prefix``,
    the stdlib and site folders). Installed modules are importable by name in another process
    that has the same packages; anything else is the user's and travels by value."""
    return _installed(Path(path).resolve(), _install_roots())


def _installed(path: Path, roots: tuple[Path, ...]) -> bool:
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return True
    return any(path.is_relative_to(root) for root in roots)


def module_location(module: ModuleType | None) -> Path | None:
    """The file of ``module`` (the first folder of a namespace package), resolved; None if none."""
    if module is None:
        return None
    filename = getattr(module, "__file__", None)
    if not filename:
        paths = list(getattr(module, "__path__", None) or [])
        filename = paths[0] if paths else None
    return Path(filename).resolve() if filename else None


def own_modules(folder: Path, names: Iterable[str]) -> list[ModuleType]:
    """Of the modules ``names`` (in ``sys.modules``), those loaded from a file under ``folder``
    that is not :func:`installed`: the modules a workflow file (or a tool folder) brought along."""
    folder = Path(folder).resolve()
    found = []
    for name in names:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder) and not installed(file):
            found.append(module)
    return found


def ship_by_value(modules: Iterable[ModuleType]) -> None:
    """Have cloudpickle pickle the functions of ``modules`` by value: another process (a resumed
    run, a Ray worker, the server) cannot import them by name."""
    import cloudpickle
    for module in modules:
        cloudpickle.register_pickle_by_value(module)


def purge_modules_under(folder: Path, among: Iterable[str] | None = None) -> list[str]:
    """Drop from ``sys.modules`` the modules loaded from files under ``folder`` (only those of
    ``among`` when given), no longer pickled by value, so that the next import of the same names
    loads afresh. Returns the names dropped."""
    folder = Path(folder).resolve()
    names = list(sys.modules) if among is None else [n for n in among if n in sys.modules]
    dropped = []
    for name in names:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            if "cloudpickle" in sys.modules:   # nothing registered by value without it
                with contextlib.suppress(ValueError):
                    sys.modules["cloudpickle"].unregister_pickle_by_value(module)
            del sys.modules[name]
            dropped.append(name)
    importlib.invalidate_caches()
    return dropped


def task_files(folder: Path) -> list[Path]:
    """The ``.py`` files of a tool folder, in order. Skipped: files named ``_*`` (``__init__.py``
    included), anything in a folder named ``.*`` or ``_*`` (hidden folders, ``__pycache__``), and
    symbolic links (a tool folder's code is its own files)."""
    out = []
    for path in sorted(Path(folder).rglob("*.py")):
        parts = path.relative_to(folder).parts
        if path.name.startswith("_") or any(p.startswith((".", "_")) for p in parts[:-1]):
            continue
        if path.is_symlink():
            continue
        out.append(path)
    return out
