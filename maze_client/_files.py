"""Zip archives on the client side: the project archive sent with a workflow, safe extraction of
downloads."""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

__all__ = ["ProjectFiles", "safe_extract", "zip_project"]

ProjectFiles = Iterable[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]]

_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def _arcname(path: Path) -> str:
    """Where a file given as ``path`` lands in the run directory: its relative path when it is
    relative and stays below the working directory, else its bare name."""
    if not path.is_absolute() and ".." not in path.parts:
        parts = [p for p in path.parts if p not in ("", ".")]
        if parts:
            return PurePosixPath(*parts).as_posix()
    return path.resolve().name


def _check_arcname(name: str) -> str:
    pure = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or pure.is_absolute() or ".." in parts or ":" in parts[0]:
        raise ValueError(f"project file name {name!r} must be a relative path inside the run directory")
    return PurePosixPath(*parts).as_posix()


def _entries(project_files: ProjectFiles) -> Iterable[tuple[str, Path]]:
    """(name in the archive, local path) for every file, directories expanded."""
    items: Iterable[tuple[str, Any]]
    if isinstance(project_files, Mapping):
        items = ((_check_arcname(str(name)), local) for name, local in project_files.items())
    else:
        if isinstance(project_files, str | os.PathLike):
            project_files = [project_files]
        items = ((_arcname(Path(local)), local) for local in project_files)
    for name, local in items:
        path = Path(local)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
                for filename in sorted(files):
                    if filename.endswith((".pyc", ".pyo")):
                        continue
                    full = Path(root) / filename
                    rel = full.relative_to(path).as_posix()
                    yield f"{name}/{rel}", full
        elif path.is_file():
            yield name, path
        else:
            raise FileNotFoundError(f"project file {str(local)!r} does not exist")


def zip_project(project_files: ProjectFiles | None) -> bytes:
    """The project archive (ZIP bytes) of ``project_files``: paths of files or folders, or a
    mapping of name in the run directory to local path. Relative paths keep their relative name;
    absolute ones (and ones reaching outside with ``..``) keep only their last part. Two different
    files under one name raise ``ValueError``; a missing path raises ``FileNotFoundError``."""
    buffer = io.BytesIO()
    seen: dict[str, Path] = {}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in _entries(project_files or []):
            previous = seen.get(name)
            if previous is not None:
                if previous.resolve() == path.resolve():
                    continue
                raise ValueError(f"project files {str(previous)!r} and {str(path)!r} would both be "
                                 f"{name!r} in the run directory; pass a dict of name to path")
            seen[name] = path
            archive.write(path, arcname=name)
    return buffer.getvalue()


def safe_extract(source: IO[bytes] | str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Extract a ZIP into ``dest`` refusing names that would land outside it (absolute paths,
    ``..``, drive letters) and skipping symbolic links. Returns the files written."""
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            name = info.filename.replace("\\", "/")
            pure = PurePosixPath(name)
            parts = [p for p in pure.parts if p not in ("", ".")]
            if pure.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
                raise ValueError(f"archive member {info.filename!r} would land outside {root}")
            if not parts:
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                continue
            target = root.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise ValueError(f"archive member {info.filename!r} would land outside {root}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written.append(target)
    return written
