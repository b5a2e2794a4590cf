"""The local executor: task bodies run in this process's threads, honouring each task's CPU, memory
and GPU count. It is the embedded executor (no Ray); process isolation, killing a running body and
GPU pinning are the Ray executor's job.

Admission and running are two steps. ``try_reserve`` admits a task if the executor can take it: up
to one extra CPU's worth of tasks per CPU is admitted beyond what can run, and waits in the
executor's own short backlog. ``submit`` starts a task at once if the CPUs, memory and GPUs it
needs are free, else queues it; the worker that finishes a task starts the backlog's tasks that now
fit itself, without a round trip through the engine, by the rules of ``maze_core.backlog``: in
order; a big one does not hold smaller ones back for up to ``BACKFILL_PATIENCE_S``, after which
nothing passes it. At no moment do running tasks hold more than the capacity. The backlog is what
keeps both cores busy with tiny tasks: the engine commits the next tasks while the current ones run.

Bodies run in the executor's own pool of *daemon* threads, started on demand and reused when idle,
so a body never keeps the interpreter alive: a CLI exits at once even while a timed-out body still
sleeps. A running thread cannot be killed: cancel and timeout release the task's capacity and
discard its result while the thread finishes on its own (it stops counting against the pool's
thread limit).

Reports follow the executor contract: ``started`` when the body starts, then exactly one of
``succeeded``/``failed``, the capacity released before the end is reported. Once ``cancel`` returns,
nothing more is reported for that task. A job that cannot be started is reported ``failed`` with the
reason and its capacity released: no job is ever lost silently.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from maze_core.backlog import Backlog
from maze_core.executor import Executor, Invocation, Report, TaskUpdate
from maze_core.resources import IO_CPU_SHARE
from maze_core.task_context import TaskContext, running

log = structlog.get_logger(__name__)

_EPS = 1e-9
_SPARE_THREADS = 16        # threads allowed beyond what the running capacity can use at once
BACKFILL_PATIENCE_S = 1.0  # how long smaller tasks may pass a waiting one before it goes first


@dataclass(slots=True, eq=False)
class _Job:
    """One submitted invocation and where it stands. State changes happen under the executor's
    lock; ``lock`` orders the job's reports against ``cancel`` (which waits for a report in flight)."""

    inv: Invocation
    lock: threading.RLock = field(default_factory=threading.RLock)
    running: bool = False            # holds running capacity (else it waits in the backlog)
    started: bool = False            # its body started: ``started`` was reported
    done: bool = False               # its capacity is released: ended, cancelled or dropped
    abandoned: bool = False          # cancelled while its body ran

    @property
    def key(self) -> tuple[str, str]:
        return self.inv.run_id, self.inv.task_id


@dataclass(slots=True)
class _Outcome:
    """How a body ended, as reported."""

    kind: Literal["succeeded", "failed"]
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    duration: float | None = None


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, cpus: float | None = None, mem: int = 0, gpus: int = 0, prefetch: float = 1.0):
        self._cpus = float(cpus or os.cpu_count() or 1)
        self._mem, self._gpus = int(mem), int(gpus)
        # what may be admitted (running + backlog) and what may run
        self._admit = {"cpu": self._cpus * (1 + prefetch), "mem": self._mem, "gpu": float(self._gpus)}
        self._free = {"cpu": self._cpus, "mem": self._mem, "gpu": float(self._gpus)}
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # notified when no job holds running capacity
        self._jobs: dict[tuple[str, str], _Job] = {}     # submitted and not done: backlog + running
        self._backlog: Backlog[_Job] = Backlog(BACKFILL_PATIENCE_S)   # admitted, waiting to run
        self._busy = 0                                   # jobs holding running capacity
        self._accepting = False
        self._report: Report | None = None
        # enough threads for every task that can hold capacity at once (io tasks take a share)
        self._threads = _DaemonThreads(int(self._cpus / IO_CPU_SHARE) + _SPARE_THREADS, "maze-task")

    @classmethod
    def from_config(cls, config: Any) -> LocalExecutor:
        lc = config.local
        return cls(cpus=lc.cpus or None, mem=lc.mem, gpus=lc.gpus, prefetch=lc.prefetch)

    # ------------------------------------------------------------------ lifecycle
    def start(self, report: Report) -> None:
        self._report = report
        self._threads.open()
        with self._lock:
            self._accepting = True

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work. Admitted tasks still in the backlog are dropped, unreported.

        ``wait=True`` returns once every running task has ended and been reported (a body that
        cancel or timeout abandoned is not waited for). ``wait=False`` returns at once: tasks not
        yet begun are dropped, unreported; bodies already running cannot be stopped and finish in
        their daemon threads.
        """
        with self._lock:
            self._accepting = False
            drop = list(self._backlog)  # first, so that dropping running jobs starts nothing
            if not wait:
                drop += [job for job in self._jobs.values() if job.running and not job.done and not job.started]
            for job in drop:
                self._forget_locked(job)
                self._settle_locked(job)
        if wait:
            with self._lock:
                while self._busy:
                    self._drained.wait()
        self._threads.close()

    # ------------------------------------------------------------------ capacity
    def capacity(self) -> dict[str, Any]:
        return {"cpu": self._cpus, "mem": self._mem, "gpu": float(self._gpus)}

    def available(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._free)

    def check(self, resources: dict[str, Any]) -> str | None:
        if resources["cpu"] > self._cpus + _EPS:
            return f"needs {resources['cpu']:g} CPUs but only {self._cpus:g} exist"
        if self._mem and resources["mem"] > self._mem:
            return f"needs {resources['mem']} MB of memory but only {self._mem} MB are configured"
        if resources["gpu"] > self._gpus + _EPS:
            return (f"needs {resources['gpu']:g} GPU(s) but the local executor has {self._gpus}; "
                    f"use the ray executor for GPU tasks")
        return None

    def try_reserve(self, resources: dict[str, Any]) -> bool:
        with self._lock:
            return _take(self._admit, resources, self._mem)

    def release(self, resources: dict[str, Any], grant: Any = True) -> None:
        with self._lock:
            _give(self._admit, resources, self._mem)

    # ------------------------------------------------------------------ work
    def submit(self, invocation: Invocation) -> None:
        job = _Job(invocation)
        with self._lock:
            if not self._accepting:
                raise RuntimeError("the local executor is not started")
            self._jobs[job.key] = job
            if not self._backlog.offer(job, self._take_locked):
                return                     # starts when a running task frees enough capacity
            self._run_locked(job)
        self._launch([job])

    def cancel(self, run_id: str, task_id: str) -> None:
        with self._lock:
            job = self._jobs.get((run_id, task_id))
        if job is None:
            return
        with job.lock:  # a report of this job in flight finishes first; none follows
            with self._lock:
                if job.done:
                    return
                self._forget_locked(job)
                follow = self._settle_locked(job)
                job.abandoned = job.started
        if job.abandoned:
            self._threads.set_aside()
        self._launch(follow)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            running = [{"run_id": r, "task_id": t} for (r, t), j in self._jobs.items() if j.running]
            queued = [{"run_id": j.inv.run_id, "task_id": j.inv.task_id} for j in self._backlog]
            free = dict(self._free)
        return {"executor": self.name, "nodes": [{
            "node_id": "local", "capacity": self.capacity(), "available": free, "running": running,
            "queued": queued}]}

    # ------------------------------------------------------------------ bookkeeping (under _lock)
    def _take_locked(self, job: _Job) -> bool:
        """Take the running capacity ``job`` needs, if it is free."""
        return _take(self._free, job.inv.resources, self._mem)

    def _run_locked(self, job: _Job) -> None:
        job.running = True
        self._busy += 1

    def _forget_locked(self, job: _Job) -> None:
        if self._jobs.get(job.key) is job:  # not a later attempt of the same task
            del self._jobs[job.key]

    def _settle_locked(self, job: _Job) -> list[_Job]:
        """Release what ``job`` holds; return backlog jobs that can run now (the caller launches them)."""
        job.done = True
        res = job.inv.resources
        _give(self._admit, res, self._mem)
        if not job.running:
            self._backlog.remove(job)
            return []
        _give(self._free, res, self._mem)
        self._busy -= 1
        ready = self._backlog.promote(self._take_locked)   # in order, with backfilling
        for nxt in ready:
            self._run_locked(nxt)
        if not self._busy:
            self._drained.notify_all()
        return ready

    # ------------------------------------------------------------------ running jobs
    def _launch(self, jobs: list[_Job]) -> None:
        """Hand jobs holding running capacity to worker threads. One that cannot be handed over is
        reported failed and its capacity released, which may make more jobs ready: those follow."""
        pending = deque(jobs)
        while pending:
            job = pending.popleft()
            try:
                self._threads.submit(functools.partial(self._run_chain, job))
            except Exception as exc:
                pending.extend(self._finish(job, _failure(exc, "could not start the task")))

    def _run_chain(self, job: _Job | None) -> None:
        """A worker thread's errand: run ``job``, then go on with a backlog job its end let in."""
        while job is not None:
            job = self._run_one(job)

    def _run_one(self, job: _Job) -> _Job | None:
        outcome = self._call(job)
        follow = self._finish(job, outcome) if outcome is not None else []
        if job.abandoned:  # cancelled while the body ran: this thread counts again
            self._threads.rejoin()
        self._launch(follow[1:])
        return follow[0] if follow else None

    def _call(self, job: _Job) -> _Outcome | None:
        """Run the body in this thread; None if the job was cancelled before it began."""
        inv = job.inv
        if not self._report_started(job, {"executor": "local", "pid": os.getpid(),
                                          "thread": threading.current_thread().name}):
            return None
        start = time.perf_counter()
        try:
            # logs a task writes through structlog carry its run and task ids
            with structlog.contextvars.bound_contextvars(run_id=inv.run_id, task_id=inv.task_id), \
                    running(TaskContext(inv.run_id, inv.task_id, inv.attempt, inv.cwd)):
                value = inv.func(**inv.kwargs)
        except BaseException as exc:  # report every failure, even SystemExit from a task
            return _Outcome("failed", error=_describe(exc), traceback=traceback.format_exc(),
                            duration=time.perf_counter() - start)
        return _Outcome("succeeded", value=value, duration=time.perf_counter() - start)

    # ------------------------------------------------------------------ reports
    def _report_started(self, job: _Job, worker: dict[str, Any]) -> bool:
        """Report that the body starts, unless the job is already done (then False)."""
        inv = job.inv
        with job.lock:
            with self._lock:
                if job.done:
                    return False
                job.started = True
            self._emit(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "started", worker=worker))
        return True

    def _finish(self, job: _Job, outcome: _Outcome) -> list[_Job]:
        """Release the job's capacity, then report its end, unless it is done already (cancelled:
        nothing is reported). Returns backlog jobs now runnable (the caller launches them)."""
        inv = job.inv
        with job.lock:
            with self._lock:
                if job.done:
                    return []
                self._forget_locked(job)
                follow = self._settle_locked(job)
            self._emit(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, outcome.kind, value=outcome.value,
                                  error=outcome.error, traceback=outcome.traceback,
                                  duration_s=outcome.duration))
        return follow

    def _emit(self, update: TaskUpdate) -> None:
        if self._report is None:
            return
        try:
            self._report(update)
        except Exception:  # the executor's bookkeeping must go on whatever the callback does
            log.exception("local executor: the report callback failed", run_id=update.run_id,
                          task_id=update.task_id, kind=update.kind)


class _DaemonThreads:
    """A small pool of daemon worker threads, started on demand and reused when idle.

    Daemon threads never hold up interpreter exit. At most ``limit`` threads count: one whose task
    was cancelled while its body ran is set aside (``set_aside``) until the body returns
    (``rejoin``), so bodies that never end cannot starve new tasks of threads.
    """

    def __init__(self, limit: int, prefix: str) -> None:
        self._limit = max(1, limit)
        self._prefix = prefix
        self._cond = threading.Condition()
        self._work: deque[Callable[[], None]] = deque()
        self._alive = 0      # threads started and not exited
        self._idle = 0       # threads waiting for work that no submit has claimed yet
        self._aside = 0      # threads running an abandoned body
        self._closed = True
        self._names = itertools.count(1)

    def open(self) -> None:
        with self._cond:
            self._closed = False

    def close(self) -> None:
        """Refuse new work; idle threads exit, busy ones once the queue is empty."""
        with self._cond:
            self._closed = True
            self._idle = 0  # every waiting thread wakes: none is waiting for a claim any more
            self._cond.notify_all()

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in a pool thread; raises if the pool is closed or no thread can be started."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the local executor is shut down")
            self._work.append(fn)
            name = self._claim_locked()
        if name is None:
            return
        try:
            self._spawn(name)
        except BaseException:
            with self._cond:
                try:
                    self._work.remove(fn)
                except ValueError:
                    return  # another thread took it meanwhile
            raise

    def set_aside(self) -> None:
        """The calling executor abandoned the body one busy thread runs: it no longer counts."""
        with self._cond:
            self._aside += 1
            name = self._claim_locked() if self._work else None
        if name is not None:
            try:
                self._spawn(name)
            except Exception:  # the work waits for a busy thread instead
                log.exception("local executor: could not start a worker thread")

    def rejoin(self) -> None:
        """An abandoned body returned: its thread counts again."""
        with self._cond:
            self._aside -= 1

    def _claim_locked(self) -> str | None:
        """Wake an idle thread for the newest work, or reserve a new thread (its name); None if the
        work waits for a busy thread."""
        if self._idle:
            self._idle -= 1
            self._cond.notify()
            return None
        if self._alive - self._aside >= self._limit:
            return None
        self._alive += 1
        return f"{self._prefix}-{next(self._names)}"

    def _spawn(self, name: str) -> None:
        try:
            threading.Thread(target=self._serve, name=name, daemon=True).start()
        except BaseException:
            with self._cond:
                self._alive -= 1
            raise

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._work:
                    if self._closed:
                        self._alive -= 1
                        return
                    self._idle += 1
                    self._cond.wait()  # a submit that hands us work takes us off the idle count
                fn = self._work.popleft()
            try:
                fn()
            except BaseException:  # the executor reports its own failures; keep the thread
                log.exception("local executor: a worker thread's errand raised")


# ---------------------------------------------------------------------- capacity arithmetic
def _take(pool: dict[str, float], resources: dict[str, Any], mem_accounted: int) -> bool:
    """Deduct ``resources`` from ``pool`` if they fit."""
    cpu, mem, gpu = resources["cpu"], resources["mem"] if mem_accounted else 0, resources["gpu"]
    if cpu > pool["cpu"] + _EPS or mem > pool["mem"] or gpu > pool["gpu"] + _EPS:
        return False
    pool["cpu"] -= cpu
    pool["mem"] -= mem
    pool["gpu"] -= gpu
    return True


def _give(pool: dict[str, float], resources: dict[str, Any], mem_accounted: int) -> None:
    pool["cpu"] += resources["cpu"]
    if mem_accounted:
        pool["mem"] += resources["mem"]
    pool["gpu"] += resources["gpu"]


def _message(exc: BaseException) -> str:
    """An exception's message, even when it cannot be rendered."""
    try:
        return str(exc)
    except Exception:
        return "<the exception's message cannot be rendered>"


def _describe(exc: BaseException) -> str:
    """``"ExceptionType: message"``: how a failure is reported."""
    return f"{type(exc).__name__}: {_message(exc)}"


def _failure(exc: BaseException, what: str, duration: float | None = None) -> _Outcome:
    """A failure ``"ExceptionType: <what>: message"`` from the exception being handled."""
    return _Outcome("failed", error=f"{type(exc).__name__}: {what}: {_message(exc)}",
                    traceback=traceback.format_exc(), duration=duration)
