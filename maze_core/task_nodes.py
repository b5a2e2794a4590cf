"""One task of a DAG: ``TaskNode``, ``ToolRequest`` (a task added by a tool's name), and the
checks that building one runs (resources, inputs against the tool's schema, references, retries
and timeout limits), each problem collected rather than raised at the first."""

from __future__ import annotations

import difflib
import inspect
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import DAGValidationError, MazeError, ResourceError, TaskDefinitionError
from .references import REF_HEAD, find_references, plain_json, reference_problems
from .registry import TaskMeta, ToolRegistry, derive_meta, get_meta, is_task
from .resources import normalize

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

TASK_ID_RE = re.compile(r"^[A-Za-z_][\w-]*$")


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

def build_node(task_id: str, func: Callable[..., Any] | None, meta: TaskMeta | None, task_name: Any,
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
    plain_inputs = plain_json(inputs or {})
    normalized: dict[str, Any] = {}
    try:
        normalized = _merged_resources(meta, resources)
    except ResourceError as exc:
        errors.append(ResourceError(f"{label}: {exc}"))
    problems = [p for *_, p in reference_problems(task_id, plain_inputs, known_ids) if p]
    problems += input_problems(label, meta, plain_inputs)
    problems += limit_problems(task_id, retries, timeout)
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


def meta_of(task_id: str, func: Any, plain_name: str | None = None
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


def bind_node(node: TaskNode, func: Callable[..., Any], meta: TaskMeta) -> TaskNode:
    """``node``, added by tool name, bound to that tool: its overrides on top of the tool's
    declarations. Raises ``ResourceError`` when the resources do not combine."""
    request = node.tool
    assert request is not None
    return replace(node, func=func, meta=meta, func_name=meta.name,
                   resources=_merged_resources(meta, request.resources),
                   retries=request.retries if request.retries is not None else meta.retries,
                   timeout=float(request.timeout) if request.timeout is not None else meta.timeout)


def unknown_tool_problem(task_id: str, name: str, registry: ToolRegistry) -> str:
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


def copy_overrides(resources: Any) -> Any:
    return dict(resources) if isinstance(resources, Mapping) else resources


def input_problems(label: str, meta: TaskMeta | None, inputs: Mapping[str, Any],
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
    if allowed is None or (isinstance(value, str) and REF_HEAD.match(value)):
        return []  # references are checked against the upstream's outputs instead
    if any(_JSON_TYPES[t](value) for t in allowed):
        return []
    return [f"input {name!r} of {label} must be {' or '.join(allowed)}, got "
            f"{type(value).__name__} {value!r:.60}"]


def cycle_problem(cycle: list[str]) -> str:
    return f"dependency cycle: {' -> '.join(cycle)} (each task waits for the next)"


MAX_RETRIES = 1000
MAX_TIMEOUT_S = 365 * 24 * 3600.0


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:          # an int too large for a float
        return False


def limit_problems(task_id: str, retries: Any, timeout: Any) -> list[str]:
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
