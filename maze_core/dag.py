"""Workflows: the ``DAG`` builder and its validation (references: ``references.py``; one task and
its checks: ``task_nodes.py``; the wire format: ``wire.py``).

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

import importlib.util
import json
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from .errors import DAGValidationError, MazeError, NotFoundError, ResourceError, TaskDefinitionError
from .references import (
    OutputRef,
    ReferenceResolutionError,
    TaskRef,
    find_references,
    parse_reference,
    reference_problems,
    resolve_inputs,
    resolve_path,
)
from .registry import TaskMeta, ToolRegistry, task_registry
from .resources import normalize
from .task_nodes import (
    TaskNode,
    ToolRequest,
    bind_node,
    build_node,
    copy_overrides,
    cycle_problem,
    input_problems,
    limit_problems,
    meta_of,
    unknown_tool_problem,
)

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

CapacityCheck = Callable[[str, dict[str, Any]], str | None]

_VIZ_HINT = "DAG.visualize() needs matplotlib: pip install 'maze-framework[viz]'"


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
            tool = ToolRequest(func, copy_overrides(resources), retries, timeout)
            found, meta, errors = self._lookup(task_id, func)
        else:
            found, (meta, errors) = func, meta_of(task_id, func)
        self.tasks[task_id] = build_node(task_id, found, meta, task_name, inputs, resources, retries,
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
                problems[task_id] = unknown_tool_problem(task_id, node.tool.name, tools)
                continue
            if entry.func is node.func:
                continue
            try:
                self.tasks[task_id] = bind_node(node, entry.func, entry.meta)
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
            problems = [cycle_problem(c) for c in cycles]
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
        problems.extend(cycle_problem(cycle) for cycle in self._cycles())
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
        for name, text, target, path, problem in reference_problems(node.id, node.inputs, self.tasks):
            if problem is not None:
                problems.append(problem)
                continue
            declared = self.tasks[target].meta.output_parameters
            if path and declared and path[0] not in declared:
                problems.append(f"input {name!r} of task {node.id} references key {path[0]!r} "
                                f"({text!r}) that task {target} ({self.tasks[target].func_name}) does "
                                f"not declare; declared: {', '.join(declared)}")
        problems.extend(input_problems(label, meta, node.inputs, injected))
        problems.extend(limit_problems(node.id, node.retries, node.timeout))
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

    # ---- wire format (maze_core/wire.py) -------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """The submission payload: see :func:`maze_core.wire.dag_to_wire`."""
        from .wire import dag_to_wire
        return dag_to_wire(self)

    @classmethod
    def from_wire(cls, payload: Mapping[str, Any] | str | bytes,
                  registry: ToolRegistry | None = None) -> DAG:
        """Rebuild a DAG from :meth:`to_wire`'s payload: see :func:`maze_core.wire.dag_from_wire`."""
        from .wire import dag_from_wire
        return dag_from_wire(cls, payload, registry)
