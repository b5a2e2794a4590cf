"""Task metadata: the ``@task`` decorator and ``TaskMeta`` (the ``_task_meta`` dict of the original task registry).

``@task`` stores the task's metadata on the function as ``func._task_meta``, a plain dict shaped
exactly as in the original task registry plus three top-level keys::

    {'name', 'description', 'input_parameters', 'output_parameters',
     'resources': {'type', 'cpu_num', 'mem', 'gpu_mem', 'model_name', 'backend'},
     'version', 'retries', 'timeout'}

``version`` defaults to ``"0.0.0"`` (no version declared), ``retries`` and ``timeout`` to ``None``
(the engine's defaults). Resources are validated and converted by :func:`maze_core.resources.normalize`
when the function is decorated: ``mem``/``gpu_mem`` are stored in MB (``"4G"`` becomes ``4096``) and
``cpu_num`` as a number of cores (an ``io`` task asks for a tenth of a core unless told otherwise).
A ``gpu`` count given through ``resources={...}`` (the original SDK's style) is kept under ``'resources'`` too.

Input schemas missing from the arguments are derived per parameter from the signature and its type
hints with pydantic; a parameter is required iff its schema has no ``"default"`` (defaults that are
not JSON are not recorded, so :attr:`TaskMeta.required_inputs` is the authoritative list).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import sys
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import ResourceError, TaskDefinitionError
from .events import canonical_json
from .resources import _ALIASES as _RESOURCE_ALIASES
from .resources import normalize

TYPE_FILEPATH = "filepath"
TYPE_FOLDERPATH = "folderpath"
DEFAULT_VERSION = "0.0.0"

logger = logging.getLogger("maze.registry")

F = TypeVar("F", bound=Callable[..., Any])

_SEED_KEYS = ("name", "description", "input_parameters", "output_parameters", "resources",
              "version", "retries", "timeout")
_VAR_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_OPTION_NAMES = ("name", "description", "input_parameters", "output_parameters", "task_type", "cpu_num",
                 "mem", "gpu_mem", "model_name", "backend", "resources", "version", "retries",
                 "timeout")  # the keyword arguments of @task


def label_of(func: Any) -> str:
    """How error messages name a function."""
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in exc.errors())


class TaskMeta(BaseModel):
    """A task's metadata. :meth:`to_dict` gives the original task registry's dict stored as
    ``func._task_meta``.

    ``parameters``, ``required_inputs`` and ``accepts_kwargs`` come from the function's signature and
    are not part of that dict.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    input_parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    output_parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    version: str = DEFAULT_VERSION
    retries: int | None = None
    timeout: float | None = None
    parameters: tuple[str, ...] = ()
    required_inputs: tuple[str, ...] = ()
    accepts_kwargs: bool = False

    @field_validator("retries", mode="before")
    @classmethod
    def _check_retries(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"retries must be a whole number >= 0 or None, got {value!r}")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _check_timeout(cls, value: Any) -> Any:
        if value is None:
            return value
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or value <= 0):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {value!r}")
        return value

    @classmethod
    def from_func(cls, func: Callable[..., Any]) -> TaskMeta:
        """Read ``func._task_meta`` (and the signature) into a validated ``TaskMeta``.

        Raises ``TaskDefinitionError`` when the function is not decorated, has no name or carries
        malformed metadata, and ``ResourceError`` when its resources are invalid."""
        raw = getattr(func, "_task_meta", None)
        label = label_of(func)
        if not callable(func):
            raise TaskDefinitionError(f"{func!r:.60} is a {type(func).__name__}, not a function "
                                      f"decorated with @task")
        if not isinstance(raw, dict):
            raise TaskDefinitionError(f"function {label!r} is not decorated with @task; "
                                      f"add @task above 'def {getattr(func, '__name__', label)}'")
        if not isinstance(raw.get("name"), str) or not raw["name"]:
            raise TaskDefinitionError(f"function {label!r} has a _task_meta without a 'name'")
        parameters, required, accepts_kwargs = _signature_facts(func)
        try:
            meta = cls(**{key: raw[key] for key in _SEED_KEYS if key in raw}, parameters=parameters,
                       required_inputs=required, accepts_kwargs=accepts_kwargs)
        except ValidationError as exc:
            raise TaskDefinitionError(f"task {raw['name']!r} ({label}): invalid _task_meta: "
                                      f"{_validation_message(exc)}") from None
        try:
            normalize(meta.resources)
        except ResourceError as exc:
            raise ResourceError(f"task {meta.name!r} ({label}): {exc}") from None
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The original task registry's metadata dict plus ``version``, ``retries`` and ``timeout``."""
        return self.model_dump(include=set(_SEED_KEYS))

    def normalized_resources(self) -> dict[str, Any]:
        """The declared resources in canonical form (see :func:`maze_core.resources.normalize`)."""
        return normalize(self.resources)


def _signature_facts(func: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(named parameters, parameters without a default, whether it takes ``**kwargs``)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: accept anything
        return (), (), True
    named = [p for p in params if p.kind not in _VAR_KINDS]
    return (tuple(p.name for p in named), tuple(p.name for p in named if p.default is p.empty),
            any(p.kind is p.VAR_KEYWORD for p in params))


def _type_hints(obj: Any) -> dict[str, Any]:
    """Resolved type hints of a function or class. When some cannot be resolved (a class local to
    a function under ``from __future__ import annotations``), each is resolved on its own and the
    unresolvable ones are left out."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:  # NameError for forward refs, TypeError for odd annotations
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(obj, "__globals__", None) or vars(sys.modules.get(obj.__module__, sys))
    for name, hint in (getattr(obj, "__annotations__", None) or {}).items():
        if isinstance(hint, str):
            try:
                hint = eval(hint, dict(namespace))  # the annotation is code of the task's own module
            except Exception:
                continue
        hints[name] = hint
    return hints


def _schema_of(hint: Any) -> dict[str, Any]:
    """JSON schema of a type hint, or ``{}`` (anything) when pydantic cannot describe it."""
    try:
        return TypeAdapter(hint).json_schema()
    except Exception:  # arbitrary classes have no schema; they are simply not checked
        return {}


def _json_value(value: Any) -> tuple[bool, Any]:
    """(True, the value as JSON would give it back) or (False, None) for non-JSON values."""
    try:
        return True, json.loads(canonical_json(value))
    except (TypeError, ValueError):
        return False, None


def _derive_inputs(func: Callable[..., Any], hints: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{param: schema}`` for every named parameter, with ``"default"`` where it is JSON."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return {}
    schemas: dict[str, dict[str, Any]] = {}
    for param in params:
        if param.kind in _VAR_KINDS:
            continue
        schema = _schema_of(hints[param.name]) if param.name in hints else {}
        if param.default is not param.empty:
            ok, default = _json_value(param.default)
            if ok:
                schema["default"] = default
        schemas[param.name] = schema
    return schemas


def _derive_outputs(hints: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The properties of a TypedDict / pydantic-model return hint; ``{}`` for anything else."""
    hint = hints.get("return")
    if typing.is_typeddict(hint):  # field by field: pydantic refuses typing.TypedDict before 3.12
        return {key: _schema_of(field) for key, field in _type_hints(hint).items()}
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        properties = hint.model_json_schema().get("properties", {})
        return {key: dict(value) for key, value in properties.items()}
    return {}


def _schema_map(value: Any, what: str, label: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                              for k, v in value.items()):
        raise TaskDefinitionError(f"@task on {label!r}: {what} must map each name to a JSON schema "
                                  f"dict such as {{'text': {{'type': 'string'}}}}, got {value!r}")
    return {key: dict(schema) for key, schema in value.items()}


def _merge_inputs(func: Callable[..., Any], declared: Any, derived: dict[str, dict[str, Any]],
                  accepts_kwargs: bool) -> dict[str, dict[str, Any]]:
    """Declared schemas override derived ones per parameter; signature defaults are filled in."""
    label = label_of(func)
    merged = dict(derived)
    for name, schema in _schema_map(declared, "input_parameters", label).items():
        if name not in derived and not accepts_kwargs:
            raise TaskDefinitionError(f"@task on {label!r}: input_parameters names {name!r}, which is "
                                      f"not a parameter of the function (parameters: "
                                      f"{', '.join(derived) or 'none'})")
        if "default" not in schema and "default" in derived.get(name, {}):
            schema["default"] = derived[name]["default"]
        merged[name] = schema
    return merged


def _whole(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


def _seed_resources(label: str, task_type: str | None, cpu_num: Any, mem: Any, gpu_mem: Any,
                    model_name: str | None, backend: str | None, extra: Any) -> dict[str, Any]:
    """Validate the resource arguments and return the original task registry's ``resources`` dict."""
    if extra is not None and not isinstance(extra, dict):
        raise ResourceError(f"@task on {label!r}: resources must be a mapping, got {extra!r}")
    raw = dict(extra or {})
    for key, value in (("type", task_type), ("cpu", cpu_num), ("mem", mem), ("gpu_mem", gpu_mem),
                       ("model_name", model_name), ("backend", backend)):
        if value is not None:
            raw[key] = value
    try:
        norm = normalize(raw)
    except ResourceError as exc:
        raise ResourceError(f"@task on {label!r}: {exc}") from None
    seed = {"type": norm["type"], "cpu_num": _whole(norm["cpu"]), "mem": norm["mem"],
            "gpu_mem": norm["gpu_mem"], "model_name": norm["model_name"], "backend": norm["backend"]}
    if any(_RESOURCE_ALIASES.get(key, key) == "gpu" for key in raw):
        seed["gpu"] = _whole(norm["gpu"])
    return seed


def _first_paragraph(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split()) if doc else ""


def _build_meta(func: Callable[..., Any], options: dict[str, Any]) -> TaskMeta:
    label = label_of(func)
    if not callable(func):
        raise TaskDefinitionError(f"@task can only decorate a function, got {func!r}")
    parameters, required, accepts_kwargs = _signature_facts(func)
    hints = _type_hints(func)
    derived = _derive_inputs(func, hints)
    declared_in = options["input_parameters"]
    declared_out = options["output_parameters"]
    name = options["name"] if options["name"] is not None else getattr(func, "__name__", None)
    if not isinstance(name, str) or not name:
        raise TaskDefinitionError(f"@task on {label!r}: name must be a non-empty string, got {name!r}")
    description = options["description"]
    if description is not None and not isinstance(description, str):
        raise TaskDefinitionError(f"@task on {label!r}: description must be a string")
    resources = _seed_resources(label, options["task_type"], options["cpu_num"], options["mem"],
                                options["gpu_mem"], options["model_name"], options["backend"],
                                options["resources"])
    try:
        meta = TaskMeta(
            name=name,
            description=description if description is not None else _first_paragraph(func),
            input_parameters=(derived if declared_in is None
                              else _merge_inputs(func, declared_in, derived, accepts_kwargs)),
            output_parameters=(_derive_outputs(hints) if declared_out is None
                               else _schema_map(declared_out, "output_parameters", label)),
            resources=resources,
            version=options["version"] if options["version"] is not None else DEFAULT_VERSION,
            retries=options["retries"],
            timeout=options["timeout"],
            parameters=parameters,
            required_inputs=required,
            accepts_kwargs=accepts_kwargs,
        )
    except ValidationError as exc:
        raise TaskDefinitionError(f"@task on {label!r}: {_validation_message(exc)}") from None
    try:
        canonical_json(meta.to_dict())
    except (TypeError, ValueError) as exc:
        raise TaskDefinitionError(f"@task on {label!r}: metadata must be JSON: {exc}") from None
    return meta


@overload
def task(func: F, /) -> F: ...


@overload
def task(
    func: None = None, /, *, name: str | None = None, description: str | None = None,
    input_parameters: dict[str, dict[str, Any]] | None = None,
    output_parameters: dict[str, dict[str, Any]] | None = None,
    task_type: Literal["cpu", "gpu", "io"] | None = None, cpu_num: float | None = None,
    mem: int | str | None = None, gpu_mem: int | str | None = None, model_name: str | None = None,
    backend: str | None = None, resources: dict[str, Any] | None = None, version: str | None = None,
    retries: int | None = None, timeout: float | None = None,
) -> Callable[[F], F]: ...


def task(
    func: Callable[..., Any] | None = None, /, *, name: str | None = None,
    description: str | None = None, input_parameters: dict[str, dict[str, Any]] | None = None,
    output_parameters: dict[str, dict[str, Any]] | None = None,
    task_type: Literal["cpu", "gpu", "io"] | None = None, cpu_num: float | None = None,
    mem: int | str | None = None, gpu_mem: int | str | None = None, model_name: str | None = None,
    backend: str | None = None, resources: dict[str, Any] | None = None, version: str | None = None,
    retries: int | None = None, timeout: float | None = None,
) -> Any:
    """Mark a function as a Maze task; usable bare (``@task``) or with keyword arguments.

    Arguments of the original task registry (``name``, ``description``, ``input_parameters``, ``output_parameters``,
    ``task_type``, ``cpu_num``, ``mem``, ``gpu_mem``, ``model_name``, ``backend``) and of the original SDK
    (``resources={"gpu": 1}``, ``version``) are accepted, plus ``retries`` (None: engine default)
    and ``timeout`` (seconds > 0, None: none). The function itself is returned, still directly
    callable, with ``func._task_meta`` set. Invalid metadata raises ``TaskDefinitionError`` (bad
    resources: ``ResourceError``) at decoration time, naming the function.
    """
    options = {"name": name, "description": description, "input_parameters": input_parameters,
               "output_parameters": output_parameters, "task_type": task_type, "cpu_num": cpu_num,
               "mem": mem, "gpu_mem": gpu_mem, "model_name": model_name, "backend": backend,
               "resources": resources, "version": version, "retries": retries, "timeout": timeout}

    def decorate(f: F) -> F:
        f._task_meta = _build_meta(f, options).to_dict()  # type: ignore[attr-defined]
        return f

    if func is None:
        return decorate
    if not callable(func):
        raise TaskDefinitionError(f"@task takes keyword arguments only, e.g. @task(name={func!r}); "
                                  f"got a positional {type(func).__name__}")
    return decorate(func)


def is_task(func: Any) -> bool:
    """Whether ``func`` is a function decorated with ``@task``."""
    return callable(func) and isinstance(getattr(func, "_task_meta", None), dict)


def get_meta(func: Callable[..., Any]) -> TaskMeta:
    """The validated metadata of a decorated function (``TaskDefinitionError`` otherwise)."""
    return TaskMeta.from_func(func)


def derive_meta(func: Callable[..., Any], name: str | None = None) -> TaskMeta:
    """The metadata a bare ``@task`` (``@task(name=name)`` when ``name`` is given) would give
    ``func``, without changing ``func``: for plain functions that arrive undecorated, such as the
    ``serialized_func`` of a raw API client. Raises ``TaskDefinitionError`` as ``@task`` would."""
    return _build_meta(func, {**dict.fromkeys(_OPTION_NAMES), "name": name})
