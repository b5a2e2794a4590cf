"""The Ray executor's books, pure (no Ray; the executor's lock guards every call): the cluster's
capacity, what is admitted (``reserve``/``release``), which Ray tasks are live (the job table), which
of them run by Maze's count and which wait in Ray's queue (the backlog), and GPU placements (the
ledger).

Admission: CPU-only tasks are admitted while the CPUs (and memory) they hold, summed over the
cluster, stay within its capacity times ``1 + depth``. The depth adapts to how long tasks take:
enough queued work per CPU to cover ``PIPELINE_S`` of round trip (so short tasks keep the workers
busy), never more than ``[ray] prefetch`` per CPU, and never less than one task per CPU (so long
tasks stay in the scheduling policy's hands, not in Ray's FIFO queue). GPU tasks are placed by the
ledger.

Ray queues what it cannot run yet, and says nothing when a queued task starts; the books mirror
that queue. A job starts (by Maze's count) when it is submitted into free CPUs, or later, when
jobs before it end and free enough CPUs: the backlog is promoted by ``maze_core.backlog``'s rules
with no patience (Ray lets smaller tasks by for as long as they fit), a newcomer waits behind a
non-empty backlog, and a walk stops once no CPU is free.
"""

from __future__ import annotations

from typing import Any

from maze_core.backlog import Backlog
from maze_core.executor import Invocation

from .jobs import Job
from .ledger import GpuLedger, Node, Placement

PIPELINE_S = 0.005                      # queued work per CPU that covers a round trip to Ray
_EPS = 1e-9


class Books:
    def __init__(self, prefetch: float, ledger: GpuLedger | None = None) -> None:
        self.prefetch = prefetch        # [ray] prefetch: most tasks queued in Ray per CPU
        self.ledger = ledger if ledger is not None else GpuLedger()
        self.jobs: dict[tuple[str, str], Job] = {}     # each live call -> its job (a batch: each member)
        self.backlog: Backlog[Job] = Backlog(None, newcomers_wait=True)   # in Ray's queue, by our count
        self.cpu_total = 0.0            # over the live nodes
        self.mem_total = 0
        self.cpu_held = 0.0             # admitted (running or in the backlog)
        self.mem_held = 0
        self.cpu_running = 0.0          # reported started
        self.avg_s: float | None = None   # moving average of task run time (the admission depth)

    # ------------------------------------------------------------------ the cluster
    def set_nodes(self, nodes: list[Node]) -> list[str]:
        """A new view of the cluster; returns the ids of nodes that left."""
        gone = self.ledger.set_nodes(nodes)
        alive = self.ledger.alive()
        self.cpu_total = sum(n.cpu for n in alive)
        self.mem_total = sum(n.mem for n in alive)
        return gone

    def capacity(self) -> dict[str, Any]:
        alive = self.ledger.alive()
        return {"cpu": self.cpu_total, "mem": self.mem_total,
                "gpu": float(sum(len(n.gpus) for n in alive)), "nodes": len(alive)}

    # ------------------------------------------------------------------ admission
    def depth(self) -> float:
        """Tasks to queue in Ray per CPU: about PIPELINE_S of work, within [min(1, prefetch), prefetch]."""
        cap = self.prefetch
        if self.avg_s is None:
            return min(1.0, cap)
        return min(cap, max(1.0, PIPELINE_S / max(self.avg_s, 1e-6)))

    def learn(self, took: float) -> None:
        """A task's body ran for ``took`` seconds."""
        self.avg_s = took if self.avg_s is None else self.avg_s + 0.1 * (took - self.avg_s)

    def reserve(self, resources: dict[str, Any]) -> Any:
        """Admit a task: False, or its grant (True, or the GPU ``Placement``)."""
        cpu, mem = float(resources.get("cpu") or 0.0), int(resources.get("mem") or 0)
        gpu = float(resources.get("gpu") or 0.0)
        room = 1.0 + self.depth()
        if self.cpu_held + cpu > self.cpu_total * room + _EPS and self.cpu_held > 0:
            return False
        if mem and self.mem_total and self.mem_held + mem > self.mem_total and self.mem_held:
            return False
        grant: Any = True
        if gpu > 0:
            grant = self.ledger.place(resources)
            if grant is None:
                return False
        self.cpu_held += cpu
        self.mem_held += mem
        return grant

    def release(self, cpu: float, mem: int, grant: Any) -> None:
        self.cpu_held = max(0.0, self.cpu_held - cpu)
        self.mem_held = max(0, self.mem_held - mem)
        if isinstance(grant, Placement):
            self.ledger.free(grant)

    # ------------------------------------------------------------------ live jobs
    def enter(self, job: Job, announced: bool = False) -> list[Job]:
        """A job submitted to Ray; returns it if it starts now (else it waits in the backlog).
        ``announced``: a rerun the engine already knows started: it starts, unreported."""
        for key in job.keys():
            self.jobs[key] = job
        if announced:
            self._start(job)
            return []
        return [job] if self.backlog.offer(job, self._try_start) else []

    def hold(self, inv: Invocation) -> Job:
        """A placeholder for a call about to be submitted again (a stopped batch's call, admitted
        before): it takes the call's reservation and place in the table at once."""
        holder = Job(inv, None, True, float(inv.resources.get("cpu") or 0.0),
                     int(inv.resources.get("mem") or 0), {})
        self.jobs[holder.key] = holder
        self.cpu_held += holder.cpu
        self.mem_held += holder.mem
        return holder

    def take(self, job: Job, only: set[tuple[str, str]] | None = None
             ) -> tuple[list[Invocation], list[Job]]:
        """Remove a job's calls (those in ``only``, if given) that nobody removed yet, releasing
        what they hold; returns them, and the backlog jobs that start now. A batch holds its CPUs
        until its last live call is taken."""
        taken = [inv for inv in job.calls()
                 if self.jobs.get((inv.run_id, inv.task_id)) is job
                 and (only is None or (inv.run_id, inv.task_id) in only)]
        for inv in taken:
            del self.jobs[(inv.run_id, inv.task_id)]
            self.release(job.cpu, job.mem, job.grant)
        if not taken or any(self.jobs.get(k) is job for k in job.keys()):
            return taken, []          # members of the batch are still live: it holds its CPU
        if job.started:
            self.cpu_running = max(0.0, self.cpu_running - job.cpu)
        else:
            self.backlog.discard(job)
        return taken, self.backlog.promote(self._try_start, self._full)

    def clear(self) -> list[Job]:
        """Forget every job (shutdown); returns them, a batch once."""
        jobs = list({id(j): j for j in self.jobs.values()}.values())
        self.jobs.clear()
        self.backlog.clear()
        self.cpu_running = self.cpu_held = 0.0
        self.mem_held = 0
        return jobs

    def gpu_tasks(self) -> dict[str, int]:
        """Live calls placed on GPUs, per node id."""
        running: dict[str, int] = {}
        for job in self.jobs.values():
            if isinstance(job.grant, Placement):
                running[job.grant.node_id] = running.get(job.grant.node_id, 0) + 1
        return running

    # ------------------------------------------------------------------ running by our count
    def _fits_now(self, cpu: float) -> bool:
        return self.cpu_running + cpu <= self.cpu_total + _EPS or self.cpu_running == 0

    def _start(self, job: Job) -> None:
        job.started = True
        self.cpu_running += job.cpu

    def _try_start(self, job: Job) -> bool:
        if not self._fits_now(job.cpu):
            return False
        self._start(job)
        return True

    def _full(self) -> bool:
        return self.cpu_running >= self.cpu_total - _EPS
