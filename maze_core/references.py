"""Input references: ``"<task_id>.output"`` and ``"<task_id>.output.<path>"`` strings, the
``TaskRef``/``OutputRef`` helpers that build them, finding them in nested inputs, and resolving
them against upstream results.

A string is a reference iff the part before ``.output`` names a task of the same DAG; a string that
looks like one but names no task is an error (see ``reference_problems``). The path walks dict keys
and list indexes, written ``.key``, ``.0`` or ``[0]``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from .errors import DAGValidationError, MazeError
from .executor import Held, Pick

REF_HEAD = re.compile(r"^([A-Za-z_][\w-]*)\.output(?=[.\[]|$)")
_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\[(-?\d+)\]")

PathSegment = str | int


class ReferenceResolutionError(MazeError, KeyError):
    """A reference cannot be resolved against the upstream result (missing key, bad index...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutputRef(str):
    """A reference string (``"t1.output.caption"``) that extends itself: ``.key`` and ``[key]``."""

    __slots__ = ()

    def __getattr__(self, key: str) -> OutputRef:
        if key.startswith("__"):
            raise AttributeError(key)
        return OutputRef(f"{self}.{key}")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return str(self)[key]
        return OutputRef(f"{self}.{key}")


class TaskRef(str):
    """A task id as returned by ``DAG.add_task``; ``.output`` starts a reference to its result."""

    __slots__ = ()

    @property
    def output(self) -> OutputRef:
        """``"<id>.output"``; extend with ``.key`` or ``[index]``."""
        return OutputRef(f"{self}.output")

def _parse_path(value: str, start: int) -> list[PathSegment]:
    path: list[PathSegment] = []
    pos = start
    while pos < len(value):
        token = _PATH_TOKEN.match(value, pos)
        if token is None:
            raise DAGValidationError(f"malformed reference {value!r}: cannot read the path from "
                                     f"{value[pos:]!r}; use '.key', '.0' or '[0]'")
        key, index = token.groups()
        path.append(int(index) if index is not None else int(key) if key.isdigit() else key)
        pos = token.end()
    return path


def parse_reference(value: Any, task_ids: Collection[str]) -> tuple[str, list[PathSegment]] | None:
    """``(task_id, path)`` when ``value`` references a task in ``task_ids``, else None.

    Digit segments become ints. A malformed path after a known task raises ``DAGValidationError``."""
    if not isinstance(value, str):
        return None
    head = REF_HEAD.match(value)
    if head is None or head.group(1) not in task_ids:
        return None
    return head.group(1), _parse_path(value, head.end())


def _strings(value: Any) -> Iterator[str]:
    """Every string inside nested dict values and list items."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def find_references(inputs: Any, task_ids: Collection[str]) -> Iterator[str]:
    """Yield the task id of every reference inside ``inputs`` (containers included), in order."""
    for text in _strings(inputs):
        ref = parse_reference(text, task_ids)
        if ref is not None:
            yield ref[0]


def resolve_path(output: Any, path: list[PathSegment], *, ref: str) -> Any:
    """Walk ``path`` into ``output`` (dicts by key, lists by index) for the reference ``ref``.

    Raises ``ReferenceResolutionError`` naming the missing key and the available ones."""
    current = output
    for depth, segment in enumerate(path):
        if isinstance(current, Mapping):
            if segment in current:
                current = current[segment]
            elif isinstance(segment, int) and str(segment) in current:
                current = current[str(segment)]
            else:
                keys = ", ".join(sorted(map(str, current))[:20]) or "none (empty dict)"
                raise ReferenceResolutionError(
                    f"{ref!r}: key {segment!r} not found at {_where(ref, path, depth)}; "
                    f"available keys: {keys}")
        elif isinstance(current, list | tuple):
            if not isinstance(segment, int):
                raise ReferenceResolutionError(
                    f"{ref!r}: {_where(ref, path, depth)} is a list of {len(current)} items; "
                    f"use an index such as [0], not {segment!r}")
            try:
                current = current[segment]
            except IndexError:
                raise ReferenceResolutionError(
                    f"{ref!r}: index {segment} is out of range at {_where(ref, path, depth)} "
                    f"(a list of {len(current)} items)") from None
        else:
            raise ReferenceResolutionError(
                f"{ref!r}: cannot take {segment!r} of {_where(ref, path, depth)}, which is a "
                f"{type(current).__name__}, not a dict or list")
    return current


def _where(ref: str, path: list[PathSegment], depth: int) -> str:
    head = ref.split(".output", 1)[0]
    return ".".join([f"{head}.output", *map(str, path[:depth])])


def resolve_inputs(inputs: Mapping[str, Any], task_ids: Collection[str],
                   outputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` with every reference (nested ones too) replaced by the referenced value.

    ``outputs`` maps task id to result; a referenced task without a result raises
    ``ReferenceResolutionError``. A result given as ``Held`` (an executor holds it) becomes a
    ``Pick`` of it, for that executor to resolve where the task runs."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            ref = parse_reference(value, task_ids)
            if ref is None:
                return value
            task_id, path = ref
            if task_id not in outputs:
                raise ReferenceResolutionError(f"{value!r}: task {task_id} has no result yet")
            output = outputs[task_id]
            if type(output) is Held:
                return Pick(output.handle, tuple(path), str(value))
            return resolve_path(output, path, ref=value)
        if isinstance(value, Mapping):
            return {key: resolve(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [resolve(item) for item in value]
        return value

    return {name: resolve(value) for name, value in inputs.items()}


def plain_json(value: Any) -> Any:
    """A copy of ``value`` with str subclasses (TaskRef, OutputRef) made str, tuples lists."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    return value


def reference_problems(node_id: str, inputs: Mapping[str, Any], task_ids: Collection[str]
                        ) -> Iterator[tuple[str, str, str, list[PathSegment] | None, str | None]]:
    """For every reference-looking string: (input, text, task id, path or None, problem or None)."""
    for name, value in inputs.items():
        for text in _strings(value):
            head = REF_HEAD.match(text)
            if head is None:
                continue
            target = head.group(1)
            if target not in task_ids:
                yield name, text, target, None, (f"input {name!r} of task {node_id} references "
                                                 f"unknown task {target!r} ({text!r})")
                continue
            try:
                yield name, text, target, _parse_path(text, head.end()), None
            except DAGValidationError as exc:
                yield name, text, target, None, f"input {name!r} of task {node_id}: {exc}"
