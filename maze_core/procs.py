"""Which process is which: a pid plus its start time names one process (a pid reused later has
another start time). Used to tell whether the process driving a run, or serving the API, is
still the one that recorded itself. Linux /proc; elsewhere the start time is unknown (None)."""

from __future__ import annotations

import os


def process_started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_zombie(pid: int) -> bool:
    """Exited but not yet reaped by its parent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def process_alive(pid: object, started: int | None = None) -> bool:
    """Whether ``pid`` is a live process and, if ``started`` is given, the same one that recorded
    that start time (an unknown start time here is taken as the same)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if is_zombie(pid):
        return False
    return started is None or process_started(pid) in (None, started)
