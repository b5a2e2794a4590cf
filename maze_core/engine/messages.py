"""What the engine loop receives: one small class per message, each carrying the ``Reply`` its
sender waits on. The executor's reports arrive as ``maze_core.executor.TaskUpdate`` (no reply)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import MazeError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..events import NewEvent
    from ..state import RunState


class EngineError(MazeError):
    """The engine stopped or could not persist its events."""


@dataclass(slots=True)
class Reply:
    """A caller waiting for the loop to finish handling its message."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self.done.wait(timeout):
            raise EngineError("the engine did not answer in time")
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(slots=True)
class Submit:
    """Start a compiled run. Answered with the run id once ``RunSubmitted`` is committed."""

    run_id: str
    data: dict[str, Any]                    # the RunSubmitted payload
    blobs: dict[str, bytes]                 # pickled functions, by hash
    funcs: dict[str, Callable[..., Any]]    # the same functions, unpickled
    actor: str
    reply: Reply


@dataclass(slots=True)
class Cancel:
    """Cancel one task (and skip what depends on it) or, with ``task_id`` None, a whole run.
    Answered with the ids of the tasks cancelled."""

    run_id: str
    task_id: str | None
    reason: str
    reply: Reply


@dataclass(slots=True)
class Resume:
    """Take over runs folded from the log. Answered with the ids of the runs taken."""

    states: list[RunState]
    funcs: dict[str, Callable[..., Any]]    # functions the planner already loaded, by blob hash
    reply: Reply


@dataclass(slots=True)
class MarkFailed:
    """Record ``RunFailed`` for a run that cannot even be folded, after its ``version``-th event."""

    run_id: str
    version: int
    reason: str
    reply: Reply


@dataclass(slots=True)
class Record:
    """Append events that the engine does not make itself (tool changes, a destroyed run, a
    reload's report). Answered with the committed events (nobody waits for the answer to a
    registry change made on the engine thread itself)."""

    events: list[NewEvent]
    reply: Reply
    blobs: dict[str, bytes] = field(default_factory=dict)   # stored in the same append


@dataclass(slots=True)
class Inspect:
    """Ask for ``Engine.stats()``; answered at once, without waiting for a commit."""

    reply: Reply


@dataclass(frozen=True)
class EngineStats:
    """A read-only view of what the engine holds (``Engine.stats()``), for tests and monitoring."""

    runs: frozenset[str]              # the runs this engine drives now
    active_attempts: int              # attempts queued or running in the executor, all runs
    held_results: dict[str, int]      # run -> results kept in memory for consumers to come
    awaited_results: dict[str, int]   # run -> results whose consumers are not all dispatched yet
    pending_timers: int               # retry and timeout timers not fired yet (stale ones included)
    subscribers: int                  # Engine.subscribe callbacks


@dataclass(slots=True)
class Stop:
    """The last message: commit what is pending and end the loop."""
