"""The task registry (MaRegister, seed 003): the ``@task`` decorator, task metadata and ``ToolRegistry``.

``@task`` stores the task's metadata on the function as ``func._task_meta``, a plain dict shaped
exactly as in seed 003 plus three top-level keys::

    {'name', 'description', 'input_parameters', 'output_parameters',
     'resources': {'type', 'cpu_num', 'mem', 'gpu_mem', 'model_name', 'backend'},
     'version', 'retries', 'timeout'}

``version`` defaults to ``"0.0.0"`` (no version declared), ``retries`` and ``timeout`` to ``None``
(the engine's defaults). Resources are validated and converted by :func:`maze_core.resources.normalize`
when the function is decorated: ``mem``/``gpu_mem`` are stored in MB (``"4G"`` becomes ``4096``) and
``cpu_num`` as a number of cores (an ``io`` task asks for a tenth of a core unless told otherwise).
A ``gpu`` count given through ``resources={...}`` (seed 000 style) is kept under ``'resources'`` too.

Input schemas missing from the arguments are derived per parameter from the signature and its type
hints with pydantic; a parameter is required iff its schema has no ``"default"`` (defaults that are
not JSON are not recorded, so :attr:`TaskMeta.required_inputs` is the authoritative list).

``ToolRegistry`` maps tool names to functions. Tools come from direct registration, from a directory
scan (:meth:`ToolRegistry.discover_tasks`) or from plugins (:meth:`ToolRegistry.load_plugin_tools`).
Every registration and removal is announced to subscribers so the engine can record
``ToolRegistered`` / ``ToolRemoved`` events.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import re
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import NotFoundError, ResourceError, TaskDefinitionError
from .events import canonical_json
from .resources import _ALIASES as _RESOURCE_ALIASES
from .resources import normalize

__all__ = [
    "DEFAULT_VERSION",
    "TYPE_FILEPATH",
    "TYPE_FOLDERPATH",
    "TaskMeta",
    "ToolEntry",
    "ToolRegistry",
    "derive_meta",
    "discover_tasks",
    "get_meta",
    "get_task",
    "is_task",
    "register_task",
    "task",
    "task_registry",
]

TYPE_FILEPATH = "filepath"
TYPE_FOLDERPATH = "folderpath"
DEFAULT_VERSION = "0.0.0"

logger = logging.getLogger("maze.registry")

F = TypeVar("F", bound=Callable[..., Any])
Listener = Callable[[str, "ToolEntry"], None]

_SEED_KEYS = ("name", "description", "input_parameters", "output_parameters", "resources",
              "version", "retries", "timeout")
_VAR_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_OPTION_NAMES = ("name", "description", "input_parameters", "output_parameters", "task_type", "cpu_num",
                 "mem", "gpu_mem", "model_name", "backend", "resources", "version", "retries",
                 "timeout")  # the keyword arguments of @task


def _label(func: Any) -> str:
    """How error messages name a function."""
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in exc.errors())


class TaskMeta(BaseModel):
    """A task's metadata. :meth:`to_dict` gives the seed-003 dict stored as ``func._task_meta``.

    ``parameters``, ``required_inputs`` and ``accepts_kwargs`` come from the function's signature and
    are not part of the seed dict.
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
        label = _label(func)
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
        """The seed-003 metadata dict plus ``version``, ``retries`` and ``timeout``."""
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
    label = _label(func)
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
    """Validate the resource arguments and return the seed-003 ``resources`` dict."""
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
    label = _label(func)
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

    Arguments of seed 003 (``name``, ``description``, ``input_parameters``, ``output_parameters``,
    ``task_type``, ``cpu_num``, ``mem``, ``gpu_mem``, ``model_name``, ``backend``) and of seed 000
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


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """One registered tool. ``digest`` = sha256 of canonical JSON of the metadata dict + source.
    ``reason`` is set only on the entry handed to listeners for a removal."""

    name: str
    func: Callable[..., Any]
    meta: TaskMeta
    source: str
    version: str
    digest: str
    reason: str | None = None


class ToolRegistry:
    """Name -> tool function, with metadata, provenance and change listeners. Thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, ToolEntry] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()       # the entries; readers (the engine loop) take it
        self._announce = threading.Lock()    # orders change announcements; readers never take it

    def register_task(self, func: Callable[..., Any], source: str = "manual",
                      version: str | None = None) -> TaskMeta:
        """Register a decorated function under its task name and return its metadata.

        ``version`` overrides the declared one (e.g. a tool package's version). An undecorated or
        nameless function is logged at ERROR and raises ``TaskDefinitionError``; a name already
        registered is overwritten with a WARNING."""
        try:
            meta = get_meta(func)
        except TaskDefinitionError as exc:
            logger.error("cannot register %s (source %s): %s", _label(func), source, exc)
            raise
        if version is not None:
            meta = meta.model_copy(update={"version": version})
        digest = hashlib.sha256((canonical_json(meta.to_dict()) + source).encode()).hexdigest()
        entry = ToolEntry(meta.name, func, meta, source, meta.version, digest)
        with self._announce:   # listeners hear of changes in the order they were made
            with self._lock:
                if meta.name in self._entries:
                    logger.warning("task %r re-registered; overwriting", meta.name)
                self._entries[meta.name] = entry
                logger.info("Successfully registered task: %s", meta.name)
            self._notify("registered", entry)   # outside _lock: a listener may wait on a reader
        return meta

    def unregister(self, name: str, reason: str = "removed") -> ToolEntry:
        """Remove a tool (``NotFoundError`` if unknown); listeners see ``reason`` on the entry."""
        with self._announce:
            with self._lock:
                entry = self.get(name)
                del self._entries[name]
                logger.info("Removed task: %s (%s)", name, reason)
            self._notify("removed", replace(entry, reason=reason))
        return entry

    def get(self, name: str) -> ToolEntry:
        """The entry of a registered tool; ``NotFoundError`` naming close matches otherwise."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                return entry
            names = list(self._entries)
        close = difflib.get_close_matches(name, names, n=3)
        hint = (f"; did you mean {', '.join(map(repr, close))}?" if close
                else f" ({len(names)} tasks registered)")
        raise NotFoundError(f"unknown task {name!r}{hint}")

    def get_task(self, name: str) -> Callable[..., Any]:
        """The function registered as ``name`` (``NotFoundError`` otherwise)."""
        return self.get(name).func

    def names(self) -> list[str]:
        """Registered tool names, sorted."""
        with self._lock:
            return sorted(self._entries)

    def list_tasks(self) -> list[dict[str, Any]]:
        """Every tool, sorted by name: name, version, source, description, type, resources and
        the input/output schemas."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.name)
        return [{"name": e.name, "version": e.version, "source": e.source,
                 "description": e.meta.description, "type": e.meta.resources.get("type", "cpu"),
                 "resources": dict(e.meta.resources),
                 "input_parameters": dict(e.meta.input_parameters),
                 "output_parameters": dict(e.meta.output_parameters)} for e in entries]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(change, entry)`` (change: ``'registered'`` | ``'removed'``) on every
        change, in order. Returns a function that unsubscribes. A callback that raises is logged
        at ERROR; the change stands."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def _notify(self, change: str, entry: ToolEntry) -> None:
        for callback in list(self._listeners):
            try:
                callback(change, entry)
            except Exception:
                logger.exception("registry listener %r failed on %s of task %r", callback, change,
                                 entry.name)

    def discover_tasks(self, tasks_root_path: str | Path,
                       package_root_path: str | Path | None = None) -> list[str]:
        """Import every ``.py`` file under ``tasks_root_path`` and register its ``@task`` functions.

        Files named ``_*`` (``__init__.py`` included) and hidden directories are skipped. With
        ``package_root_path`` the files are imported as regular modules named relative to it (it
        is put on ``sys.path``); otherwise each gets a unique synthetic module name. Only functions
        defined in the module itself are registered (imported ones are not registered twice). A
        module that fails to import, or a task that cannot be registered, is logged at ERROR and
        the scan goes on. Returns the names registered, in scan order."""
        root = Path(tasks_root_path).resolve()
        if not root.is_dir():
            raise NotFoundError(f"tasks directory {str(tasks_root_path)!r} does not exist")
        package_root = Path(package_root_path).resolve() if package_root_path is not None else None
        if package_root is not None and str(package_root) not in sys.path:
            sys.path.insert(0, str(package_root))
        registered: list[str] = []
        for path in _task_files(root):
            try:
                module = import_file(path, package_root)
            except (Exception, SystemExit) as exc:  # one broken module must not stop the scan
                logger.error("failed to import task module %s: %s: %s", path, type(exc).__name__, exc,
                             exc_info=True)
                continue
            for func in _module_tasks(module):
                try:
                    registered.append(self.register_task(func, source=f"dir:{root}").name)
                except TaskDefinitionError:
                    continue  # already logged at ERROR by register_task
        return registered

    def load_plugin_tools(self, pm: Any, versions: dict[str, str] | None = None) -> list[str]:
        """Collect tools from every plugin's ``register_tools(register)`` hook, called through
        pluggy one plugin at a time (``pm.subset_hook_caller``, wrappers included), so that each
        tool is attributed to its plugin and a plugin that raises costs only its own tools.

        Each function lands with source ``"package:<plugin name>"``. ``versions`` maps plugin
        names to their package's version, given to tools that declare none. A plugin whose hook
        raises is logged at ERROR and skipped; a function that cannot be registered is logged and
        skipped. Returns the names registered."""
        registered: list[str] = []
        impls = pm.hook.register_tools.get_hookimpls()
        wrappers = [impl.plugin for impl in impls if impl.hookwrapper or impl.wrapper]
        for impl in impls:
            if impl.hookwrapper or impl.wrapper:
                continue
            source = f"package:{impl.plugin_name}"
            package_version = (versions or {}).get(impl.plugin_name)

            def register(func: Callable[..., Any], _source: str = source,
                         _version: str | None = package_version) -> None:
                declared = getattr(func, "_task_meta", None)
                undeclared = isinstance(declared, dict) and declared.get("version") in (None, DEFAULT_VERSION)
                try:
                    registered.append(self.register_task(
                        func, source=_source, version=_version if undeclared else None).name)
                except TaskDefinitionError:
                    pass  # already logged at ERROR by register_task

            # this plugin's implementation (and the wrappers of any plugin), through pluggy
            only_this = pm.subset_hook_caller("register_tools", remove_plugins=[
                i.plugin for i in impls if i.plugin is not impl.plugin and i.plugin not in wrappers])
            try:
                only_this(register=register)
            except Exception:
                logger.exception("plugin %r failed in register_tools", impl.plugin_name)
        return registered


def _task_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).parts
        if path.name.startswith("_") or any(part.startswith(".") for part in relative[:-1]):
            continue
        yield path


_NON_IDENT = re.compile(r"\W")


def import_file(path: Path, package_root: Path | None = None) -> Any:
    """Import one file: as a named module under ``package_root``, or under a synthetic name."""
    if package_root is not None and path.is_relative_to(package_root):
        return importlib.import_module(".".join(path.relative_to(package_root).with_suffix("").parts))
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"maze_tasks_{digest}_{_NON_IDENT.sub('_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _module_tasks(module: Any) -> Iterator[Callable[..., Any]]:
    """Functions defined in ``module`` itself that carry ``_task_meta`` (each once)."""
    seen: set[int] = set()
    for obj in list(vars(module).values()):
        if (inspect.isfunction(obj) and hasattr(obj, "_task_meta") and id(obj) not in seen
                and obj.__module__ == module.__name__):
            seen.add(id(obj))
            yield obj


task_registry = ToolRegistry()
register_task = task_registry.register_task
get_task = task_registry.get_task
discover_tasks = task_registry.discover_tasks
