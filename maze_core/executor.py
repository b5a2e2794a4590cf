"""The contract of executor plugins: where task bodies run.

The engine reserves capacity with ``try_reserve`` (so that the scheduling policy, not the executor,
decides the order), then calls ``submit``. What ``try_reserve`` returns, when truthy, is the
*grant* (``True``, or the executor's own record of a placement such as the GPUs chosen); the
engine hands it back as ``Invocation.grant`` or to ``release``. The executor reports back through the ``report`` callback
given to ``start``: first ``started`` (with where it runs), then exactly one of ``succeeded`` or
``failed``. It releases the reservation *before* reporting the end, so the engine can dispatch the
next task at once. ``maze_core.testing.executor_contract`` is the reusable test suite.

Large results need not travel back down through the engine. An executor with ``holds_results``
reports, with a result stored as a blob, a ``handle`` on its own copy (Ray: the object in the
object store). The engine keeps ``Held(handle)`` for the consumers instead of the decoded value,
and a consumer's inputs then carry ``Pick(handle, path, ref)`` where the value would be: the
executor resolves it where the task runs, decoding exactly what the log holds. The log still gets
every result (events are the source of truth): a result goes up to the engine once, never down.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Held:
    """A result an executor still holds (``TaskUpdate.handle``), in place of its value."""

    handle: Any


@dataclass(frozen=True, slots=True)
class Pick:
    """In ``Invocation.kwargs``: the value at ``path`` inside the result held as ``handle``;
    ``ref`` is the reference text (for errors). Only executors with ``holds_results`` get these."""

    handle: Any
    path: tuple[str | int, ...]
    ref: str


def map_picks(value: Any, fn: Callable[[Pick], Any]) -> Any:
    """``value`` (task inputs: dicts and lists) with every ``Pick`` replaced by ``fn(pick)``."""
    if type(value) is Pick:
        return fn(value)
    if isinstance(value, dict):
        return {k: map_picks(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_picks(v, fn) for v in value]
    return value


@dataclass(slots=True)
class Invocation:
    """One attempt of one task, with its inputs resolved."""

    run_id: str
    task_id: str
    attempt: int
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    resources: dict[str, Any]           # canonical form, see maze_core.resources.normalize
    timeout: float | None = None
    func_name: str = ""
    grant: Any = True                    # what try_reserve returned for this invocation
    cwd: str | None = None               # the run's working directory (its sandbox), if it has one
    held: tuple[Any, ...] = ()           # handles of the ``Pick`` values inside ``kwargs``, if any


@dataclass(slots=True)
class TaskUpdate:
    """What an executor reports about an invocation."""

    run_id: str
    task_id: str
    attempt: int
    kind: Literal["started", "succeeded", "failed"]
    value: Any = None                    # the task's return value (succeeded)
    error: str | None = None             # "ExceptionType: message" (failed)
    traceback: str | None = None
    duration_s: float | None = None
    worker: dict[str, Any] = field(default_factory=dict)
    encoded: tuple[dict[str, Any], dict[str, bytes]] | None = None  # the result already encoded
    #   by ``maze_core.results.encode`` where it ran (then ``value`` is unused)
    handle: Any = None                   # the executor's copy of a blob result (``holds_results``)
    retryable: bool = True               # False: a retry cannot help (a result that cannot be
    #   stored, an input reference that does not resolve)
    lost_input: bool = False             # failed because a held upstream result was lost (not
    #   the task's fault): the engine tries once more, with the value from the log


Report = Callable[[TaskUpdate], None]


class Executor(ABC):
    """Runs task bodies. Thread-safe: ``submit``/``cancel`` come from the engine thread, reports
    may come from any thread."""

    name: str = "executor"
    #: True when bodies receive their own copy of the inputs anyway (they are serialised to another
    #: process): the engine then skips its defensive deep copy.
    isolates_inputs: bool = False
    #: True when reports carry a ``handle`` for results stored as blobs and ``submit`` resolves
    #: the ``Pick`` values that then appear in consumers' inputs (see the module docstring).
    holds_results: bool = False

    @abstractmethod
    def start(self, report: Report) -> None:
        """Begin accepting work; ``report`` receives every ``TaskUpdate``."""

    @abstractmethod
    def capacity(self) -> dict[str, Any]:
        """Total resources: ``{"cpu": float, "mem": MB (0: unaccounted), "gpu": float, ...}``."""

    @abstractmethod
    def check(self, resources: dict[str, Any]) -> str | None:
        """Why a request can never run here (e.g. more CPUs than exist), or None if it can."""

    @abstractmethod
    def try_reserve(self, resources: dict[str, Any]) -> Any:
        """Reserve capacity for one task now. Returns a truthy grant (``True`` or a placement the
        executor chose), or a falsy value if it does not fit at the moment."""

    @abstractmethod
    def release(self, resources: dict[str, Any], grant: Any = True) -> None:
        """Give back a reservation (``grant``, from ``try_reserve``) that was never submitted."""

    @abstractmethod
    def submit(self, invocation: Invocation) -> None:
        """Run a task whose resources were reserved. Must not block."""

    def submit_many(self, invocations: list[Invocation]) -> list[tuple[Invocation, Exception]]:
        """Submit what one turn of the engine dispatched; returns the invocations refused, each
        with why (their reservations are still held: the engine releases them). An executor may
        override it to run several invocations as one unit (the Ray executor fuses tiny tasks)."""
        refused = []
        for inv in invocations:
            try:
                self.submit(inv)
            except Exception as exc:  # noqa: BLE001 - the engine records it as the attempt's failure
                refused.append((inv, exc))
        return refused

    @abstractmethod
    def cancel(self, run_id: str, task_id: str) -> None:
        """Best-effort stop of a submitted task. The reservation is released; the executor reports
        nothing more for it (late reports are ignored by the engine anyway)."""

    def cancel_many(self, tasks: list[tuple[str, str]]) -> None:
        """``cancel`` for several ``(run_id, task_id)`` at once (a whole run); an executor that
        runs several invocations as one unit can stop each unit once."""
        for run_id, task_id in tasks:
            self.cancel(run_id, task_id)

    def describe(self) -> dict[str, Any]:
        """Nodes, resources and running tasks, for ``maze cluster`` and ``/cluster``."""
        return {"executor": self.name, "capacity": self.capacity()}

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work and release workers."""
