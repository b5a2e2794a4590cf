"""An executor's backlog: jobs it has admitted but cannot start yet, and the rules by which they
start. Pure: no clock but the one it is given, no lock (the executor's own lock guards it), no
knowledge of resources (the executor says whether a job fits, and takes its capacity, in ``start``).

The rules, one set for every executor:

1. Order. Jobs wait in the order they arrived.
2. Backfilling. When capacity frees (``promote``), the waiting jobs are tried in that order and each
   one that fits starts. One that does not fit yet lets later, smaller ones that fit go first...
3. Patience. ...unless it has waited longer than ``patience_s``: then nothing behind it starts (and
   no newcomer passes it) until it has, so a big job is never starved by a stream of small ones.
   ``patience_s=None``: no limit, smaller jobs always go by.
4. Newcomers. A job that arrives while others wait (``offer``) starts at once if it fits and the
   waiting jobs would let a later job pass (rule 3); with ``newcomers_wait``, only when no job
   waits at all (it then waits for its turn at the next ``promote``).
5. A shortcut. ``promote(..., exhausted=...)``: when a job does not fit and the executor says that
   nothing more can start now, the walk stops there.

The local executor runs the bodies itself and uses a patience (``BACKFILL_PATIENCE_S``). The Ray
executor's backlog mirrors a queue that Ray orders, and Ray lets smaller tasks by for as long as
they fit: its books use no patience (one would claim that a task waits while Ray runs it), let
newcomers wait for their turn, and stop a walk once no CPU is free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

J = TypeVar("J", bound=Hashable)


class Backlog(Generic[J]):
    """Waiting jobs in arrival order (each job at most once; jobs compare by identity or their own
    hash). Not thread-safe: the caller holds its lock around every call."""

    __slots__ = ("_clock", "_since", "newcomers_wait", "patience_s")

    def __init__(self, patience_s: float | None = None, *, newcomers_wait: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.patience_s = patience_s
        self.newcomers_wait = newcomers_wait
        self._clock = clock
        self._since: dict[J, float] = {}    # job -> when it arrived (insertion order: arrival)

    def __len__(self) -> int:
        return len(self._since)

    def __bool__(self) -> bool:
        return bool(self._since)

    def __iter__(self) -> Iterator[J]:
        return iter(list(self._since))

    def __contains__(self, job: object) -> bool:
        return job in self._since

    def add(self, job: J) -> None:
        """Put ``job`` at the back."""
        self._since[job] = self._clock() if self.patience_s is not None else 0.0

    def remove(self, job: J) -> None:
        """Take ``job`` out (cancelled, dropped); KeyError if it does not wait here."""
        del self._since[job]

    def discard(self, job: J) -> bool:
        """Take ``job`` out if it waits here; returns whether it did."""
        return self._since.pop(job, None) is not None

    def clear(self) -> None:
        self._since.clear()

    def blocked(self) -> bool:
        """The oldest waiting job has waited past its patience: nothing may pass it any more."""
        if self.patience_s is None or not self._since:
            return False
        return self._clock() - next(iter(self._since.values())) > self.patience_s

    def offer(self, job: J, start: Callable[[J], bool]) -> bool:
        """A newcomer: it starts at once (True) if it may pass the waiting jobs and ``start(job)``
        succeeds (``start`` takes the job's capacity when it fits, else returns False); otherwise it
        joins the back (False)."""
        may_pass = not self._since if self.newcomers_wait else not self.blocked()
        if may_pass and start(job):
            return True
        self.add(job)
        return False

    def promote(self, start: Callable[[J], bool],
                exhausted: Callable[[], bool] | None = None) -> list[J]:
        """Capacity was freed: start what now fits, by the rules above. ``start(job)`` takes the
        job's capacity and returns True if it fits, else False; ``exhausted()``, if given, says
        that nothing more can start. Returns the started jobs, in order, out of the backlog."""
        started = []
        for job in list(self._since):
            if start(job):
                del self._since[job]
                started.append(job)
            elif self.blocked() or (exhausted is not None and exhausted()):
                break
        return started
