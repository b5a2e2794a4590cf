"""What every request handler shares: the engine, the store, the folders, and the rules for who
may see which run."""

from __future__ import annotations

import inspect
import json
import shutil
import sys
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from maze_core import events as ev
from maze_core import state
from maze_core.config import MazeConfig
from maze_core.dag import DAG
from maze_core.errors import NotFoundError
from maze_core.loading import purge_modules_under

from .archive import ArchiveError, Limits, member_parts
from .auth import Identity, TokenTable
from .imports import importable

MB = 1024 * 1024
RUN_DESTROYED = ev.RUN_DESTROYED   # recorded in a run's stream when the server removes its folder
RUN_FINISHED = state.RUN_FINISHED      # one definition, in maze_core.state
TASK_TERMINAL = state.TERMINAL
WORKDIR_CACHE = 10000
RUN_LOCK_STRIPES = 64
INT_MAX = 2**63 - 1   # offsets and sequence numbers past this cannot reach SQLite (422, not 500)


def engine_state(engine: Any) -> str:
    """``running``, ``stopped``, ``failed``... (``Engine.state``)."""
    return str(getattr(engine, "state", "running"))


class ServerContext:
    """Shared state of one app: built in the lifespan, reached through ``request.app.state.maze``."""

    def __init__(self, config: MazeConfig, engine: Any, tokens: TokenTable):
        self.config = config
        self.engine = engine
        self.store = engine.store
        self.tokens = tokens
        self.runs_root = (config.data_dir / "runs").resolve()
        self.tools_root = self.tools_root_of(config)
        sc = config.server
        self.max_body = int(sc.max_body_mb * MB)
        self.archive_limits = self.archive_limits_of(config)
        self.heartbeat_s = sc.sse_heartbeat_s
        self.started_at = time.time()
        self.tools_lock = threading.Lock()    # tool uploads, deletions and reloads, one at a time
        self._run_locks = [threading.Lock() for _ in range(RUN_LOCK_STRIPES)]
        self._import_lock = threading.Lock()  # sys.path is process-wide
        self._workdirs: OrderedDict[str, str | None] = OrderedDict()
        self._workdirs_lock = threading.Lock()
        try:
            self._owner_filter = "owner" in inspect.signature(self.store.list_runs).parameters
        except (TypeError, ValueError):
            self._owner_filter = False

    @staticmethod
    def tools_root_of(config: MazeConfig) -> Path:
        """Where uploaded tools live: ``{project_root}/maze/model_cache`` (seed 001)."""
        return (config.project_root / "maze" / "model_cache").resolve()

    @staticmethod
    def archive_limits_of(config: MazeConfig) -> Limits:
        sc = config.server
        return Limits(int(sc.max_archive_mb * MB), sc.max_archive_files, sc.max_compression_ratio)

    # ------------------------------------------------------------------ runs and owners
    def run_row(self, identity: Identity, run_id: str) -> dict[str, Any]:
        """The run's row if ``identity`` may see it; otherwise the same 404 as for a missing run,
        so that a token learns nothing about the runs of others."""
        row = self.store.get_run(run_id)
        if row is None or not self.may_see(identity, row):
            raise NotFoundError(f"run {run_id!r} does not exist")
        return row

    @staticmethod
    def may_see(identity: Identity, row: dict[str, Any]) -> bool:
        return identity.admin or row.get("owner") == identity.name

    def list_runs(self, identity: Identity, status: str | None, name: str | None, limit: int,
                  offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the runs ``identity`` may see, newest first, and how many there are."""
        if identity.admin:
            return (self.store.list_runs(status=status, name=name, limit=limit, offset=offset),
                    self.store.count_runs(status=status, name=name))
        if self._owner_filter:   # a store that filters by owner itself
            return (self.store.list_runs(status=status, name=name, limit=limit, offset=offset,
                                         owner=identity.name),
                    self.store.count_runs(status=status, name=name, owner=identity.name))
        page: list[dict[str, Any]] = []
        total = 0
        position = 0
        while True:
            chunk = self.store.list_runs(status=status, name=name, limit=500, offset=position)
            for row in chunk:
                if row.get("owner") == identity.name:
                    if offset <= total < offset + limit:
                        page.append(row)
                    total += 1
            if len(chunk) < 500:
                return page, total
            position += 500

    def count_runs(self, identity: Identity) -> dict[str, int]:
        """The runs ``identity`` may see, by status."""
        statuses = state.RUN_STATUSES
        if identity.admin:
            return {status: self.store.count_runs(status=status) for status in statuses}
        if self._owner_filter:
            return {status: self.store.count_runs(status=status, owner=identity.name) for status in statuses}
        counts = dict.fromkeys(statuses, 0)
        position = 0
        while True:   # one pass over the runs (a store filtering by owner does better)
            chunk = self.store.list_runs(limit=500, offset=position)
            for row in chunk:
                if row.get("owner") == identity.name and row.get("status") in counts:
                    counts[row["status"]] += 1
            if len(chunk) < 500:
                return counts
            position += 500

    @staticmethod
    def active(row: dict[str, Any]) -> int:
        """How many tasks of the run are not finished (0 for a finished run)."""
        counts = row.get("task_counts") or {}
        unfinished = sum(n for status, n in counts.items() if status not in TASK_TERMINAL)
        return unfinished if row["status"] in RUN_FINISHED else max(unfinished, 1)

    def destroyed(self, run_id: str) -> dict[str, Any] | None:
        """The ``RunDestroyed`` event of a run (always its last), or None."""
        stream = ev.run_stream(run_id)
        version = self.store.stream_version(stream)
        if version == 0:
            return None
        last = self.store.read_stream(stream, after_version=version - 1)
        if last and last[-1].type == RUN_DESTROYED:
            return {"destroyed_at": last[-1].ts, "destroyed_by": last[-1].actor}
        return None

    # ------------------------------------------------------------------ run folders
    def new_sandbox(self) -> Path:
        """A fresh, empty run folder under ``{data_dir}/runs``. Its name is not the run id (the
        engine picks that at submit); the ``RunSubmitted`` event records the folder as ``workdir``."""
        self.runs_root.mkdir(parents=True, exist_ok=True)
        path = self.runs_root / uuid.uuid4().hex
        path.mkdir()
        return path

    def run_lock(self, run_id: str) -> threading.Lock:
        """The lock that writes into a run folder and its destruction take, so that a destroy
        never races an upload (rmtree meeting new files, an upload meeting vanished folders).
        Runs share a fixed set of locks; two runs may wait on one another, never deadlock."""
        return self._run_locks[hash(run_id) % RUN_LOCK_STRIPES]

    def remember_workdir(self, run_id: str, workdir: Path | None) -> None:
        with self._workdirs_lock:
            self._workdirs[run_id] = None if workdir is None else str(workdir)
            self._workdirs.move_to_end(run_id)
            while len(self._workdirs) > WORKDIR_CACHE:
                self._workdirs.popitem(last=False)

    def run_dir(self, run_id: str) -> Path | None:
        """The run's folder, if it has one managed by this server (under ``{data_dir}/runs``).
        A ``workdir`` elsewhere (a run submitted from Python with its own folder) is never served
        nor deleted."""
        with self._workdirs_lock:
            known = run_id in self._workdirs
            workdir = self._workdirs.get(run_id)
        if not known:
            workdir = None
            for event in self.store.read_stream_page(ev.run_stream(run_id), limit=1):   # RunSubmitted
                if event.type == ev.RUN_SUBMITTED:
                    workdir = event.data.get("workdir")
            self.remember_workdir(run_id, None if workdir is None else Path(workdir))
        if not workdir:
            return None
        path = Path(workdir)
        if path.is_symlink():
            return None
        path = path.resolve()
        if path.parent != self.runs_root:
            return None
        return path

    def existing_run_dir(self, run_id: str) -> Path:
        """The run's folder, or ``NotFoundError`` saying why there is none."""
        if self.destroyed(run_id):
            raise NotFoundError(f"run {run_id!r} was destroyed: its folder is gone")
        path = self.run_dir(run_id)
        if path is None or not path.is_dir():
            raise NotFoundError(f"run {run_id!r} has no run folder on this server (it was not "
                                f"submitted through the API)")
        return path

    @staticmethod
    def confined(root: Path, name: Any) -> Path:
        """``root/name`` for a client-given relative name that stays inside ``root`` (``ArchiveError``
        otherwise: NUL, absolute, ``..``, or a symlink leading out)."""
        if not isinstance(name, str):
            raise ArchiveError(f"file names must be strings, got {name!r}")
        parts = member_parts(name)
        path = root.joinpath(*parts)
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):   # a symlink loop (RuntimeError before Python 3.13)
            raise ArchiveError(f"invalid name {name!r}: it leads through a symbolic link loop") from None
        if not resolved.is_relative_to(root):
            raise ArchiveError(f"invalid name {name!r}: it leads outside the run folder")
        return path

    # ------------------------------------------------------------------ workflows
    def load_dag(self, payload: Any, sandbox: Path) -> DAG:
        """``DAG.from_wire`` with the run folder importable, so that functions pickled by reference
        to modules of the project archive load (for this request's thread only). Those modules are dropped from ``sys.modules``
        afterwards: the engine then records the functions by value, and the next run's modules of
        the same name are its own."""
        with self._import_lock:   # module names are process-wide: one project's modules at a time
            before = set(sys.modules)
            try:
                with importable(sandbox):   # for this thread only, not for tasks running meanwhile
                    return DAG.from_wire(payload, registry=self.engine.registry)
            finally:
                purge_modules_under(sandbox, among=set(sys.modules) - before)

    def remove_tree(self, path: Path) -> None:
        """Delete a folder this server made (never following links)."""
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)


def event_view(event: ev.Event) -> dict[str, Any]:
    return {"seq": event.seq, "version": event.version, "type": event.type, "ts": event.ts,
            "actor": event.actor, "data": event.data, "hash": event.hash}


def worker_view(raw: Any) -> Any:
    if isinstance(raw, str) and raw:
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw or None
