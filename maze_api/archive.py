"""Zip archives in and out, safely.

``safe_extract`` refuses, before writing anything: names with ``..``, absolute names, drive letters,
backslashes or NUL (judged on the name as stored: ``zipfile`` cuts a name at its first NUL), names
too long for a file system; symlinks and other special members; encrypted members; members
compressed otherwise than stored or deflated (bzip2 and LZMA are inflated unbounded); duplicate names
(folders too) and names that differ only by case or Unicode normalisation (one file on macOS and
Windows); more members than allowed. While writing it refuses, counting the bytes actually written
and the compressed bytes actually read (sizes claimed in the zip headers are never trusted), more
uncompressed data than allowed in total or a member that inflates beyond the allowed ratio (zip
bombs). Files are created with ``O_EXCL | O_NOFOLLOW`` under a fresh folder, so nothing can be
written outside it. The caller removes the folder when extraction fails.

``write_zip`` packs a folder, skipping symlinks and special files so that a link planted in a run
folder cannot leak a file from outside it.
"""

from __future__ import annotations

import os
import stat
import time
import unicodedata
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

CHUNK = 1 << 16
RATIO_FLOOR = 256 * 1024  # a member must inflate past 256 KB before its ratio is judged
NAME_MAX = 255            # bytes (UTF-8) in one path component: ext4, APFS, NTFS (in characters)
PATH_MAX = 4096           # bytes (UTF-8) in a whole relative name
# zipfile inflates deflated members a chunk at a time, but hands a bzip2 or LZMA decompressor all it
# read at once, unbounded: 64 KB of bzip2 hold tens of GB of zeros, all in memory before any check
SAFE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


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
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:   # a lone surrogate, as JSON's "\ud800" gives
        raise ArchiveError(f"invalid name {name!r}: not valid Unicode") from None
    if size > PATH_MAX:
        raise ArchiveError(f"invalid name {name[:64]!r}...: too long ({size} bytes; at most "
                           f"{PATH_MAX} bytes in UTF-8)")
    if "\\" in name:
        raise ArchiveError(f"invalid name {name!r}: backslashes are not allowed")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"invalid name {name!r}: absolute paths are not allowed")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise ArchiveError(f"invalid name {name!r}: '..' is not allowed")
    if not parts:
        raise ArchiveError(f"invalid name {name!r}")
    for part in parts:
        if len(part.encode("utf-8")) > NAME_MAX:
            raise ArchiveError(f"invalid name {name[:64]!r}{'...' if len(name) > 64 else ''}: a part "
                               f"is too long ({len(part.encode('utf-8'))} bytes; at most {NAME_MAX} "
                               f"bytes in UTF-8)")
    return parts


def name_key(parts: Iterable[str]) -> str:
    """What ``parts`` are on a case-insensitive, normalisation-insensitive file system (macOS,
    Windows): two names with one key are one file there."""
    return "/".join(unicodedata.normalize("NFD", unicodedata.normalize("NFD", p).casefold()) for p in parts)


class NameTable:
    """The paths an archive (or an upload) makes, folders included, by ``name_key``: refuses a
    name given twice and two names that are one on macOS or Windows."""

    def __init__(self) -> None:
        self._paths: dict[str, tuple[tuple[str, ...], str, bool]] = {}

    def claim(self, name: str, parts: tuple[str, ...], kind: str) -> None:
        """Record the member ``name`` (``kind`` "file" or "dir") and the folders leading to it."""
        for depth in range(1, len(parts)):
            self._claim(name, parts[:depth], "dir", explicit=False)
        self._claim(name, parts, kind, explicit=True)

    def _claim(self, name: str, parts: tuple[str, ...], kind: str, explicit: bool) -> None:
        key = name_key(parts)
        known = self._paths.get(key)
        if known is None:
            self._paths[key] = (parts, kind, explicit)
            return
        known_parts, known_kind, known_explicit = known
        if known_parts != parts:
            raise ArchiveError(f"name {name!r}: {'/'.join(parts)!r} and {'/'.join(known_parts)!r} differ "
                               f"only by case or Unicode normalisation (one name on macOS and Windows)")
        if known_kind != kind:
            raise ArchiveError(f"name {name!r}: {'/'.join(parts)!r} is both a file and a folder")
        if explicit and known_explicit:
            raise ArchiveError(f"name {name!r} appears twice")
        if explicit:
            self._paths[key] = (parts, kind, True)


def _kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "link" if stat.S_ISLNK(mode) else "special"
    return "file"


class _CountingReader:
    """The archive's file, counting the bytes read from it: the compressed bytes a member really
    took, whatever its headers claim."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True


def safe_extract(source: str | os.PathLike[str] | IO[bytes], dest: Path, limits: Limits) -> Extracted:
    """Extract the zip ``source`` into the existing, empty folder ``dest``."""
    dest = Path(dest).resolve()
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return safe_extract(fh, dest, limits)
    reader = _CountingReader(source)
    try:
        zf = zipfile.ZipFile(reader)   # type: ignore[arg-type]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"not a valid zip archive: {exc}") from None
    report = Extracted()
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_members:
            raise ArchiveError(f"the archive holds {len(members)} entries; the limit is "
                               f"{limits.max_members} ([server] max_archive_files)", 413)
        plan = []
        names = NameTable()
        for info in members:   # every name is judged before anything is written
            # the name as stored: zipfile cuts ``filename`` at a NUL ("a\0../../x" becomes "a")
            raw = getattr(info, "orig_filename", info.filename)
            parts = member_parts(raw)
            kind = _kind(info)
            if kind == "link":
                raise ArchiveError(f"archive member {raw!r} is a symbolic link; links are refused")
            if kind == "special":
                raise ArchiveError(f"archive member {raw!r} is not a regular file")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {raw!r} is encrypted")
            if kind == "file" and info.compress_type not in SAFE_METHODS:
                raise ArchiveError(f"archive member {raw!r} is compressed with method {info.compress_type}; "
                                   f"only stored (0) and deflated (8) members are accepted")
            names.claim(raw, parts, kind)
            plan.append((info, parts, kind))
        for info, parts, kind in plan:
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
            report.bytes += _extract_member(zf, reader, info, target, limits, report.bytes)
            report.files += 1
    return report


def _extract_member(zf: zipfile.ZipFile, reader: _CountingReader, info: zipfile.ZipInfo, target: Path,
                    limits: Limits, total_before: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise ArchiveError(f"archive member {info.filename!r} appears twice or clashes with a folder") from None
    except OSError as exc:
        raise ArchiveError(f"archive member {info.filename!r} cannot be written: {exc.strerror}") from None
    written = 0
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            start = reader.count   # the local header is read by now: what follows is the member's data
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if total_before + written > limits.max_bytes:
                    raise ArchiveError(f"the archive inflates to more than {limits.max_bytes} bytes "
                                       f"([server] max_archive_mb)", 413)
                # the compressed bytes actually read (never the size the headers claim, which could
                # cover any amount of padding); zipfile reads ahead at most one chunk
                compressed = max(reader.count - start, 1)
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
