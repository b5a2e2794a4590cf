"""Tools uploaded through the API (reloading installed packages is maze_core.tools.reload_tools).

An uploaded tool is a ZIP extracted to ``{project_root}/maze/model_cache/{tool_name}/`` next to a
``metadata.json``; its ``.py`` files are imported and their ``@task`` functions registered with the
source ``upload:<tool_name>``. Registrations and removals go through the engine's registry, whose
listener records them as ``ToolRegistered`` / ``ToolRemoved`` events.

The log, not the folder, says which tools were uploaded: an upload is recorded as ``ToolUploaded``
(stream ``uploads``: the tool name, its metadata and the ZIP stored as a content-addressed blob in
the same append) and a deletion as ``ToolDeleted``. A server that starts again takes the latest
upload of each name not deleted since, rebuilds its folder from the blob when the folder is missing
or differs from what was uploaded, and registers it. A folder the log has no word on (uploaded
before uploads were logged) is registered as it is; one of a deleted tool is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from maze_core import events as ev
from maze_core.errors import NotFoundError
from maze_core.events import NewEvent
from maze_core.loading import own_modules, purge_modules_under, ship_by_value, task_files
from maze_core.logging import get_logger
from maze_core.registry import import_file
from maze_core.store import blob_hash

from .archive import Limits, safe_extract
from .errors import BadRequest, Conflict, Unprocessable
from .imports import importable

log = get_logger("maze.api.tools")

TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")   # fullmatch: "$" would allow a trailing newline
METADATA = "metadata.json"
UPLOAD_SOURCE = "upload:"


def check_tool_name(name: Any) -> str:
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise BadRequest(f"invalid tool name {name!r}: use up to 64 letters, digits, '_' and '-', "
                         f"starting with a letter or '_'")
    return name


def import_tasks(root: Path) -> list[Callable[..., Any]]:
    """Import every module of a tool folder (its own folder importable meanwhile, for helper
    modules) and return the ``@task`` functions each defines. An import error is the uploader's:
    ``Unprocessable`` naming the file."""
    funcs: list[Callable[..., Any]] = []
    with importable(root):   # helper modules of the tool, for this thread only
        for path in task_files(root):
            try:
                module = import_file(path)
            except BaseException as exc:  # SystemExit from a script, too
                raise Unprocessable(f"tool module {path.relative_to(root)} failed to import: "
                                    f"{type(exc).__name__}: {exc}") from None
            found = [obj for obj in list(vars(module).values())
                     if inspect.isfunction(obj) and isinstance(getattr(obj, "_task_meta", None), dict)
                     and obj.__module__ == module.__name__ and obj not in funcs]
            funcs.extend(found)
        # the tool's modules (its task files and the helpers they import) exist only here:
        # executors that ship functions to other processes (Ray) must send them by value
        ship_by_value(own_modules(root, list(sys.modules)))
    return funcs


def forget_modules(root: Path) -> None:
    """Drop modules loaded from ``root`` so that a later upload of the same name loads afresh."""
    purge_modules_under(root)


class UploadedTools:
    """The tool folder, the registry and the log, kept in step. ``engine`` (its ``store`` and
    ``record``) holds the uploads; without one, the folder alone does (tests of the folder)."""

    def __init__(self, root: Path, registry: Any, limits: Limits, engine: Any = None):
        self.root = root
        self.registry = registry
        self.limits = limits
        self.engine = engine

    def folder(self, name: str) -> Path:
        """The tool's folder: a direct child of the tool root (the name holds no separator)."""
        return self.root / check_tool_name(name)

    def metadata(self, name: str) -> dict[str, Any] | None:
        path = self.root / name / METADATA
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def installed(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.is_symlink() and TOOL_NAME.fullmatch(p.name)
                      and (p / METADATA).is_file())

    def logged(self) -> dict[str, dict[str, Any] | None]:
        """Per tool name the log speaks of: the payload of its latest ``ToolUploaded``, or None
        when a ``ToolDeleted`` came after it."""
        out: dict[str, dict[str, Any] | None] = {}
        if self.engine is None:
            return out
        for event in self.engine.store.read_stream(ev.UPLOADS_STREAM):
            if event.type == ev.TOOL_UPLOADED:
                out[event.data["name"]] = event.data
            elif event.type == ev.TOOL_DELETED:
                out[event.data["name"]] = None
        return out

    def load_all(self) -> list[str]:
        """Register every uploaded tool (at start): those the log holds, their folders restored
        from the log where missing or altered, and folders the log has no word on. A broken one
        is logged and skipped."""
        logged = self.logged()
        names = sorted({*self.installed(), *(n for n, up in logged.items() if up is not None)})
        registered = []
        for name in names:
            try:
                if name in logged:
                    upload = logged[name]
                    if upload is None:   # deleted: a folder left behind is not the tool any more
                        log.warning("removing the folder of a deleted uploaded tool", tool=name)
                        _remove(self.root / name)
                        continue
                    self._restore(name, upload)
                meta = self.metadata(name) or {}
                funcs = import_tasks(self.root / name)
                for func in funcs:
                    registered.append(self.registry.register_task(
                        func, source=UPLOAD_SOURCE + name, version=meta.get("version") or None).name)
            except Exception as exc:
                log.error("uploaded tool could not be loaded", tool=name, error=str(exc))
        return registered

    def _restore(self, name: str, upload: dict[str, Any]) -> None:
        """Make the tool's folder what was uploaded: extracted again from the archive blob when it
        is missing, or its files or metadata differ from the log's."""
        folder = self.folder(name)
        if (folder.is_dir() and not folder.is_symlink() and self.metadata(name) == upload["metadata"]
                and files_digest(folder) == upload["files_digest"]):
            return
        data = self.engine.store.get_blob(upload["archive"])   # NotFoundError: logged by load_all
        log.warning("restoring an uploaded tool's folder from the log", tool=name)
        _remove(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
        try:
            safe_extract(io.BytesIO(data), folder, self.limits)
            (folder / METADATA).write_text(json.dumps(upload["metadata"], indent=2), encoding="utf-8")
        except BaseException:
            _remove(folder)
            raise

    def install(self, name: str, archive: IO[bytes], fields: dict[str, str], uploaded_by: str) -> dict[str, Any]:
        """Extract, import, check for clashes, write metadata.json, record ``ToolUploaded``
        (with the archive as a blob), register. 409 when the tool or one of its task names exists
        already; nothing is left behind on failure."""
        folder = self.folder(name)
        if name in self.registry and not str(self.registry.get(name).source).startswith(UPLOAD_SOURCE):
            raise Conflict(f"a tool named {name!r} is already registered ({self.registry.get(name).source})")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise Conflict(f"tool {name!r} already exists; delete it first to replace it") from None
        recorded = False
        try:
            data = archive.read() if self.engine is not None else b""   # the log keeps the archive
            if self.engine is not None:
                archive = io.BytesIO(data)
            report = safe_extract(archive, folder, self.limits)
            meta_path = folder / METADATA
            if meta_path.exists() and not meta_path.is_file():
                raise Unprocessable(f"tool archive {name!r} has a folder named {METADATA}, the file the "
                                    f"server writes there")
            digest = files_digest(folder)   # before importing writes __pycache__ (skipped anyway)
            funcs = import_tasks(folder)
            if not funcs:
                raise Unprocessable(f"tool archive {name!r} defines no @task function in its .py files")
            task_names = [f._task_meta["name"] for f in funcs]
            taken = sorted({t for t in task_names if t in self.registry})
            if taken:
                raise Conflict(f"tool {name!r} defines task(s) already registered: {', '.join(taken)}")
            doubled = sorted({t for t in task_names if task_names.count(t) > 1})
            if doubled:
                raise Unprocessable(f"tool {name!r} defines task(s) twice: {', '.join(doubled)}")
            metadata = {"tool_name": name, **fields, "tasks": task_names, "uploaded_by": uploaded_by,
                        "uploaded_at": time.time(), "files": report.files, "bytes": report.bytes}
            meta_path.write_text(json.dumps(metadata, indent=2), encoding="utf-8")   # replaces the archive's
            if self.engine is not None:
                archive_ref = blob_hash(data)
                self.engine.record([NewEvent(ev.UPLOADS_STREAM, ev.TOOL_UPLOADED, {
                    "name": name, "metadata": metadata, "archive": archive_ref, "bytes": len(data),
                    "files_digest": digest}, uploaded_by)], blobs={archive_ref: data})
                recorded = True
            for func in funcs:
                self.registry.register_task(func, source=UPLOAD_SOURCE + name,
                                            version=fields.get("version") or None)
        except BaseException:
            if recorded:   # the log must not keep an upload that is not there
                self._unregister(name, reason=f"upload of tool {name} failed")
                with contextlib.suppress(Exception):
                    self._record_deleted(name, [], uploaded_by)
            forget_modules(folder)
            _remove(folder)
            raise
        return metadata

    def remove(self, name: str, actor: str = "system") -> list[str]:
        """Unregister an uploaded tool's tasks, record ``ToolDeleted`` and delete its folder."""
        folder = self.folder(name)
        if not (folder.is_dir() and not folder.is_symlink() and (folder / METADATA).is_file()):
            if name in self.registry:
                raise BadRequest(f"tool {name!r} was not uploaded (source "
                                 f"{self.registry.get(name).source}); uninstall its package instead")
            raise NotFoundError(f"tool {name!r} does not exist")
        removed = self._unregister(name, reason=f"tool {name} deleted")
        forget_modules(folder)
        self._record_deleted(name, removed, actor)
        _remove(folder)
        return removed

    def _unregister(self, name: str, reason: str) -> list[str]:
        source = UPLOAD_SOURCE + name
        removed = []
        for task_name in self.registry.names():
            if self.registry.get(task_name).source == source:
                self.registry.unregister(task_name, reason=reason)
                removed.append(task_name)
        return removed

    def _record_deleted(self, name: str, tasks: list[str], actor: str) -> None:
        if self.engine is not None:
            self.engine.record([NewEvent(ev.UPLOADS_STREAM, ev.TOOL_DELETED,
                                         {"name": name, "tasks": tasks}, actor)])


def files_digest(folder: Path) -> str:
    """sha256 over a tool folder's regular files (relative path and contents, in path order),
    leaving out ``metadata.json`` (the server's) and ``__pycache__`` (written by imports)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts == (METADATA,) or "__pycache__" in rel.parts or path.is_symlink() or not path.is_file():
            continue
        digest.update(rel.as_posix().encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _remove(folder: Path) -> None:
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
