"""Task bodies as Ray tasks, on this machine or on a cluster: the ``RayExecutor`` that ties the
parts together, each in a module of its own.

- ``bootstrap``: starting or joining Ray (token, logging, this machine's GPUs).
- ``nodes``: the view of the cluster's nodes, re-read as it changes.
- ``books``: admission (CPU/memory held against the cluster, the adaptive depth), the live jobs,
  the backlog that mirrors Ray's queue (``maze_core.backlog``) and the GPU ledger (``ledger``).
- ``fusion``: tiny calls of one tool run as one Ray task.
- ``remotes``: Ray options, the exported remote functions, the call.
- ``results``: the results thread, the report of each end, forced ends.

GPU tasks are placed by the ledger: the node and devices are chosen from each device's free
memory and the model it last ran, the task is pinned to that node, and ``CUDA_VISIBLE_DEVICES``
inside it names exactly those devices. A task is reported ``started`` when it is submitted into
free CPUs, or, if it went to the backlog, when tasks before it end and free enough CPUs; so
``TaskStarted`` and timeouts count from when a task could run, not from when it was queued; the
worker's pid and node come with the end report's timing. Cancelling a task (or a timeout) kills
its worker (``ray.cancel(force=True)``), which also frees any GPU memory it held.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from maze_core.executor import Executor, Invocation, Report, TaskUpdate

from .books import Books
from .bootstrap import ExecutorError, init_ray
from .config import RayConfig
from .fusion import Fusion
from .jobs import Job
from .ledger import Node
from .nodes import NodeView
from .remotes import Remotes, task_options
from .results import Collector, body_ran, ensure_cancelled, failure_name, kill, task_update

log = structlog.get_logger("maze.ray")

__all__ = ["ExecutorError", "RayConfig", "RayExecutor"]

SHUTDOWN_WAIT_S = 30.0                  # shutdown(wait=True): longest wait for running tasks
SHUTDOWN_CANCEL_S = 5.0                 # how long cancels are repeated, at shutdown on a shared Ray


class RayExecutor(Executor):
    name = "ray"
    isolates_inputs = True      # arguments are serialised into the worker: always a copy
    holds_results = True        # a blob result stays in Ray's object store for its consumers

    def __init__(self, cfg: RayConfig | None = None, inline_limit: int = 65536):
        self.cfg = cfg or RayConfig()
        self._lock = threading.Lock()          # guards the books
        self._report: Report | None = None
        self._books = Books(self.cfg.prefetch)
        self._nodes = NodeView(self.cfg)
        self._fusion = Fusion()
        self._remotes = Remotes(inline_limit)
        self._results = Collector(self._ended)
        self._owns_ray = False
        self._started = False

    @classmethod
    def from_config(cls, config: Any) -> RayExecutor:
        limit = config.engine.inline_result_limit if config is not None else 65536
        return cls(RayConfig.from_config(config), inline_limit=limit)

    # ------------------------------------------------------------------ lifecycle
    def start(self, report: Report) -> None:
        import ray
        self._report = report
        if not ray.is_initialized():
            try:
                init_ray(ray, self.cfg)
                self._owns_ray = True
            except ExecutorError:
                raise
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
                where = self.cfg.address or "an embedded Ray"
                raise ExecutorError(f"could not start the Ray executor on {where}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        self.refresh(force=True)
        self._started = True
        self._results.open()

    def shutdown(self, wait: bool = True) -> None:
        import ray
        with self._lock:
            jobs = self._books.clear()
            self._started = False
        self._results.close()
        # tasks not yet started by our books are dropped (as the local executor does); running
        # ones are waited for, up to SHUTDOWN_WAIT_S, then stopped: on a Ray this executor does
        # not own, nothing may go on (or start) behind the stopped engine's back
        running = [j for j in jobs if j.started] if wait else []
        if running:
            try:
                ray.wait([j.ref for j in running], num_returns=len(running),
                         timeout=SHUTDOWN_WAIT_S)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        for job in jobs:
            kill(job, recancel=False)   # a task that already ended: nothing to cancel
        if not self._owns_ray:    # a shared Ray goes on: make sure every cancel took effect
            ensure_cancelled([j.ref for j in jobs], SHUTDOWN_CANCEL_S)
        self._results.join(timeout=5)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    # ------------------------------------------------------------------ the cluster
    def refresh(self, force: bool = False) -> list[str]:
        """Re-read the nodes of the cluster (at most every ``nodes.REFRESH_S`` unless forced);
        returns ids of nodes that left."""
        return self._nodes.refresh(self._set_nodes, force)

    def _set_nodes(self, nodes: list[Node]) -> list[str]:
        with self._lock:
            gone = self._books.set_nodes(nodes)
        if gone:
            log.warning("nodes left the cluster", nodes=gone)
        return gone

    def capacity(self) -> dict[str, Any]:
        with self._lock:
            return self._books.capacity()

    def check(self, resources: dict[str, Any]) -> str | None:
        if not self._started:
            import ray
            if not ray.is_initialized():
                return None          # nothing to compare with until start() joins a cluster
            self.refresh(force=True)
        else:
            self.refresh()
        with self._lock:
            return self._books.ledger.impossible(resources)

    def describe(self) -> dict[str, Any]:
        self.refresh()
        with self._lock:
            running = self._books.gpu_tasks()
            nodes = self._books.ledger.snapshot()
            placed = sum(running.values())
            for n in nodes:
                n["running_gpu_tasks"] = running.get(n["node_id"], 0)
            live = len(self._books.jobs)
            return {"executor": self.name, "capacity": self._books.capacity(),
                    "running": live, "running_cpu_tasks": live - placed, "nodes": nodes}

    # ------------------------------------------------------------------ admission
    def try_reserve(self, resources: dict[str, Any]) -> Any:
        self.refresh()      # CPU work too: nodes that joined or left change what can start
        with self._lock:
            return self._books.reserve(resources)

    def release(self, resources: dict[str, Any], grant: Any = True) -> None:
        with self._lock:
            self._books.release(float(resources.get("cpu") or 0.0), int(resources.get("mem") or 0),
                                grant)

    # ------------------------------------------------------------------ work
    def submit(self, invocation: Invocation) -> None:
        if not self._started:
            raise RuntimeError("the Ray executor is not started")
        self._submit([invocation])

    def submit_many(self, invocations: list[Invocation]) -> list[tuple[Invocation, Exception]]:
        """Submit one engine turn's invocations, fusing tiny ones (see ``fusion``)."""
        if not self._started:
            return [(inv, RuntimeError("the Ray executor is not started")) for inv in invocations]
        units = (self._fusion.plan(invocations, self._books.cpu_total) if self.cfg.fuse
                 else ([inv] for inv in invocations))
        refused: list[tuple[Invocation, Exception]] = []
        for unit in units:
            try:
                self._submit(unit)
            except Exception as exc:  # noqa: BLE001 - the engine records it for each of them
                refused.extend((inv, exc) for inv in unit)
        return refused

    def _submit(self, invs: list[Invocation], announced: bool = False,
                replacing: Job | None = None) -> None:
        """One Ray task for ``invs``: a single invocation, or a fused batch of one function's.
        ``replacing``: the placeholder a rerun call holds its place with (see ``_resubmit``)."""
        inv = invs[0]
        cpu, mem = float(inv.resources.get("cpu") or 0.0), int(inv.resources.get("mem") or 0)
        opts, ctx, worker = task_options(inv, self.name)
        if len(invs) > 1:
            worker["fused"] = len(invs)
        ref = self._remotes.submit(invs, opts, ctx)
        job = Job(inv, ref, inv.grant, cpu, mem, worker, members=invs if len(invs) > 1 else None)
        with self._lock:
            # shut down meanwhile, or a rerun call cancelled while it was being submitted again
            stale = not self._started or (replacing is not None
                                          and self._books.jobs.get(job.key) is not replacing)
            started = [] if stale else self._books.enter(job, announced)
        if stale:
            kill(job)
            return
        self._announce(started)   # before the results thread may see it: its start comes first
        self._results.watch(job)

    def _ended(self, job: Job, value: Any, exc: BaseException | None) -> None:
        """The results thread hands over a Ray task's end: report it, whatever goes wrong."""
        try:
            self._done(job, value, exc)
        except Exception as err:  # noqa: BLE001 - the results thread reports every task: live on
            log.exception("could not report a Ray task's end", task_id=job.inv.task_id)
            if self._report is not None:   # an end the engine already has is ignored there
                for inv in job.calls():
                    self._report(TaskUpdate(
                        inv.run_id, inv.task_id, inv.attempt, "failed",
                        error=f"MazeInternalError: {type(err).__name__}: {err}"))

    def _done(self, job: Job, outcome: Any, exc: BaseException | None) -> None:
        taken, promoted = self._take_job(job)
        if not taken:
            return
        if not job.started:        # Ray ran it before our books said so: its start comes first
            job.started = True
            self._report_started(taken, job.worker)
        self._announce(promoted)
        if exc is not None and job.members:
            # the batch's worker died (or the batch failed as a whole): run each call on its own,
            # so a call that takes its process down fails alone and the others are not charged
            log.warning("a fused batch failed; running its tasks one by one", tasks=len(taken),
                        error=str(exc).strip().splitlines()[:1])
            self._resubmit(taken)
            return
        outcomes = outcome if job.members else [outcome]
        by_key = {(inv.run_id, inv.task_id): out
                  for inv, out in zip(job.calls(), outcomes, strict=True)}
        assert self._report is not None
        for inv in taken:
            self._report(self._update(job, inv, by_key[(inv.run_id, inv.task_id)], exc))

    def _update(self, job: Job, inv: Invocation, outcome: Any, exc: BaseException | None) -> TaskUpdate:
        """The report of one call's end; what it says about the cluster and the call's tool is
        learned on the way."""
        if exc is not None:
            if failure_name(exc) == "WorkerLost":
                self._nodes.stale()          # re-read the nodes before the next placement
        elif body_ran(outcome):
            self._learn(inv.func, outcome[3])
        return task_update(job, inv, outcome, exc)

    def _learn(self, func: Any, took: float) -> None:
        """Task durations: the mean over all (admission depth) and per function (fusion)."""
        self._books.learn(took)
        self._fusion.learn(func, took)

    def _take_job(self, job: Job, only: set[tuple[str, str]] | None = None
                  ) -> tuple[list[Invocation], list[Job]]:
        """Remove a job's invocations (those in ``only``, if given) that nobody removed yet,
        releasing what they held; returns them, and the backlog jobs that can start now."""
        with self._lock:
            return self._books.take(job, only)

    def _announce(self, jobs: list[Job]) -> None:
        """Report the start of every call of these jobs. A call cancelled or rerun meanwhile
        still gets it: the engine ignores a start it already has or that comes after the end."""
        for job in jobs:
            self._report_started(job.calls(), job.worker)

    def _report_started(self, invs: list[Invocation], worker: dict[str, Any]) -> None:
        assert self._report is not None
        for inv in invs:
            self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "started", worker=worker))

    def _resubmit(self, invs: list[Invocation], announced: bool = True) -> None:
        """Run the calls of a batch that was stopped or lost, each on its own. They take their
        reservations again at once (they were admitted before), held by placeholders, so that a
        cancel arriving while the others are being submitted finds its call."""
        with self._lock:
            if not self._started:
                return           # shutting down: nothing more starts
            holders = [self._books.hold(inv) for inv in invs]
        for holder in holders:
            try:
                self._submit([holder.inv], announced=announced, replacing=holder)
            except Exception as exc:  # noqa: BLE001 - Ray refused it: the attempt fails
                taken, promoted = self._take_job(holder)
                inv = holder.inv
                if taken and self._report is not None:
                    self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed",
                                            error=f"{type(exc).__name__}: executor refused the task: {exc}"))
                self._announce(promoted)

    def cancel(self, run_id: str, task_id: str) -> None:
        self.cancel_many([(run_id, task_id)])

    def cancel_many(self, tasks: list[tuple[str, str]]) -> None:
        """Stop these calls. A fused batch is stopped once, whatever how many of its calls go; its
        other calls, if any, then run on their own (so that a cancelled call cannot hold them up;
        one that already ran may run again)."""
        wanted = set(tasks)
        with self._lock:
            jobs = {id(j): j for j in (self._books.jobs.get(key) for key in tasks) if j is not None}
        for job in jobs.values():
            taken, promoted = self._take_job(job, only=wanted)
            if not taken:
                continue
            others: list[Invocation] = []
            if job.members:
                with self._lock:
                    announced = job.started
                others, more = self._take_job(job)
                promoted += more
            kill(job)
            self._announce(promoted)
            if others:
                self._resubmit(others, announced)
