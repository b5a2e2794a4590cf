"""Zip archives in and out, safely.

``safe_extract`` refuses, before or while writing: names with ``..``, absolute names, drive letters,
backslashes or NUL; symlinks and other special members; encrypted members; duplicate names; more
members than allowed; and, counting the bytes actually written (sizes claimed in the zip headers are
never trusted), more uncompressed data than allowed in total or a member that inflates beyond the
allowed ratio (zip bombs). Files are created with ``O_EXCL | O_NOFOLLOW`` under a fresh folder, so
nothing can be written outside it. The caller removes the folder when extraction fails.

``write_zip`` packs a folder, skipping symlinks and special files so that a link planted in a run
folder cannot leak a file from outside it.
"""

from __future__ import annotations

import os
import stat
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

CHUNK = 1 << 16
RATIO_FLOOR = 256 * 1024  # a member must inflate past 256 KB before its ratio is judged


class ArchiveError(ValueError):
    """The archive is malformed or breaks a limit (the client's fault: 400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_members: int
    max_ratio: float


@dataclass(slots=True)
class Extracted:
    files: int = 0
    bytes: int = 0


def member_parts(name: str) -> tuple[str, ...]:
    """The path parts of an archive member or a client-given file name; ``ArchiveError`` for a
    name that could leave its folder or that no file system should hold."""
    if not name or "\x00" in name:
        raise ArchiveError(f"invalid name {name!r}: empty or holding a NUL byte")
    if "\\" in name:
        raise ArchiveError(f"invalid name {name!r}: backslashes are not allowed")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"invalid name {name!r}: absolute paths are not allowed")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise ArchiveError(f"invalid name {name!r}: '..' is not allowed")
    if not parts:
        raise ArchiveError(f"invalid name {name!r}")
    return parts


def _kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "link" if stat.S_ISLNK(mode) else "special"
    return "file"


def safe_extract(source: str | os.PathLike[str] | IO[bytes], dest: Path, limits: Limits) -> Extracted:
    """Extract the zip ``source`` into the existing, empty folder ``dest``."""
    dest = Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"not a valid zip archive: {exc}") from None
    report = Extracted()
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_members:
            raise ArchiveError(f"the archive holds {len(members)} entries; the limit is "
                               f"{limits.max_members} ([server] max_archive_files)", 413)
        for info in members:
            parts = member_parts(info.filename)
            kind = _kind(info)
            if kind == "link":
                raise ArchiveError(f"archive member {info.filename!r} is a symbolic link; links are refused")
            if kind == "special":
                raise ArchiveError(f"archive member {info.filename!r} is not a regular file")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r} is encrypted")
            target = dest.joinpath(*parts)
            if not target.parent.resolve().is_relative_to(dest):   # belt and braces
                raise ArchiveError(f"archive member {info.filename!r} leaves the target folder")
            try:
                if kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArchiveError(f"archive member {info.filename!r} cannot be created: "
                                   f"{exc.strerror or exc}") from None
            report.bytes += _extract_member(zf, info, target, limits, report.bytes)
            report.files += 1
    return report


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: Limits,
                    total_before: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise ArchiveError(f"archive member {info.filename!r} appears twice or clashes with a folder") from None
    except OSError as exc:
        raise ArchiveError(f"archive member {info.filename!r} cannot be written: {exc.strerror}") from None
    written = 0
    compressed = max(info.compress_size, 1)
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if total_before + written > limits.max_bytes:
                    raise ArchiveError(f"the archive inflates to more than {limits.max_bytes} bytes "
                                       f"([server] max_archive_mb)", 413)
                if written > RATIO_FLOOR and written > limits.max_ratio * compressed:
                    raise ArchiveError(f"archive member {info.filename!r} inflates more than "
                                       f"{limits.max_ratio:g} times ([server] max_compression_ratio): "
                                       f"refused as a zip bomb", 413)
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"archive member {info.filename!r} is corrupt or unsupported: "
                           f"{str(exc) or type(exc).__name__}") from None   # EOFError() says nothing
    except (zipfile.LargeZipFile, OSError) as exc:
        raise ArchiveError(f"archive member {info.filename!r} cannot be extracted: {exc}") from None
    return written


def iter_files(root: Path) -> Iterable[tuple[str, Path]]:
    """``(relative posix name, path)`` of every regular file under ``root``, sorted, never
    following or including symlinks."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in filenames:
            path = Path(dirpath, name)
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _zip_info(name: str, st: os.stat_result) -> zipfile.ZipInfo:
    """A member's header from the open file's own stat (ZipInfo.from_file would stat the path
    again, following whatever a task put there since, and refuses dates before 1980)."""
    year, *rest = time.localtime(st.st_mtime)[:6]
    if year < 1980:
        date_time = (1980, 1, 1, 0, 0, 0)
    elif year > 2107:
        date_time = (2107, 12, 31, 23, 59, 58)
    else:
        date_time = (year, *rest)
    info = zipfile.ZipInfo(name, date_time)
    info.external_attr = (st.st_mode & 0xFFFF) << 16
    info.file_size = st.st_size
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def write_zip(out: IO[bytes], files: Iterable[tuple[str, Path]]) -> int:
    """Write ``(name, path)`` pairs into a zip on ``out``; returns the number of files."""
    count = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=5) as zf:
        for name, path in files:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue  # vanished, or turned into a link meanwhile
            with os.fdopen(fd, "rb") as src:
                st = os.fstat(src.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = _zip_info(name, st)
                with zf.open(info, "w", force_zip64=True) as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
            count += 1
    return count
