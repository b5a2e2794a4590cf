"""DAPS: dispatch by urgency and critical path, with durations learned from the event history.

Which run goes first: the one with the least estimated work left (shortest remaining processing
time, which minimises mean latency), minus an ageing credit that grows with the time the run has
been waiting, so that a large run is never starved: after ``remaining / aging`` seconds it is
ahead of any newcomer. Within a run: the ready task with the longest estimated path to the end
of the DAG first (its critical path), so that long chains start early and the run's makespan
stays short. A task that does not fit the executor now is passed over for one that does
(backfilling), as in ``fifo``.

Durations are learned online, per tool (``func_name``), as an exponentially weighted moving
average of ``TaskSucceeded.duration_s``; at start the policy reads the durations already in the
store, so a restarted server keeps what it learned. Tools never seen yet are estimated at the
mean of the known ones (or ``default_s``).

Cost: ``add``/``remove`` are O(log n); ``select`` sorts the runs that have ready tasks (usually a
few) and pops tasks from per-run, per-resource-shape heaps, so a wide run of thousands of ready
tasks costs O(log n) per dispatch.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from maze_core import events as ev
from maze_core.scheduler import ReadyTask, Scheduler, resource_shape

_END = {ev.TASK_SUCCEEDED, ev.TASK_FAILED, ev.TASK_CANCELLED, ev.TASK_SKIPPED}


class DurationModel:
    """EWMA of task durations per tool."""

    def __init__(self, alpha: float = 0.3, default_s: float = 1.0):
        self.alpha, self.default_s = alpha, default_s
        self.mean: dict[str, float] = {}
        self.samples: Counter[str] = Counter()
        self.epoch = 0                       # bumps when an estimate moves by more than 25 %
        self._fallback = default_s

    def observe(self, func_name: str, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        old = self.mean.get(func_name)
        new = seconds if old is None else old + self.alpha * (seconds - old)
        self.mean[func_name] = new
        self.samples[func_name] += 1
        if old is None or abs(new - old) > 0.25 * max(old, 1e-3):
            self.epoch += 1
            self._fallback = sum(self.mean.values()) / len(self.mean)

    def estimate(self, func_name: str) -> float:
        value = self.mean.get(func_name)
        return self._fallback if value is None else value


class _Run:
    __slots__ = ("children", "func", "open", "seen_at", "bottom", "epoch", "heaps", "waiting",
                 "planned")

    def __init__(self, seen_at: float):
        self.children: dict[str, list[str]] = {}
        self.func: dict[str, str] = {}
        self.open: Counter[str] = Counter()   # func_name -> tasks not finished
        self.seen_at = seen_at
        self.bottom: dict[str, float] = {}
        self.epoch = -1
        self.heaps: dict[tuple, list[list[Any]]] = {}
        self.waiting = 0
        self.planned = False                  # the DAG is known (plan() or RunSubmitted)


class DapsScheduler(Scheduler):
    name = "daps"

    def __init__(self, aging: float = 0.5, alpha: float = 0.3, default_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        if aging <= 0:
            raise ValueError("aging must be positive, or large runs could wait forever")
        self.aging = aging
        self.model = DurationModel(alpha, default_s)
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._entries: dict[tuple[str, str], list[Any]] = {}   # (run, task) -> heap entry
        self._shapes: Counter[tuple] = Counter()
        self._seq = itertools.count()

    # ------------------------------------------------------------------ learning
    def learn_from(self, store: Any) -> None:
        """Seed the duration model with what the store has seen (oldest first)."""
        for func_name, seconds in store.task_durations():
            if func_name and seconds is not None:
                self.model.observe(func_name, seconds)

    def observe(self, event: Any) -> None:
        t = event.type
        if t == ev.RUN_SUBMITTED:
            self._graph(event.stream[4:], event.data.get("tasks", {}))
        elif t in _END:
            run = self._runs.get(event.stream[4:])
            func = run.func.get(event.data.get("task_id")) if run else None
            if func is None:
                return
            if t == ev.TASK_SUCCEEDED and event.data.get("duration_s") is not None:
                self.model.observe(func, event.data["duration_s"])
            if run.open[func] > 0:
                run.open[func] -= 1
        elif t in ev.RUN_TERMINAL:
            run = self._runs.get(event.stream[4:])
            if run is not None and run.waiting == 0:
                del self._runs[event.stream[4:]]

    def plan(self, run_id: str, tasks: dict[str, dict[str, Any]]) -> None:
        """The engine hands over a run's DAG before adding its roots."""
        self._graph(run_id, tasks)

    def _graph(self, run_id: str, tasks: dict[str, dict[str, Any]]) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.planned:
            return                     # planned at submission; RunSubmitted observed after commit
        run = run or _Run(self._clock())
        run.planned = True
        for tid, spec in tasks.items():
            run.func[tid] = spec.get("func_name", "")
            run.children.setdefault(tid, [])
            for dep in spec.get("dependencies") or ():
                run.children.setdefault(dep, []).append(tid)
        run.open = Counter(run.func.values())
        self._runs[run_id] = run
        # the engine adds a run's roots before this event is committed and observed: their
        # levels (and the cached ones) were computed without the graph; compute them again
        run.epoch = -1
        if run.waiting:
            bottom = self._bottom_levels(run)
            for heap in run.heaps.values():
                live = [e for e in heap if e[4]]
                for e in live:
                    e[0] = -bottom.get(e[2].task_id, -e[0])
                heap[:] = live
                heapq.heapify(heap)

    def _bottom_levels(self, run: _Run) -> dict[str, float]:
        """Longest estimated path from each task to the end of its DAG (itself included)."""
        if run.epoch == self.model.epoch:
            return run.bottom
        est = self.model.estimate
        bottom: dict[str, float] = {}
        for root in run.func:
            if root in bottom:
                continue
            stack = [(root, False)]
            while stack:                     # iterative post-order: chains of any length
                tid, expanded = stack.pop()
                if tid in bottom:
                    continue
                kids = run.children.get(tid, ())
                if expanded or not kids:
                    bottom[tid] = est(run.func.get(tid, "")) + max((bottom.get(c, 0.0) for c in kids),
                                                                   default=0.0)
                    continue
                stack.append((tid, True))
                stack.extend((c, False) for c in kids if c not in bottom)
        run.bottom, run.epoch = bottom, self.model.epoch
        return bottom

    def _remaining(self, run: _Run) -> float:
        est = self.model.estimate
        return sum(n * est(f) for f, n in run.open.items() if n > 0)

    # ------------------------------------------------------------------ the queue
    def add(self, task: ReadyTask) -> None:
        key = (task.run_id, task.task_id)
        if key in self._entries:
            return
        run = self._runs.get(task.run_id)
        if run is None:                     # a run this process did not see submitted (resumed)
            run = self._runs[task.run_id] = _Run(self._clock())
            run.func[task.task_id] = task.func_name
            run.open[task.func_name] += 1
        elif task.task_id not in run.func:
            run.func[task.task_id] = task.func_name
            run.open[task.func_name] += 1
        level = self._bottom_levels(run).get(task.task_id, self.model.estimate(task.func_name))
        shape = resource_shape(task.resources)
        entry = [-level, next(self._seq), task, shape, True]
        heapq.heappush(run.heaps.setdefault(shape, []), entry)
        self._entries[key] = entry
        self._shapes[shape] += 1
        run.waiting += 1

    def remove(self, run_id: str, task_id: str) -> bool:
        entry = self._entries.pop((run_id, task_id), None)
        if entry is None:
            return False
        entry[4] = False                     # lazily dropped from its heap
        self._forget(run_id, entry[3])
        return True

    def _forget(self, run_id: str, shape: tuple) -> None:
        self._shapes[shape] -= 1
        if self._shapes[shape] <= 0:
            del self._shapes[shape]
        run = self._runs.get(run_id)
        if run is not None:
            run.waiting -= 1

    @staticmethod
    def _head(heap: list[list[Any]]) -> list[Any] | None:
        while heap and not heap[0][4]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def priority(self, run_id: str) -> float:
        """The run's key: estimated work left minus the ageing credit (lower goes first)."""
        run = self._runs[run_id]
        return self._remaining(run) - self.aging * (self._clock() - run.seen_at)

    def select(self, reserve: Callable[[dict[str, Any]], bool]) -> list[ReadyTask]:
        if not self._entries:
            return []
        order = sorted((rid for rid, r in self._runs.items() if r.waiting > 0),
                       key=lambda rid: (self.priority(rid), self._runs[rid].seen_at))
        chosen: list[ReadyTask] = []
        failed: set[tuple] = set()
        for run_id in order:
            run = self._runs[run_id]
            while run.waiting > 0:
                best = None
                for shape, heap in run.heaps.items():
                    if shape in failed:
                        continue
                    head = self._head(heap)
                    if head is not None and (best is None or head[:2] < best[:2]):
                        best = head
                if best is None:
                    break
                task: ReadyTask = best[2]
                if reserve(task.resources):
                    heapq.heappop(run.heaps[best[3]])
                    del self._entries[(task.run_id, task.task_id)]
                    self._forget(run_id, best[3])
                    chosen.append(task)
                else:
                    failed.add(best[3])
                    if len(failed) >= len(self._shapes):
                        return chosen
        return chosen

    def __len__(self) -> int:
        return len(self._entries)
