"""The wire format of a workflow (``workflow_payload``): ``DAG.to_wire`` and ``DAG.from_wire``.

``{"name", "tasks": {id: {"func_name", "serialized_func", "dependencies", "inputs", "task_name",
"resources", "retries", "timeout"}}}``; ``serialized_func`` is base64 of ``cloudpickle.dumps``
of the function, or empty for a task that names a tool of the receiver.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import cloudpickle

from .errors import DAGValidationError, NotFoundError, TaskDefinitionError
from .json_limits import MAX_DEPTH, json_problems
from .references import plain_json
from .registry import ToolRegistry
from .task_nodes import (
    TASK_ID_RE,
    TaskNode,
    ToolRequest,
    build_node,
    copy_overrides,
    meta_of,
    unknown_tool_problem,
)

if TYPE_CHECKING:
    from .dag import DAG

AUTO_ID = re.compile(r"^t(\d+)$")


def dag_to_wire(self: DAG) -> dict[str, Any]:
    """The submission payload (the original Maze server API's ``/submit_workflow/``): ``{"name", "tasks": {id: {"func_name",
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
                "dependencies": list(node.dependencies), "inputs": plain_json(node.inputs),
                "task_name": node.task_name, "resources": plain_json(node.tool.resources or {}),
                "retries": node.tool.retries, "timeout": node.tool.timeout}
            continue
        key = id(node.func)
        if key not in pickled:
            pickled[key] = base64.b64encode(cloudpickle.dumps(node.func)).decode("ascii")
        tasks[task_id] = {
            "func_name": node.func_name,
            "serialized_func": pickled[key],
            "dependencies": list(node.dependencies),
            "inputs": plain_json(node.inputs),
            "task_name": node.task_name,
            "resources": dict(node.resources),
            "retries": node.retries,
            "timeout": node.timeout,
        }
    return {"name": self.name, "tasks": tasks}

def dag_from_wire(cls: type[DAG], payload: Mapping[str, Any] | str | bytes,
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
    numbers = [int(m.group(1)) for task_id in dag.tasks if (m := AUTO_ID.match(task_id))]
    dag._next = max(numbers, default=0) + 1
    return dag


def _node_from_wire(task_id: Any, spec: Any, specs: Mapping[str, Any], registry: ToolRegistry,
                    unpickled: dict[str, Callable[..., Any]]) -> TaskNode:
    """One task of a wire payload; raises ``DAGValidationError`` listing its shape problems."""
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id):
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
        meta, errors = meta_of(task_id, func, plain_name=plain_name or None)
    elif isinstance(func_name, str) and func_name:
        try:
            entry = registry.get(func_name)
        except NotFoundError:
            raise DAGValidationError(unknown_tool_problem(task_id, func_name, registry)) from None
        func, meta, errors = entry.func, entry.meta, []
        tool = ToolRequest(func_name, copy_overrides(spec.get("resources")), spec.get("retries"), spec.get("timeout"))
    else:
        raise DAGValidationError(f"task {task_id} needs a serialized_func or the func_name of a tool")
    return build_node(task_id, func, meta, spec.get("task_name"), spec.get("inputs"),
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
