"""A thread- or process-pool executor honouring each task's CPU, memory and GPU count.

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
    done: bool = False  # capacity released (finished or cancelled)


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, cpus: float | None = None, mem: int = 0, gpus: int = 0, mode: str = "thread"):
        self._cpus = float(cpus or os.cpu_count() or 1)
        self._mem, self._gpus, self.mode = int(mem), int(gpus), mode
        self._free = {"cpu": self._cpus, "mem": self._mem, "gpu": float(self._gpus)}
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}
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
        cpu, mem, gpu = resources["cpu"], resources["mem"] if self._mem else 0, resources["gpu"]
        with self._lock:
            free = self._free
            if cpu > free["cpu"] + _EPS or mem > free["mem"] or gpu > free["gpu"] + _EPS:
                return False
            free["cpu"] -= cpu
            free["mem"] -= mem
            free["gpu"] -= gpu
            return True

    def release(self, resources: dict[str, Any]) -> None:
        with self._lock:
            self._release_locked(resources)

    def _release_locked(self, resources: dict[str, Any]) -> None:
        self._free["cpu"] = min(self._cpus, self._free["cpu"] + resources["cpu"])
        if self._mem:
            self._free["mem"] = min(self._mem, self._free["mem"] + resources["mem"])
        self._free["gpu"] = min(float(self._gpus), self._free["gpu"] + resources["gpu"])

    # ------------------------------------------------------------------ work
    def submit(self, invocation: Invocation) -> None:
        if self._pool is None:
            raise RuntimeError("the local executor is not started")
        job = _Job(invocation)
        key = (invocation.run_id, invocation.task_id)
        with self._lock:
            self._jobs[key] = job
        if self.mode == "process":
            payload = cloudpickle.dumps((invocation.func, invocation.kwargs))
            self._emit(invocation, "started", worker={"executor": "local", "mode": "process"})
            job.future = self._pool.submit(_call_pickled, payload)
            job.future.add_done_callback(lambda fut, job=job: self._process_done(job, fut))
        else:
            job.future = self._pool.submit(self._run_thread, job)

    def cancel(self, run_id: str, task_id: str) -> None:
        with self._lock:
            job = self._jobs.pop((run_id, task_id), None)
            if job is None or job.done:
                return
            job.done = True
            self._release_locked(job.inv.resources)
        if job.future is not None:
            job.future.cancel()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            running = [{"run_id": r, "task_id": t} for (r, t), j in self._jobs.items() if not j.done]
            free = dict(self._free)
        return {"executor": self.name, "mode": self.mode, "nodes": [{
            "node_id": "local", "capacity": self.capacity(), "available": free, "running": running}]}

    def _run_thread(self, job: _Job) -> None:
        if job.done:  # cancelled while waiting for a thread
            return
        inv = self._emit(job.inv, "started", worker={
            "executor": "local", "mode": "thread", "pid": os.getpid(),
            "thread": threading.current_thread().name})
        start = time.perf_counter()
        try:
            # logs a task writes through structlog carry its run and task ids
            with structlog.contextvars.bound_contextvars(run_id=inv.run_id, task_id=inv.task_id):
                value = inv.func(**inv.kwargs)
        except BaseException as exc:  # report every failure, even SystemExit from a task
            self._finish(job, "failed", error=f"{type(exc).__name__}: {exc}",
                         tb=traceback.format_exc(), duration=time.perf_counter() - start)
            return
        self._finish(job, "succeeded", value=value, duration=time.perf_counter() - start)

    def _process_done(self, job: _Job, fut: Future) -> None:
        if fut.cancelled():
            return
        try:
            ok, payload, duration = fut.result()
        except BaseException as exc:  # the worker process died or the pool broke
            self._finish(job, "failed", error=f"{type(exc).__name__}: {exc}",
                         tb=traceback.format_exc(), duration=None)
            return
        if ok:
            self._finish(job, "succeeded", value=cloudpickle.loads(payload), duration=duration)
        else:
            error, tb = payload
            self._finish(job, "failed", error=error, tb=tb, duration=duration)

    def _finish(self, job: _Job, kind: str, value: Any = None, error: str | None = None,
                tb: str | None = None, duration: float | None = None) -> None:
        inv = job.inv
        with self._lock:
            if job.done:  # cancelled or timed out meanwhile: the engine no longer wants this
                return
            job.done = True
            self._jobs.pop((inv.run_id, inv.task_id), None)
            self._release_locked(inv.resources)
        self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, kind, value=value, error=error,
                                traceback=tb, duration_s=duration))

    def _emit(self, inv: Invocation, kind: str, worker: dict[str, Any]) -> Invocation:
        self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, kind, worker=worker))
        return inv


def _call_pickled(payload: bytes) -> tuple[bool, Any, float]:
    """Run in a worker process: call the function, return (ok, pickled value | (error, tb), seconds)."""
    func, kwargs = cloudpickle.loads(payload)
    start = time.perf_counter()
    try:
        value = func(**kwargs)
        return True, cloudpickle.dumps(value), time.perf_counter() - start
    except BaseException as exc:
        return False, (f"{type(exc).__name__}: {exc}", traceback.format_exc()), time.perf_counter() - start
