"""How Ray tasks end: the results thread that waits on every task at once, the report each end
becomes, and forced ends (cancel, which Ray may lose, so it is repeated until the task ended).

Ray does not retry (``max_retries=0``): a worker that dies or a node that leaves is reported as a
failed attempt (``WorkerLost``), and the task's own retry policy decides, so every attempt is an
event. A forced cancel kills the task's worker, which also frees any GPU memory it held."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog

from maze_core.executor import Invocation, TaskUpdate

from .jobs import Job
from .worker import describe, plain

log = structlog.get_logger("maze.ray")

COLLECT_WAIT_S = 0.01                   # longest a newly submitted task waits to be watched
RECANCEL_S = 30.0                       # how long a cancel is repeated until the task has ended


class Collector:
    """The results thread: waits on every watched task's reference at once and hands each end to
    ``ended(job, value, exc)``, fetched in batches (cheaper than a callback per task under load).
    ``ended`` must not raise."""

    def __init__(self, ended: Callable[[Job, Any, BaseException | None], None]) -> None:
        self._ended = ended
        self._lock = threading.Lock()
        self._waiting: dict[Any, Job] = {}      # ObjectRef -> job
        self._wake = threading.Event()
        self._open = False
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        with self._lock:
            self._open = True
        self._thread = threading.Thread(target=self._run, name="maze-ray-results", daemon=True)
        self._thread.start()

    def watch(self, job: Job) -> None:
        with self._lock:
            self._waiting[job.ref] = job
        self._wake.set()

    def close(self) -> None:
        """Stop watching (the thread ends soon after); ends not yet handed over are dropped."""
        with self._lock:
            self._open = False
            self._waiting.clear()
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        import ray
        while True:
            with self._lock:
                refs = list(self._waiting)
                if not refs and not self._open:
                    return
            if not refs:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._wake.clear()
            try:
                ready, rest = ray.wait(refs, num_returns=1, timeout=COLLECT_WAIT_S, fetch_local=True)
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=True)
                    ready += more
            except Exception as exc:  # noqa: BLE001 - Ray is shutting down
                if not self._open:
                    return
                log.warning("waiting on Ray tasks failed", error=str(exc))
                time.sleep(0.05)
                continue
            if not ready:
                continue
            with self._lock:
                jobs = [self._waiting.pop(r) for r in ready if r in self._waiting]
            try:
                outcomes = [(v, None) for v in ray.get([j.ref for j in jobs])]
            except Exception:  # noqa: BLE001 - one of them failed: take them one by one
                outcomes = []
                for j in jobs:
                    try:
                        outcomes.append((ray.get(j.ref), None))
                    except Exception as exc:  # noqa: BLE001 - the attempt's failure
                        outcomes.append((None, exc))
            for job, (value, exc) in zip(jobs, outcomes, strict=True):
                self._ended(job, value, exc)


def failure_name(exc: BaseException) -> str:
    """What kind of failure Ray's exception is: ``WorkerLost``, ``Cancelled`` or its own name."""
    import ray.exceptions as rex
    lost = (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.ObjectLostError,
            rex.OwnerDiedError, rex.LocalRayletDiedError,
            rex.TaskUnschedulableError)   # pinned to a node that left (or is not yet visible)
    if isinstance(exc, lost):
        return "WorkerLost"
    if isinstance(exc, rex.TaskCancelledError):
        return "Cancelled"
    return type(exc).__name__


def task_update(job: Job, inv: Invocation, outcome: Any, exc: BaseException | None) -> TaskUpdate:
    """The end of one call: Ray's failure ``exc``, or the worker's ``outcome`` (see ``worker``)."""
    if exc is not None:        # Ray's failure becomes the attempt's failure
        import ray.exceptions as rex
        kind = failure_name(exc)
        cause = exc.cause if isinstance(exc, rex.RayTaskError) and exc.cause is not None else None
        if cause is not None and kind not in ("WorkerLost", "Cancelled"):
            error = describe(cause)     # the real exception, not Ray's wrapper around it
        else:
            lines = plain(str(exc)).strip().splitlines()
            error = f"{kind}: {lines[0] if lines else kind}"
        return TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed", error=error,
                          traceback=plain("".join(traceback.format_exception(exc))),
                          lost_input=bool(inv.held) and isinstance(exc, rex.ObjectLostError))
    took = outcome[3]
    if outcome[0] == "ok":
        fields = outcome[1]
        handle = job.ref if "result_ref" in fields and not job.members else None
        return TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "succeeded",
                          encoded=(fields, outcome[2]), duration_s=took, handle=handle)
    return TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed", error=outcome[1],
                      traceback=outcome[2], duration_s=took, retryable=outcome[4])


def body_ran(outcome: Any) -> bool:
    """The worker ran the task's body (not an input that did not resolve): its time counts."""
    return outcome[0] == "ok" or bool(outcome[4])


def kill(job: Job, recancel: bool = True) -> None:
    """Stop a job's Ray task (its worker is killed); ``recancel``: keep at it for RECANCEL_S."""
    import ray
    if job.ref is None:        # a placeholder: nothing was submitted
        return
    try:
        ray.cancel(job.ref, force=True)
    except Exception as exc:  # noqa: BLE001 - it may have ended meanwhile
        log.debug("cancel failed", error=str(exc))
    if recancel:
        threading.Thread(target=ensure_cancelled, args=([job.ref], RECANCEL_S),
                         name="maze-ray-cancel", daemon=True).start()


def ensure_cancelled(refs: list[Any], limit_s: float) -> None:
    """Repeat ``ray.cancel`` until the tasks have ended (or ``limit_s`` passed): a cancel that
    reaches a task while Ray is still starting its worker can be lost, and the body would then
    run; once it runs, a forced cancel kills its worker."""
    import ray
    deadline = time.monotonic() + limit_s
    pending = [r for r in refs if r is not None]
    while pending and time.monotonic() < deadline:
        try:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2, fetch_local=False)
            for ref in pending:
                ray.cancel(ref, force=True)
        except (Exception, SystemExit):  # noqa: BLE001 - Ray is going away (its calls then raise
            return                       # SystemExit): nothing left to cancel
