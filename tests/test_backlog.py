"""The executors' shared backlog on its own (no executor, a fake clock): arrival order,
backfilling, patience, newcomers, and the early stop."""

from __future__ import annotations

import pytest

from maze_core.backlog import Backlog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Pool:
    """Free CPUs; ``start`` takes a job's CPUs (the job is its size) when they are free."""

    def __init__(self, free: float) -> None:
        self.free = free
        self.asked: list[str] = []

    def start(self, job: tuple[str, float]) -> bool:
        self.asked.append(job[0])
        if job[1] > self.free:
            return False
        self.free -= job[1]
        return True


BIG, SMALL, SMALL2 = ("big", 2.0), ("small", 1.0), ("small2", 1.0)


def test_jobs_wait_in_arrival_order_and_start_in_it():
    log = Backlog()
    a, b, c = ("a", 1.0), ("b", 1.0), ("c", 1.0)
    for job in (a, b, c):
        log.add(job)
    assert list(log) == [a, b, c] and len(log) == 3 and b in log
    assert log.promote(Pool(2).start) == [a, b]
    assert list(log) == [c]


def test_a_job_that_does_not_fit_lets_smaller_ones_by():
    log = Backlog()
    for job in (BIG, SMALL, SMALL2):
        log.add(job)
    pool = Pool(1)
    assert log.promote(pool.start) == [SMALL]
    assert list(log) == [BIG, SMALL2]
    pool.free = 3
    assert log.promote(pool.start) == [BIG, SMALL2], "once it fits, the big one goes first"


def test_patience_ends_the_backfilling_behind_a_job_that_waited_too_long():
    clock = Clock()
    log = Backlog(1.0, clock=clock)
    log.add(BIG)
    log.add(SMALL)
    assert not log.blocked()
    assert log.promote(Pool(1).start) == [SMALL], "within its patience, the big one lets it by"
    clock.now += 1.5
    log.add(SMALL2)
    assert log.blocked()
    pool = Pool(1)
    assert log.promote(pool.start) == [] and pool.asked == ["big"], "nothing passes it any more"
    assert pool.free == 1
    pool.free = 2
    assert log.promote(pool.start) == [BIG]
    assert not log.blocked(), "the new head has waited no longer than its patience"


def test_a_newcomer_passes_waiting_jobs_only_while_they_have_patience():
    clock = Clock()
    log = Backlog(1.0, clock=clock)
    assert log.offer(SMALL, Pool(1).start), "nothing waits: it starts if it fits"
    assert not log.offer(BIG, Pool(1).start) and list(log) == [BIG], "does not fit: it waits"
    assert log.offer(SMALL2, Pool(1).start), "the big one still has patience: it may pass"
    clock.now += 2
    pool = Pool(1)
    late = ("late", 1.0)
    assert not log.offer(late, pool.start)
    assert pool.asked == [] and pool.free == 1, "no capacity is taken for a newcomer that waits"
    assert list(log) == [BIG, late]


def test_no_patience_means_smaller_jobs_always_pass():
    clock = Clock()
    log = Backlog(None, clock=clock)
    log.add(BIG)
    clock.now += 1e6
    assert not log.blocked()
    assert log.offer(SMALL, Pool(1).start)
    log.add(SMALL2)
    assert log.promote(Pool(1).start) == [SMALL2]


def test_newcomers_may_be_made_to_wait_for_their_turn():
    """Ray's books: a newcomer that fits still waits behind any waiting job (it starts at the
    next promotion, where it may pass a bigger one)."""
    log = Backlog(None, newcomers_wait=True)
    pool = Pool(1)
    assert log.offer(SMALL, pool.start), "nothing waits: it starts"
    pool.free = 1
    log.add(BIG)
    assert not log.offer(SMALL2, pool.start) and pool.asked == ["small"]
    assert list(log) == [BIG, SMALL2]
    assert log.promote(pool.start) == [SMALL2]


def test_the_walk_stops_where_nothing_more_can_start():
    log = Backlog()
    zero = ("zero", 0.0)
    for job in (BIG, SMALL, zero):
        log.add(job)
    pool = Pool(0)
    assert log.promote(pool.start, exhausted=lambda: pool.free <= 0) == []
    assert pool.asked == ["big"], "no capacity left: the walk stops at the first that does not fit"
    assert log.promote(pool.start) == [zero], "without the shortcut every job is tried"


def test_removing_jobs():
    log = Backlog(1.0, clock=Clock())
    log.add(BIG)
    log.add(SMALL)
    log.remove(BIG)
    with pytest.raises(KeyError):
        log.remove(BIG)
    assert not log.discard(BIG) and log.discard(SMALL)
    assert not log and len(log) == 0
    log.add(SMALL)
    log.clear()
    assert list(log) == []


def test_jobs_are_told_apart_by_identity_when_they_say_so():
    class Job:       # hashes by identity, as the executors' jobs do
        def __init__(self, size: float) -> None:
            self.size = size

    a, b = Job(1.0), Job(1.0)
    log: Backlog[Job] = Backlog()
    log.add(a)
    log.add(b)
    log.remove(a)
    assert list(log) == [b]
