"""File sync of a run folder (the original Maze server API's /files routes): hashes, download of chosen files, upload.

Every client-given name is relative, free of NUL and ``..``, no longer than a file system allows,
and must resolve inside the run folder; symbolic links are never followed (not even to a place
inside the folder) nor served. Uploaded names must not collide, by case or Unicode normalisation,
with each other or with what the folder holds: they would be one file on macOS and Windows."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from maze_core import api_models as shapes
from maze_core.errors import NotFoundError
from maze_core.logging import get_logger

from ..archive import CHUNK, ArchiveError, NameTable, iter_files, name_key
from ..auth import Identity
from ..context import ServerContext
from ..deps import current_identity, get_ctx
from ..errors import BadRequest, LoggedRoute
from .runs import zip_response

log = get_logger("maze.api")
router = APIRouter(route_class=LoggedRoute, tags=["files"])

MULTIPART_UPLOAD = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "additionalProperties": {"type": "string", "format": "binary"},
    "description": "one part per file; the field name is the file's path relative to the run folder "
                   "(e.g. output/result.png)"}}}}}


class FileList(BaseModel):
    files: list[str] = Field(description="paths relative to the run folder")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK * 4):
            digest.update(chunk)
    return digest.hexdigest()


@router.get("/files/hashes/{run_id}", summary="SHA256 of every file of the run folder",
            responses=shapes.responses(404))
def file_hashes(run_id: str, identity: Identity = Depends(current_identity),
                ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """``{"status": "success", "run_id", "hashes": {"relative/path": "<sha256 hex>"}}``."""
    ctx.run_row(identity, run_id)
    folder = ctx.existing_run_dir(run_id)
    hashes = {}
    for name, path in iter_files(folder):
        try:
            hashes[name] = sha256_file(path)
        except OSError:
            continue  # removed meanwhile
    return {"status": "success", "run_id": run_id, "hashes": hashes}


@router.post("/files/download/{run_id}", summary="Chosen files of the run folder as a ZIP",
             response_class=StreamingResponse,
             responses={200: {"content": {"application/zip": {}}, "description": "ZIP of the files"},
                        **shapes.responses(400, 404)})
def download_files(run_id: str, body: FileList, identity: Identity = Depends(current_identity),
                   ctx: ServerContext = Depends(get_ctx)) -> StreamingResponse:
    """Body ``{"files": ["a.py", "data/input.jpg"]}``. 400 for a name outside the run folder or
    leading through a symbolic link, 404 for a file that does not exist."""
    ctx.run_row(identity, run_id)
    folder = ctx.existing_run_dir(run_id)
    if len(body.files) > ctx.archive_limits.max_members:
        raise BadRequest(f"at most {ctx.archive_limits.max_members} files per request")
    chosen: dict[str, Path] = {}   # by relative name: "a.py" and "./a.py" are one member
    for name in dict.fromkeys(body.files):
        path = ctx.confined(folder, name)
        if not _regular_file(folder, path, name):
            raise NotFoundError(f"run {run_id} has no file {name!r}")
        chosen.setdefault(path.relative_to(folder).as_posix(), path)
    return zip_response(list(chosen.items()), f"{run_id}-files.zip")


@router.post("/files/upload/{run_id}", summary="Write files into the run folder",
             openapi_extra=MULTIPART_UPLOAD, responses=shapes.responses(400, 404, 409))
async def upload_files(run_id: str, request: Request, identity: Identity = Depends(current_identity),
                       ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    """Multipart; each part's field name is the file's relative path. Every name is checked before
    anything is written. Returns ``{"status": "success", "run_id", "files": [...], "bytes"}``."""
    await run_in_threadpool(ctx.run_row, identity, run_id)
    folder = await run_in_threadpool(ctx.existing_run_dir, run_id)
    form = await request.form(max_files=ctx.archive_limits.max_members,
                              max_fields=ctx.archive_limits.max_members, max_part_size=ctx.max_body)
    try:
        items = list(form.multi_items())
        if not items:
            raise BadRequest("no files in the request: send one multipart part per file, named by "
                             "its path relative to the run folder")
        return await run_in_threadpool(_write_files, ctx, identity, run_id, folder, items)
    finally:
        await form.close()


def _regular_file(folder: Path, path: Path, name: str) -> bool:
    """Whether ``path`` (inside ``folder``) is a regular file reached without any symbolic link;
    ``ArchiveError`` (400) when a link is on the way, even one pointing inside the folder."""
    current = folder
    parts = path.relative_to(folder).parts
    st = None
    for depth, part in enumerate(parts, 1):
        current = current / part
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise ArchiveError(f"cannot read {name!r}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            raise ArchiveError(f"invalid name {name!r}: {'/'.join(parts[:depth])!r} is a symbolic link; "
                               f"links are never followed")
    return st is not None and stat.S_ISREG(st.st_mode)


def _no_collisions(folder: Path, targets: list[tuple[str, Path, Any]]) -> None:
    """``ArchiveError`` when two names of the request, or a name and an entry of the folder,
    differ only by case or Unicode normalisation (one file once the run is on macOS or Windows)."""
    names = NameTable()
    listings: dict[Path, dict[str, set[str]]] = {}
    for name, path, _ in targets:
        parts = path.relative_to(folder).parts
        names.claim(name, parts, "file")
        parent = folder
        for part in parts:
            if parent != folder and os.path.islink(parent):
                break   # never listed through: a link on the way is refused when writing
            entries = listings.get(parent)
            if entries is None:
                entries = {}
                try:
                    for entry in os.listdir(parent):
                        entries.setdefault(name_key([entry]), set()).add(entry)
                except OSError:   # not there yet, or not a folder (refused when writing)
                    pass
                listings[parent] = entries
            clash = sorted(entries.get(name_key([part]), set()) - {part})
            if clash:
                where = "/".join((*parent.relative_to(folder).parts, clash[0]))
                raise ArchiveError(f"cannot write {name!r}: it and {where!r} in the run folder differ "
                                   f"only by case or Unicode normalisation (one name on macOS and Windows)")
            parent = parent / part


def _write_files(ctx: ServerContext, identity: Identity, run_id: str, folder: Path,
                 items: list[tuple[str, Any]]) -> dict[str, Any]:
    with ctx.run_lock(run_id):   # not while the run is being destroyed
        if ctx.destroyed(run_id) or not folder.is_dir():
            raise NotFoundError(f"run {run_id!r} was destroyed: its folder is gone")
        return _write_locked(ctx, identity, run_id, folder, items)


def _write_locked(ctx: ServerContext, identity: Identity, run_id: str, folder: Path,
                  items: list[tuple[str, Any]]) -> dict[str, Any]:
    targets = [(name, ctx.confined(folder, name), value) for name, value in items]
    seen: set[Path] = set()
    for name, path, _ in targets:
        if path in seen:
            raise BadRequest(f"file {name!r} appears twice in the request")
        seen.add(path)
    _no_collisions(folder, targets)
    written = []
    size = 0
    for name, path, value in targets:
        _prepare_parent(folder, path, name)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ArchiveError(f"cannot write {name!r}: a link or a folder is in the way")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(value, UploadFile):
                    value.file.seek(0)
                    while chunk := value.file.read(CHUNK * 4):
                        size += len(chunk)
                        out.write(chunk)
                else:
                    data = str(value).encode("utf-8")
                    size += len(data)
                    out.write(data)
            os.replace(tmp, path)   # replaces a file; never writes through a link
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        written.append(path.relative_to(folder).as_posix())
    log.info("files uploaded", run_id=run_id, by=identity.name, files=len(written), bytes=size)
    return {"status": "success", "run_id": run_id, "files": written, "bytes": size}


def _prepare_parent(folder: Path, path: Path, name: str) -> None:
    """Create the folders leading to ``path``, refusing any step that is a link or a file."""
    current = folder
    for part in path.relative_to(folder).parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise ArchiveError(f"cannot write {name!r}: {current.relative_to(folder)} is a symbolic link")
        if not current.exists():
            current.mkdir()
        elif not current.is_dir():
            raise ArchiveError(f"cannot write {name!r}: {current.relative_to(folder)} is a file")
