"""A thread- or process-pool executor honouring each task's CPU, memory and GPU count.

Admission and running are two steps. ``try_reserve`` admits a task if the executor can take it: in
thread mode up to one extra CPU's worth of tasks per CPU is admitted beyond what can run, and waits
in the executor's own short FIFO backlog. ``submit`` starts a task at once if the CPUs, memory and
GPUs it needs are free, else queues it; a worker thread that finishes a task starts the next one
from the backlog itself, without a round trip through the engine. At no moment do running tasks
hold more than the capacity. The backlog is what keeps both cores busy with tiny tasks: the engine
commits the next tasks while the current ones run.

Thread mode (the default) has the lowest overhead and suits I/O-bound and GIL-releasing work; a
running task cannot be killed, so cancel and timeout release its capacity and discard its result,
while the thread finishes on its own. Process mode runs each body in a pool of worker processes
(functions travel cloudpickled); it suits CPU-bound pure-Python work.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cloudpickle
import structlog

from maze_core.executor import Executor, Invocation, Report, TaskUpdate
from maze_core.resources import IO_CPU_SHARE

_EPS = 1e-9


@dataclass(slots=True)
class _Job:
    inv: Invocation
    future: Future | None = None
    running: bool = False  # holds running capacity
    done: bool = False     # capacity released (finished or cancelled)


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, cpus: float | None = None, mem: int = 0, gpus: int = 0, mode: str = "thread",
                 prefetch: float | None = None):
        self._cpus = float(cpus or os.cpu_count() or 1)
        self._mem, self._gpus, self.mode = int(mem), int(gpus), mode
        if prefetch is None:
            prefetch = 1.0 if mode == "thread" else 0.0
        # what may be admitted (running + backlog) and what may run
        self._admit = {"cpu": self._cpus * (1 + prefetch), "mem": self._mem, "gpu": float(self._gpus)}
        self._free = {"cpu": self._cpus, "mem": self._mem, "gpu": float(self._gpus)}
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._backlog: deque[_Job] = deque()
        self._report: Report | None = None
        self._pool: ThreadPoolExecutor | ProcessPoolExecutor | None = None

    @classmethod
    def from_config(cls, config: Any) -> LocalExecutor:
        lc = config.local
        return cls(cpus=lc.cpus or None, mem=lc.mem, gpus=lc.gpus, mode=lc.mode)

    # ------------------------------------------------------------------ lifecycle
    def start(self, report: Report) -> None:
        self._report = report
        if self.mode == "process":
            self._pool = ProcessPoolExecutor(max_workers=max(1, int(self._cpus)),
                                             mp_context=multiprocessing.get_context("spawn"))
        else:
            # enough threads for every task that can hold capacity at once, plus room for bodies
            # abandoned by cancel/timeout that are still finishing
            threads = int(self._cpus / IO_CPU_SHARE) + 16
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="maze-task")

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

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

    def release(self, resources: dict[str, Any]) -> None:
        with self._lock:
            _give(self._admit, resources, self._mem)

    # ------------------------------------------------------------------ work
    def submit(self, invocation: Invocation) -> None:
        if self._pool is None:
            raise RuntimeError("the local executor is not started")
        job = _Job(invocation)
        with self._lock:
            self._jobs[(invocation.run_id, invocation.task_id)] = job
            if self._backlog or not _take(self._free, invocation.resources, self._mem):
                self._backlog.append(job)   # starts when a running task frees capacity
                return
            job.running = True
        self._start(job)

    def _start(self, job: _Job) -> None:
        inv = job.inv
        if self.mode == "process":
            payload = cloudpickle.dumps((inv.func, inv.kwargs))
            self._emit(inv, "started", worker={"executor": "local", "mode": "process"})
            job.future = self._pool.submit(_call_pickled, payload)
            job.future.add_done_callback(lambda fut, job=job: self._process_done(job, fut))
        else:
            job.future = self._pool.submit(self._run_thread, job)

    def cancel(self, run_id: str, task_id: str) -> None:
        with self._lock:
            job = self._jobs.pop((run_id, task_id), None)
            if job is None or job.done:
                return
            follow = self._settle_locked(job)
        if job.future is not None:
            job.future.cancel()
        for nxt in follow:
            self._start(nxt)

    def _settle_locked(self, job: _Job) -> list[_Job]:
        """Release what ``job`` holds; return backlog jobs that can start now (caller starts them)."""
        job.done = True
        res = job.inv.resources
        _give(self._admit, res, self._mem)
        if not job.running:
            self._backlog.remove(job)
            return []
        _give(self._free, res, self._mem)
        ready = []
        while self._backlog and _take(self._free, self._backlog[0].inv.resources, self._mem):
            nxt = self._backlog.popleft()
            nxt.running = True
            ready.append(nxt)
        return ready

    def describe(self) -> dict[str, Any]:
        with self._lock:
            running = [{"run_id": r, "task_id": t} for (r, t), j in self._jobs.items() if j.running]
            queued = [{"run_id": j.inv.run_id, "task_id": j.inv.task_id} for j in self._backlog]
            free = dict(self._free)
        return {"executor": self.name, "mode": self.mode, "nodes": [{
            "node_id": "local", "capacity": self.capacity(), "available": free, "running": running,
            "queued": queued}]}

    def _run_thread(self, job: _Job | None) -> None:
        # a worker that finishes a task goes on with the next one the backlog can start
        while job is not None:
            job = self._run_one(job)

    def _run_one(self, job: _Job) -> _Job | None:
        if job.done:  # cancelled while waiting for a thread
            return None
        inv = self._emit(job.inv, "started", worker={
            "executor": "local", "mode": "thread", "pid": os.getpid(),
            "thread": threading.current_thread().name})
        start = time.perf_counter()
        try:
            # logs a task writes through structlog carry its run and task ids
            with structlog.contextvars.bound_contextvars(run_id=inv.run_id, task_id=inv.task_id):
                value = inv.func(**inv.kwargs)
        except BaseException as exc:  # report every failure, even SystemExit from a task
            follow = self._finish(job, "failed", error=f"{type(exc).__name__}: {exc}",
                                  tb=traceback.format_exc(), duration=time.perf_counter() - start)
        else:
            follow = self._finish(job, "succeeded", value=value, duration=time.perf_counter() - start)
        for extra in follow[1:]:
            self._start(extra)
        return follow[0] if follow else None

    def _process_done(self, job: _Job, fut: Future) -> None:
        if fut.cancelled():
            return
        try:
            ok, payload, duration = fut.result()
        except BaseException as exc:  # the worker process died or the pool broke
            for nxt in self._finish(job, "failed", error=f"{type(exc).__name__}: {exc}",
                                    tb=traceback.format_exc(), duration=None):
                self._start(nxt)
            return
        if ok:
            follow = self._finish(job, "succeeded", value=cloudpickle.loads(payload), duration=duration)
        else:
            error, tb = payload
            follow = self._finish(job, "failed", error=error, tb=tb, duration=duration)
        for nxt in follow:
            self._start(nxt)

    def _finish(self, job: _Job, kind: str, value: Any = None, error: str | None = None,
                tb: str | None = None, duration: float | None = None) -> list[_Job]:
        """Release the job's capacity and report its end; return backlog jobs now startable."""
        inv = job.inv
        with self._lock:
            if job.done:  # cancelled or timed out meanwhile: the engine no longer wants this
                return []
            self._jobs.pop((inv.run_id, inv.task_id), None)
            follow = self._settle_locked(job)
        self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, kind, value=value, error=error,
                                traceback=tb, duration_s=duration))
        return follow

    def _emit(self, inv: Invocation, kind: str, worker: dict[str, Any]) -> Invocation:
        self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, kind, worker=worker))
        return inv


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


def _call_pickled(payload: bytes) -> tuple[bool, Any, float]:
    """Run in a worker process: call the function, return (ok, pickled value | (error, tb), seconds)."""
    func, kwargs = cloudpickle.loads(payload)
    start = time.perf_counter()
    try:
        value = func(**kwargs)
        return True, cloudpickle.dumps(value), time.perf_counter() - start
    except BaseException as exc:
        return False, (f"{type(exc).__name__}: {exc}", traceback.format_exc()), time.perf_counter() - start
