"""Workflows: the ``DAG`` builder, input references, validation and the wire format (seed 001).

A task's inputs are static JSON values or references to an upstream task's result:
``"<task_id>.output"`` (the whole result) or ``"<task_id>.output.<path>"`` where the path walks dict
keys and list indexes, written ``.key``, ``.0`` or ``[0]`` (``"t1.output.items[0].name"``). A string
is a reference iff the part before ``.output`` names a task of the same DAG; a string that looks like
one (``name.output``, ``name.output.x``, ``name.output[0]``) but names no task is an error, which
catches typos early (a literal such as ``"notes.output"`` therefore needs another spelling).
References may sit anywhere inside nested lists and dicts. Dependencies are derived from them.

``DAG.add_task`` returns a :class:`TaskRef`: the task id as a ``str``, whose ``.output`` builds
references (``t1.output.caption == "t1.output.caption"``, ``t1.output.items[0] ==
"t1.output.items.0"``). Keys that are also ``str`` methods (``count``, ``index``...) need the item
form: ``t1.output["count"]``.

A task is a call of a ``@task`` function or of a registered tool named by a string
(``dag.add_task("word_count", inputs=...)``): tools of installed packages, tool folders and
``register_task``. A name the DAG's registry knows is bound at once; one it does not know yet stays
a name (:class:`ToolRequest`) that whoever runs the DAG binds to its own tool: the engine of
``maze run`` when it validates the DAG, the server when it reads the wire format, where such a task
travels by name (an empty ``serialized_func``). A name nobody knows is an error that lists close
matches.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import importlib.util
import inspect
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle

from .errors import DAGValidationError, MazeError, NotFoundError, ResourceError, TaskDefinitionError
from .executor import Held, Pick
from .json_limits import MAX_DEPTH, json_problems
from .registry import TaskMeta, ToolRegistry, derive_meta, get_meta, is_task, task_registry
from .resources import normalize

__all__ = [
    "DAG",
    "OutputRef",
    "ReferenceResolutionError",
    "TaskNode",
    "TaskRef",
    "ToolRequest",
    "find_references",
    "parse_reference",
    "resolve_inputs",
    "resolve_path",
]

PathSegment = str | int
CapacityCheck = Callable[[str, dict[str, Any]], str | None]

_REF_HEAD = re.compile(r"^([A-Za-z_][\w-]*)\.output(?=[.\[]|$)")
_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\[(-?\d+)\]")
_ID_RE = re.compile(r"^[A-Za-z_][\w-]*$")
_AUTO_ID = re.compile(r"^t(\d+)$")
_VIZ_HINT = "DAG.visualize() needs matplotlib: pip install 'maze-framework[viz]'"
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "filepath": lambda v: isinstance(v, str),
    "folderpath": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list | tuple),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


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


@dataclass(frozen=True)
class ToolRequest:
    """A task added by tool name: the name and the overrides exactly as given, so that whoever runs
    the DAG can bind the name to its own tool and apply them on top of the tool's declarations."""

    name: str
    resources: Mapping[str, Any] | None = None
    retries: int | None = None
    timeout: float | None = None


@dataclass
class TaskNode:
    """One task of a DAG. ``resources`` is normalized; ``retries``/``timeout`` None: defaults.

    ``tool`` is set for a task added by tool name; until that name is bound to a registry's tool,
    ``func`` is None and ``meta`` a stand-in that takes any input."""

    id: str
    func: Callable[..., Any] | None
    func_name: str
    task_name: str | None
    inputs: dict[str, Any]
    dependencies: list[str]
    resources: dict[str, Any]
    retries: int | None
    timeout: float | None
    meta: TaskMeta = field(repr=False)
    tool: ToolRequest | None = None


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
    head = _REF_HEAD.match(value)
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


def _plain(value: Any) -> Any:
    """A copy of ``value`` with str subclasses (TaskRef, OutputRef) made str, tuples lists."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _reference_problems(node_id: str, inputs: Mapping[str, Any], task_ids: Collection[str]
                        ) -> Iterator[tuple[str, str, str, list[PathSegment] | None, str | None]]:
    """For every reference-looking string: (input, text, task id, path or None, problem or None)."""
    for name, value in inputs.items():
        for text in _strings(value):
            head = _REF_HEAD.match(text)
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


def _type_names(schema: Any) -> list[str] | None:
    """The JSON types a schema allows (anyOf/oneOf/type lists flattened), or None for any type."""
    if not isinstance(schema, Mapping):
        return None
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list):
        names: list[str] = []
        for branch in branches:
            allowed = _type_names(branch)
            if allowed is None:
                return None
            names.extend(allowed)
        return names
    declared = schema.get("type")
    declared = [declared] if isinstance(declared, str) else declared
    if not isinstance(declared, list) or not all(t in _JSON_TYPES for t in declared):
        return None  # no type, or one we do not know: not checked
    return list(declared)


class DAG:
    """A workflow under construction: tasks (``t1``, ``t2``...) wired by references.

    Building checks eagerly what it can (decorated function, valid resources, references to tasks
    that exist, inputs the function takes); :meth:`validate` checks the whole graph. Both report
    every problem at once. ``registry`` is where tool names are looked up (None: the global
    ``task_registry``)."""

    def __init__(self, name: str = "", registry: ToolRegistry | None = None) -> None:
        self.name = name
        self.registry = registry
        self.tasks: dict[str, TaskNode] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self.tasks)

    def _free_id(self) -> str:
        number = self._next
        while f"t{number}" in self.tasks:
            number += 1
        return f"t{number}"

    def add_task(self, func: Callable[..., Any] | str, task_name: str | None = None,
                 inputs: Mapping[str, Any] | None = None, resources: Mapping[str, Any] | None = None,
                 retries: int | None = None, timeout: float | None = None) -> TaskRef:
        """Add a call of ``func`` and return its id.

        ``func`` is a ``@task`` function or the name of a registered tool. A name the DAG's
        registry does not know yet is kept for whoever runs the DAG to bind (see the module's
        docstring); :meth:`validate` reports it if that registry does not know it either.
        ``inputs`` maps parameter names to static values or references; ``resources`` overrides
        the declared ones; ``retries``/``timeout`` override the task's (None: its default).

        Every problem visible without the rest of the graph is reported at once. A single one
        raises its own kind: ``TaskDefinitionError`` (not a task), ``ResourceError`` (bad
        resources) or ``DAGValidationError`` (bad inputs, references to tasks not in the DAG,
        inputs the function does not take or of the wrong type, bad retries/timeout); several
        raise one ``DAGValidationError`` whose ``problems`` lists them all."""
        task_id = self._free_id()
        tool = None
        if isinstance(func, str):
            tool = ToolRequest(func, _copy(resources), retries, timeout)
            found, meta, errors = self._lookup(task_id, func)
        else:
            found, (meta, errors) = func, _meta_of(task_id, func)
        self.tasks[task_id] = _build_node(task_id, found, meta, task_name, inputs, resources, retries,
                                          timeout, known_ids=self.tasks, tool=tool, errors=errors)
        self._next = int(task_id[1:]) + 1
        return TaskRef(task_id)

    def _lookup(self, task_id: str, name: str
                ) -> tuple[Callable[..., Any] | None, TaskMeta | None, list[MazeError]]:
        """The tool ``name`` of the DAG's registry: (function, metadata, []), (None, None, []) when
        it is not registered (yet), or a problem with the name itself."""
        if not name.strip():
            return None, None, [TaskDefinitionError(f"task {task_id}: the tool name is empty")]
        try:
            entry = self._registry().get(name)
        except NotFoundError:
            return None, None, []
        return entry.func, entry.meta, []

    def _registry(self, registry: ToolRegistry | None = None) -> ToolRegistry:
        if registry is not None:
            return registry
        return self.registry if self.registry is not None else task_registry

    def _bind_tools(self, registry: ToolRegistry | None) -> dict[str, str]:
        """Bind tasks added by tool name to their tools: those not bound yet to the DAG's registry
        or, when ``registry`` is given (whoever runs the DAG), every one to that registry's.
        Returns a problem per task id whose tool cannot be bound (unknown name, bad resources)."""
        tools = self._registry(registry)
        problems: dict[str, str] = {}
        for task_id, node in list(self.tasks.items()):
            if node.tool is None or (node.func is not None and registry is None):
                continue
            try:
                entry = tools.get(node.tool.name)
            except NotFoundError:
                problems[task_id] = _unknown_tool(task_id, node.tool.name, tools)
                continue
            if entry.func is node.func:
                continue
            try:
                self.tasks[task_id] = _bound(node, entry.func, entry.meta)
            except ResourceError as exc:
                problems[task_id] = f"task {task_id} ({node.tool.name}): {exc}"
        return problems

    # ---- graph -------------------------------------------------------------------------------

    def _cycles(self) -> list[list[str]]:
        """Every dependency cycle found by a depth-first walk, each as ``[a, b, ..., a]``."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        cycles: list[list[str]] = []
        for root in self.tasks:
            if root in state:
                continue
            stack: list[tuple[str, Iterator[str]]] = [(root, iter(self.tasks[root].dependencies))]
            state[root] = 1
            while stack:
                current, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    state[current] = 2
                    stack.pop()
                elif dep not in self.tasks or state.get(dep) == 2:
                    continue
                elif state.get(dep) == 1:
                    path = [tid for tid, _ in stack]
                    cycles.append([*path[path.index(dep):], dep])
                else:
                    state[dep] = 1
                    stack.append((dep, iter(self.tasks[dep].dependencies)))
        return cycles

    def topological_order(self) -> list[str]:
        """Task ids, each after its dependencies (deterministic: a depth-first walk in insertion
        order).

        Raises ``DAGValidationError`` naming the cycle when there is one."""
        cycles = self._cycles()
        if cycles:
            problems = [_cycle_problem(c) for c in cycles]
            raise DAGValidationError(problems[0], problems)
        order: list[str] = []
        done: set[str] = set()
        for task_id in self.tasks:
            self._visit(task_id, done, order)
        return order

    def _visit(self, root: str, done: set[str], order: list[str]) -> None:
        """Append ``root`` and its not yet ordered dependencies to ``order``, dependencies first."""
        if root in done:
            return
        done.add(root)
        stack = [(root, iter(self.tasks[root].dependencies))]
        while stack:
            current, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                order.append(current)
                stack.pop()
            elif dep in self.tasks and dep not in done:
                done.add(dep)
                stack.append((dep, iter(self.tasks[dep].dependencies)))

    def levels(self) -> list[list[str]]:
        """Tasks grouped by depth: level 0 has no dependencies; a task sits one level below its
        deepest dependency. Raises ``DAGValidationError`` on a cycle."""
        depth: dict[str, int] = {}
        for task_id in self.topological_order():
            deps = [depth[d] for d in self.tasks[task_id].dependencies if d in depth]
            depth[task_id] = 1 + max(deps) if deps else 0
        grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for task_id in self.tasks:
            grouped[depth[task_id]].append(task_id)
        return grouped

    def sinks(self) -> list[str]:
        """Tasks no other task depends on (the workflow's results), in insertion order."""
        upstream = {dep for node in self.tasks.values() for dep in node.dependencies}
        return [task_id for task_id in self.tasks if task_id not in upstream]

    # ---- validation --------------------------------------------------------------------------

    def validate(self, known_tools: set[str] | None = None,
                 capacity_check: CapacityCheck | None = None,
                 injected_inputs: Collection[str] = (), registry: ToolRegistry | None = None) -> None:
        """Check the whole DAG and raise one ``DAGValidationError`` listing every problem.

        First binds the tasks added by tool name: to ``registry`` when given (whoever runs the DAG
        passes its own: every such task is bound to that registry's tool), else the ones not bound
        yet to the DAG's registry (default: the global ``task_registry``); a name the registry does
        not know is a problem naming close matches.
        Checks: empty DAG, cycles, unknown references and dependencies, tools not in
        ``known_tools`` (when given), inputs the function does not take (unless it takes
        ``**kwargs``), missing required inputs (names in ``injected_inputs`` are supplied by the
        server), static inputs against the schema's type, references to output keys the upstream
        does not declare, non-JSON inputs, retries < 0, timeout <= 0, invalid resources and, with
        ``capacity_check(task_id, resources) -> reason | None``, resources no worker can provide."""
        problems: list[str] = []
        if not self.tasks:
            problems.append(f"DAG {self.name!r} has no tasks")
        unbound = self._bind_tools(registry)
        problems.extend(_cycle_problem(cycle) for cycle in self._cycles())
        for node in self.tasks.values():
            if node.id in unbound:
                problems.append(unbound[node.id])
            problems.extend(self._node_problems(node, known_tools, capacity_check, injected_inputs))
        if problems:
            count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
            raise DAGValidationError(f"DAG {self.name!r} is invalid ({count}): " + "; ".join(problems),
                                     problems)

    def _node_problems(self, node: TaskNode, known_tools: set[str] | None,
                       capacity_check: CapacityCheck | None, injected: Collection[str]) -> list[str]:
        label = f"task {node.id} ({node.func_name})"
        meta = node.meta
        problems: list[str] = []
        if known_tools is not None and node.func is not None and node.func_name not in known_tools:
            problems.append(f"{label} uses unknown tool {node.func_name!r}")
        for dep in node.dependencies:
            if dep not in self.tasks:
                problems.append(f"{label} depends on unknown task {dep!r}")
        for name, text, target, path, problem in _reference_problems(node.id, node.inputs, self.tasks):
            if problem is not None:
                problems.append(problem)
                continue
            declared = self.tasks[target].meta.output_parameters
            if path and declared and path[0] not in declared:
                problems.append(f"input {name!r} of task {node.id} references key {path[0]!r} "
                                f"({text!r}) that task {target} ({self.tasks[target].func_name}) does "
                                f"not declare; declared: {', '.join(declared)}")
        problems.extend(_input_problems(label, meta, node.inputs, injected))
        problems.extend(_limit_problems(node.id, node.retries, node.timeout))
        try:
            resources = normalize(node.resources)
        except ResourceError as exc:
            problems.append(f"{label}: {exc}")
        else:
            reason = capacity_check(node.id, resources) if capacity_check is not None else None
            if reason:
                problems.append(f"{label}: {reason}")
        return problems

    # ---- display -----------------------------------------------------------------------------

    def show_structure(self) -> str:
        """Print and return a text listing of the tasks, level by level."""
        lines = [f"DAG {self.name!r}: {len(self.tasks)} task{'s' if len(self.tasks) != 1 else ''}"]
        try:
            groups = self.levels()
        except DAGValidationError as exc:
            lines.append(f"  (not a DAG: {exc})")
            groups = [list(self.tasks)]
        for level, ids in enumerate(groups):
            lines.append(f"level {level}:")
            for task_id in ids:
                node = self.tasks[task_id]
                alias = f" as {node.task_name!r}" if node.task_name else ""
                deps = f" <- {', '.join(node.dependencies)}" if node.dependencies else ""
                lines.append(f"  {task_id}: {node.func_name}{alias}{deps}")
                for key, value in node.inputs.items():
                    lines.append(f"      {key} = {json.dumps(value, ensure_ascii=False, default=repr):.100}")
        text = "\n".join(lines)
        print(text)
        return text

    def visualize(self, path: str | None = None) -> Any:
        """Draw the DAG with matplotlib, left to right by level; save to ``path`` or show it.

        Returns the matplotlib Figure. Raises ``ImportError`` when matplotlib is not installed."""
        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError(_VIZ_HINT)
        import matplotlib.pyplot as plt

        groups = self.levels()
        positions = {task_id: (float(level), (len(ids) - 1) / 2 - row)
                     for level, ids in enumerate(groups) for row, task_id in enumerate(ids)}
        tallest = max((len(ids) for ids in groups), default=1)
        fig, ax = plt.subplots(figsize=(max(4.0, 2.5 * len(groups)), max(3.0, 1.2 * tallest)))
        boxes = {task_id: ax.text(x, y, f"{task_id}\n{self.tasks[task_id].func_name}", ha="center",
                                  va="center", bbox={"boxstyle": "round", "facecolor": "#dbe9f6"})
                 for task_id, (x, y) in positions.items()}
        for node in self.tasks.values():
            for dep in node.dependencies:  # from the right edge of the upstream box to the left edge
                ax.annotate("", xy=(0, 0.5), xycoords=boxes[node.id], xytext=(1, 0.5),
                            textcoords=boxes[dep], arrowprops={"arrowstyle": "->"})
        ax.set_xlim(-0.7, len(groups) - 0.3)
        ax.set_ylim(-tallest / 2 - 0.2, tallest / 2 + 0.2)
        ax.set_axis_off()
        ax.set_title(self.name or "DAG")
        if path is None:
            plt.show()
        else:
            fig.savefig(path, bbox_inches="tight")
            plt.close(fig)
        return fig

    # ---- wire format -------------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """The submission payload (seed 001): ``{"name", "tasks": {id: {"func_name",
        "serialized_func", "dependencies", "inputs", "task_name", "resources", "retries",
        "timeout"}}}``. ``serialized_func`` is base64 of ``cloudpickle.dumps(func)``, computed once
        per distinct function. A task added by tool name travels by name: an empty
        ``serialized_func``, and only the overrides given to ``add_task`` (the receiver applies
        them to its own tool)."""
        pickled: dict[int, str] = {}
        tasks: dict[str, Any] = {}
        for task_id, node in self.tasks.items():
            if node.tool is not None:
                tasks[task_id] = {
                    "func_name": node.tool.name, "serialized_func": "",
                    "dependencies": list(node.dependencies), "inputs": _plain(node.inputs),
                    "task_name": node.task_name, "resources": _plain(node.tool.resources or {}),
                    "retries": node.tool.retries, "timeout": node.tool.timeout}
                continue
            key = id(node.func)
            if key not in pickled:
                pickled[key] = base64.b64encode(cloudpickle.dumps(node.func)).decode("ascii")
            tasks[task_id] = {
                "func_name": node.func_name,
                "serialized_func": pickled[key],
                "dependencies": list(node.dependencies),
                "inputs": _plain(node.inputs),
                "task_name": node.task_name,
                "resources": dict(node.resources),
                "retries": node.retries,
                "timeout": node.timeout,
            }
        return {"name": self.name, "tasks": tasks}

    @classmethod
    def from_wire(cls, payload: Mapping[str, Any] | str | bytes,
                  registry: ToolRegistry | None = None) -> DAG:
        """Rebuild a DAG from :meth:`to_wire`'s payload (a dict or its JSON text).

        A task's function is ``serialized_func`` unpickled with cloudpickle or, when that is empty,
        the tool ``func_name`` of ``registry`` (default: the global ``task_registry``). An unpickled
        plain function (no ``@task``, as a raw API client may send) gets the metadata a bare
        ``@task`` would give it, named ``func_name``; the task's other fields (``resources``...)
        apply as usual. Unpickling
        runs code from the payload: that is by design (the SDK ships functions), so only accept
        payloads from authenticated users. Explicit ``dependencies`` are kept alongside the ones
        derived from references. Shape problems raise one ``DAGValidationError`` listing them all;
        call :meth:`validate` for the semantic checks (cycles, schemas, capacity)."""
        if isinstance(payload, str | bytes):
            try:
                payload = json.loads(payload)
            except ValueError as exc:
                raise DAGValidationError(f"workflow payload is not JSON: {exc}") from None
            except RecursionError:
                raise DAGValidationError(f"workflow payload is nested deeper than {MAX_DEPTH} levels") from None
        limits = json_problems(payload, "workflow")
        if limits:
            raise DAGValidationError("invalid workflow payload: " + "; ".join(limits), limits)
        if not isinstance(payload, Mapping):
            raise DAGValidationError(f"workflow payload must be a JSON object, got {type(payload).__name__}")
        specs = payload.get("tasks")
        if not isinstance(specs, Mapping):
            raise DAGValidationError('workflow payload needs a "tasks" object mapping task id to task')
        name = payload.get("name", "")
        dag = cls(name=name if isinstance(name, str) else str(name), registry=registry)
        problems: list[str] = []
        unpickled: dict[str, Callable[..., Any]] = {}  # each distinct function is unpickled once
        for task_id, spec in specs.items():
            try:
                dag.tasks[task_id] = _node_from_wire(task_id, spec, specs, dag._registry(), unpickled)
            except (DAGValidationError, TaskDefinitionError) as exc:
                problems.extend(getattr(exc, "problems", None) or [str(exc)])
        if problems:
            raise DAGValidationError("invalid workflow payload: " + "; ".join(problems), problems)
        numbers = [int(m.group(1)) for task_id in dag.tasks if (m := _AUTO_ID.match(task_id))]
        dag._next = max(numbers, default=0) + 1
        return dag


def _build_node(task_id: str, func: Callable[..., Any] | None, meta: TaskMeta | None, task_name: Any,
                inputs: Any, resources: Any, retries: Any, timeout: Any, known_ids: Collection[str],
                explicit_deps: Iterable[str] = (), tool: ToolRequest | None = None,
                errors: Iterable[MazeError] = ()) -> TaskNode:
    """Build a node, raising on every problem visible without the rest of the graph (see
    ``DAG.add_task`` for which error): ``errors`` already found, bad resources, bad inputs,
    references to tasks not in ``known_ids``, inputs ``meta`` does not take or types it does not
    allow, bad limits. ``meta`` None: ``func`` is no task (its problem is among ``errors``) or
    ``tool`` names a tool not bound yet (``func`` None), whose checks wait for the binding."""
    errors = list(errors)
    name = meta.name if meta is not None else tool.name if tool is not None else None
    label = f"task {task_id} ({name})" if name else f"task {task_id}"
    if inputs is not None and not isinstance(inputs, Mapping):
        errors.append(DAGValidationError(f"{label}: inputs must be a dict of parameter name to "
                                         f"value, got {type(inputs).__name__}"))
        inputs = None
    plain_inputs = _plain(inputs or {})
    normalized: dict[str, Any] = {}
    try:
        normalized = _merged_resources(meta, resources)
    except ResourceError as exc:
        errors.append(ResourceError(f"{label}: {exc}"))
    problems = [p for *_, p in _reference_problems(task_id, plain_inputs, known_ids) if p]
    problems += _input_problems(label, meta, plain_inputs)
    problems += _limit_problems(task_id, retries, timeout)
    if task_name is not None and not isinstance(task_name, str):
        problems.append(f"task {task_id}: task_name must be a string, got {task_name!r}")
    errors += [DAGValidationError(problem) for problem in problems]
    if errors:
        raise _one_error(task_id, errors)
    if meta is None:
        assert tool is not None and func is None
        meta = TaskMeta(name=tool.name, accepts_kwargs=True)   # stands in until the name is bound
    derived = find_references(plain_inputs, known_ids)
    return TaskNode(id=task_id, func=func, func_name=meta.name, task_name=task_name,
                    inputs=plain_inputs, dependencies=list(dict.fromkeys([*explicit_deps, *derived])),
                    resources=normalized, retries=retries if retries is not None else meta.retries,
                    timeout=float(timeout) if timeout is not None else meta.timeout, meta=meta, tool=tool)


def _one_error(task_id: str, errors: list[MazeError]) -> MazeError:
    """A single problem as itself; several as one ``DAGValidationError`` listing them all."""
    if len(errors) == 1:
        return errors[0]
    problems = [str(error) for error in errors]
    return DAGValidationError(f"task {task_id} is invalid ({len(problems)} problems): "
                              + "; ".join(problems), problems)


def _meta_of(task_id: str, func: Any, plain_name: str | None = None
             ) -> tuple[TaskMeta | None, list[MazeError]]:
    """(``func``'s ``@task`` metadata, []) or (None, [why it is no task]). With ``plain_name``, a
    plain Python function gets what a bare ``@task`` named so would give it."""
    if not callable(func):
        return None, [TaskDefinitionError(f"task {task_id}: add_task takes a @task function or the "
                                          f"name of a tool, got {type(func).__name__} {func!r:.60}")]
    try:
        if plain_name is not None and inspect.isfunction(func) and not is_task(func):
            return derive_meta(func, plain_name), []
        return get_meta(func), []
    except TaskDefinitionError as exc:   # ResourceError too
        return None, [type(exc)(f"task {task_id}: {exc}")]


def _merged_resources(meta: TaskMeta | None, override: Any) -> dict[str, Any]:
    """The task's declared resources with the per-use ``override`` on top, normalized."""
    override = dict(override) if isinstance(override, Mapping) else override
    base = dict(meta.resources) if meta is not None else {}
    if isinstance(override, dict) and base.get("type") == "cpu" and not {"type", "task_type"} & set(override):
        del base["type"]  # a cpu task asked for a GPU here becomes a gpu task (normalize infers it)
    return normalize(override, base=base)


def _bound(node: TaskNode, func: Callable[..., Any], meta: TaskMeta) -> TaskNode:
    """``node``, added by tool name, bound to that tool: its overrides on top of the tool's
    declarations. Raises ``ResourceError`` when the resources do not combine."""
    request = node.tool
    assert request is not None
    return replace(node, func=func, meta=meta, func_name=meta.name,
                   resources=_merged_resources(meta, request.resources),
                   retries=request.retries if request.retries is not None else meta.retries,
                   timeout=float(request.timeout) if request.timeout is not None else meta.timeout)


def _unknown_tool(task_id: str, name: str, registry: ToolRegistry) -> str:
    """The problem of a tool name ``registry`` does not know, with the names it might mean."""
    names = registry.names()
    by_lower = {known.lower(): known for known in names}
    close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=3)]
    if close:
        hint = f"did you mean {' or '.join(map(repr, close))}?"
    elif not names:
        hint = "no tools are registered"
    elif len(names) <= 10:
        hint = f"the registered tools are {', '.join(names)}"
    else:
        hint = f"none of the {len(names)} registered tools has a similar name"
    return f"task {task_id} uses unknown tool {name!r}: {hint}"


def _copy(resources: Any) -> Any:
    return dict(resources) if isinstance(resources, Mapping) else resources


def _input_problems(label: str, meta: TaskMeta | None, inputs: Mapping[str, Any],
                    supplied: Collection[str] | None = None) -> list[str]:
    """Inputs ``meta``'s function does not take, static values of a type its schema does not allow
    or not JSON and, with ``supplied`` (inputs the server provides), required inputs missing."""
    problems: list[str] = []
    if meta is not None and not meta.accepts_kwargs:
        known = set(meta.parameters) | set(meta.input_parameters)
        for name in inputs:
            if name not in known:
                problems.append(f"{label} has unknown input {name!r}; it takes: "
                                f"{', '.join(sorted(known)) or 'no inputs'}")
    if meta is not None and supplied is not None:
        for name in meta.required_inputs:
            if name not in inputs and name not in supplied:
                problems.append(f"{label} is missing required input {name!r}")
    for name, value in inputs.items():
        schema = meta.input_parameters.get(name) if meta is not None else None
        problems.extend(_type_problems(label, name, value, schema))
    return problems


def _type_problems(label: str, name: str, value: Any, schema: Any) -> list[str]:
    """A static input that is not JSON or does not have a type its schema allows."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return [f"input {name!r} of {label} is not JSON ({type(value).__name__})"]
    allowed = _type_names(schema)
    if allowed is None or (isinstance(value, str) and _REF_HEAD.match(value)):
        return []  # references are checked against the upstream's outputs instead
    if any(_JSON_TYPES[t](value) for t in allowed):
        return []
    return [f"input {name!r} of {label} must be {' or '.join(allowed)}, got "
            f"{type(value).__name__} {value!r:.60}"]


def _cycle_problem(cycle: list[str]) -> str:
    return f"dependency cycle: {' -> '.join(cycle)} (each task waits for the next)"


MAX_RETRIES = 1000
MAX_TIMEOUT_S = 365 * 24 * 3600.0


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:          # an int too large for a float
        return False


def _limit_problems(task_id: str, retries: Any, timeout: Any) -> list[str]:
    problems = []
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        problems.append(f"task {task_id}: retries must be a whole number >= 0, got {retries!r}")
    elif retries is not None and retries > MAX_RETRIES:
        problems.append(f"task {task_id}: retries must be at most {MAX_RETRIES}, got {retries!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not _finite(timeout) or timeout <= 0):
        problems.append(f"task {task_id}: timeout must be a number of seconds > 0, got {timeout!r}")
    elif timeout is not None and timeout > MAX_TIMEOUT_S:
        problems.append(f"task {task_id}: timeout must be at most {MAX_TIMEOUT_S:g} s (a year); "
                        f"leave it unset for no timeout, got {timeout!r}")
    return problems


def _node_from_wire(task_id: Any, spec: Any, specs: Mapping[str, Any], registry: ToolRegistry,
                    unpickled: dict[str, Callable[..., Any]]) -> TaskNode:
    """One task of a wire payload; raises ``DAGValidationError`` listing its shape problems."""
    if not isinstance(task_id, str) or not _ID_RE.match(task_id):
        raise DAGValidationError(f"task id {task_id!r} is invalid: use letters, digits, '_' and '-', "
                                 f"not starting with a digit")
    if not isinstance(spec, Mapping):
        raise DAGValidationError(f"task {task_id} must be an object, got {type(spec).__name__}")
    func_name = spec.get("func_name")
    serialized = spec.get("serialized_func")
    deps = spec.get("dependencies") or []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise DAGValidationError(f"task {task_id}: dependencies must be a list of task ids, got {deps!r}")
    unknown = [dep for dep in deps if dep not in specs]
    if unknown:
        raise DAGValidationError(f"task {task_id} depends on unknown task(s) {', '.join(map(repr, unknown))}")
    tool = None
    if serialized:
        if not isinstance(serialized, str):
            raise DAGValidationError(f"task {task_id}: serialized_func must be a base64 string")
        if serialized not in unpickled:
            unpickled[serialized] = _unpickle(task_id, serialized)
        func = unpickled[serialized]
        plain_name = func_name if isinstance(func_name, str) and func_name else getattr(func, "__name__", "")
        meta, errors = _meta_of(task_id, func, plain_name=plain_name or None)
    elif isinstance(func_name, str) and func_name:
        try:
            entry = registry.get(func_name)
        except NotFoundError:
            raise DAGValidationError(_unknown_tool(task_id, func_name, registry)) from None
        func, meta, errors = entry.func, entry.meta, []
        tool = ToolRequest(func_name, _copy(spec.get("resources")), spec.get("retries"), spec.get("timeout"))
    else:
        raise DAGValidationError(f"task {task_id} needs a serialized_func or the func_name of a tool")
    return _build_node(task_id, func, meta, spec.get("task_name"), spec.get("inputs"),
                       spec.get("resources"), spec.get("retries"), spec.get("timeout"),
                       known_ids=specs, explicit_deps=deps, tool=tool, errors=errors)


def _unpickle(task_id: str, serialized: str) -> Callable[..., Any]:
    try:
        data = base64.b64decode(serialized, validate=True)
    except (binascii.Error, ValueError):
        raise DAGValidationError(f"task {task_id}: serialized_func is not valid base64") from None
    try:
        func = cloudpickle.loads(data)
    except Exception as exc:  # any error while unpickling means a broken or foreign payload
        raise DAGValidationError(f"task {task_id}: serialized_func could not be unpickled: "
                                 f"{type(exc).__name__}: {exc}") from None
    if not callable(func):
        raise DAGValidationError(f"task {task_id}: serialized_func is a {type(func).__name__}, "
                                 f"not a function")
    return func
