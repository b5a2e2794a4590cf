"""Who hears of committed events: subscribers (called on the engine thread, in commit order)
and ``on_event`` hook implementations (on a thread of their own, never blocking the engine)."""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
from collections.abc import Callable
from typing import Any

from .. import events as ev
from ..logging import get_logger

log = get_logger("maze.engine")

Subscriber = Callable[[list[ev.Event]], None]


class Subscribers:
    """Callbacks that get each committed batch on the engine thread. Safe to add and remove from
    any thread."""

    def __init__(self) -> None:
        self._callbacks: list[Subscriber] = []

    def __len__(self) -> int:
        return len(self._callbacks)

    def add(self, callback: Subscriber) -> Callable[[], None]:
        """Add ``callback``; returns the function that removes it."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def deliver(self, events: list[ev.Event]) -> None:
        for callback in list(self._callbacks):
            try:
                callback(events)
            except Exception:
                log.exception("event subscriber failed")


class ObserverThread:
    """Delivers committed events to ``on_event`` hook implementations without blocking the engine."""

    def __init__(self, hook: Any):
        self._hook = hook
        self._queue: queue.Queue[list[ev.Event] | None] = queue.Queue(maxsize=10000)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="maze-observers", daemon=True)
        self._thread.start()

    @classmethod
    def maybe_start(cls) -> ObserverThread | None:
        from ..plugins import load_plugins
        hook = load_plugins().hook.on_event
        return cls(hook) if hook.get_hookimpls() else None

    def put(self, events: list[ev.Event]) -> None:
        # observers run on their own thread: they get copies, never the engine's own payloads
        events = [e._replace(data=copy.deepcopy(e.data)) for e in events]
        try:
            self._queue.put_nowait(events)
        except queue.Full:
            if self.dropped == 0:
                log.warning("on_event observers fall behind; events are dropped for them")
            self.dropped += len(events)

    def _run(self) -> None:
        while (events := self._queue.get()) is not None:
            for event in events:
                try:
                    self._hook(event=event)
                except Exception:
                    log.exception("on_event observer failed", seq=event.seq)

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._thread.join(timeout=5)
