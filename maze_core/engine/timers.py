"""Timers: when a retry is due and when an attempt runs out of time, in one heap.

A timer is never cancelled: when it fires, the engine checks that the attempt it names is still
the one waiting (``still_due``). Timeouts of attempts that ended long before their deadline would
pile up, so the heap drops stale timers once it grows past twice what it held after the last
such sweep (at least ``TIMERS_COMPACT_MIN``)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator

TIMERS_COMPACT_MIN = 10000
RETRY, TIMEOUT = "retry", "timeout"

Timer = tuple[float, int, str, str, str, int]   # when, order, kind, run id, task id, attempt


class Timers:
    """The pending timers. ``still_due(kind, run_id, task_id, attempt)`` says whether one is
    still worth firing."""

    def __init__(self, still_due: Callable[[str, str, str, int], bool]):
        self._heap: list[Timer] = []
        self._order = itertools.count()
        self._still_due = still_due
        self._kept_at_sweep = 0   # how many were live at the last sweep

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, kind: str, run_id: str, task_id: str, attempt: int) -> None:
        heapq.heappush(self._heap, (when, next(self._order), kind, run_id, task_id, attempt))
        if len(self._heap) > max(TIMERS_COMPACT_MIN, 2 * self._kept_at_sweep):
            self._heap = [t for t in self._heap if self._still_due(*t[2:])]
            heapq.heapify(self._heap)
            self._kept_at_sweep = len(self._heap)

    def next_at(self) -> float | None:
        """When the earliest timer is due (monotonic clock), or None."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[tuple[str, str, str, int]]:
        """Take every timer due at ``now``: ``(kind, run_id, task_id, attempt)``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)[2:]
            heap = self._heap
