"""Scheduling policies for Maze. ``fifo``: ready tasks in the order they became ready, with
backfilling (a task that fits goes ahead of one that does not fit yet)."""

from maze_core import hookimpl

from .fifo import FifoScheduler

__all__ = ["FifoScheduler"]


@hookimpl
def register_schedulers(register):
    register("fifo", lambda config: FifoScheduler())
