"""Result retention: the results a run's consumers still need, kept in memory until the last of
them is dispatched, so that a consumer does not decode from the log what was just produced.

Exactly what the log holds is kept (a private decoded copy, or the executor's own handle to a
large result it holds); a retry, or a result no longer kept, is decoded from the log again."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from .. import results
from ..executor import Held, map_picks
from ..state import _MISSING, RunState


class ResultRetention:
    """Per run: ``values`` (task -> result kept for consumers to come) and ``awaited`` (task ->
    consumers not yet dispatched; 0 stays, meaning "served": a retry's decode is not kept)."""

    def __init__(self, get_blob: Callable[[str], bytes], isolated: bool, holds: bool):
        self._get_blob = get_blob
        self._isolated = isolated   # the executor copies inputs itself (another process)
        self._holds = holds         # the executor can hand a large result on by handle
        self.values: dict[str, dict[str, Any]] = {}
        self.awaited: dict[str, dict[str, int]] = {}

    def open(self, run_id: str) -> None:
        """Start keeping results for a run."""
        self.values[run_id] = {}

    def expect(self, run_id: str, consumers: dict[str, int]) -> None:
        """A resumed run's results and how many consumers each still awaits."""
        self.awaited[run_id] = consumers

    def forget(self, run_id: str) -> None:
        self.values.pop(run_id, None)
        self.awaited.pop(run_id, None)

    def keep(self, run_id: str, task_id: str, fields: dict[str, Any], blobs: dict[str, bytes],
             handle: Any, consumers: int) -> None:
        """Keep a result (its event ``fields`` and ``blobs``) for its ``consumers``."""
        if self._holds and handle is not None and "result_ref" in fields:
            kept: Any = Held(handle)   # large: the executor hands its copy on
        else:
            kept = results.decode(fields.get("result"), fields.get("result_ref"), blobs.__getitem__)
        self.values.setdefault(run_id, {})[task_id] = kept
        self.awaited.setdefault(run_id, {})[task_id] = consumers

    def inputs(self, state: RunState, spec: dict[str, Any], attempt: int = 1
               ) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The task's inputs with references resolved, and the executor's handles among them (a
        result the executor holds is passed as a ``Pick`` of it; a retry gets the logged value,
        in case the executor's copy is what failed)."""
        from ..dag import resolve_inputs
        deps = spec.get("dependencies") or ()
        if not deps:  # each attempt gets its own copy: a task mutating its inputs changes nothing else
            return (spec["inputs"] if self._isolated else copy.deepcopy(spec["inputs"])), ()
        kept = self.values.setdefault(state.run_id, {})
        outputs = {}
        held = []
        for dep in deps:
            value = kept.get(dep, _MISSING)
            if value is not _MISSING and not (attempt > 1 and type(value) is Held):
                outputs[dep] = value
                if type(value) is Held:
                    held.append(value.handle)
                continue
            t = state.tasks[dep]
            outputs[dep] = results.decode(None if t.result is _MISSING else t.result,
                                          t.result_ref, self._get_blob)
            if value is _MISSING and self.awaited.get(state.run_id, {}).get(dep, 1) > 0:
                kept[dep] = outputs[dep]   # after a resume: consumers may still come
        kwargs = resolve_inputs(spec["inputs"], state.tasks.keys(), outputs)
        if held:   # only the results the inputs pick from (not every dependency) travel
            picked: dict[Any, None] = {}

            def note(pick: Any) -> Any:
                picked[pick.handle] = None
                return pick

            kwargs = map_picks(kwargs, note)
            held = list(picked)
        return (kwargs if self._isolated else copy.deepcopy(kwargs)), tuple(held)

    def served(self, run_id: str, deps: Iterable[str]) -> None:
        """A consumer of ``deps`` was dispatched for the first time (or ended without ever being
        dispatched): once every consumer of a result has been, it is no longer kept."""
        awaited = self.awaited.get(run_id)
        if awaited is None:
            return
        for dep in deps:
            if dep not in awaited:
                continue
            awaited[dep] = max(awaited[dep] - 1, 0)
            if awaited[dep] == 0:
                self.values.get(run_id, {}).pop(dep, None)
