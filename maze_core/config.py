"""Configuration: ``config.toml`` read into a pydantic model, then ``MAZE_*`` environment overrides.

Where the file comes from: ``MAZE_CONFIG`` (a path) if set, else ``./config.toml`` if present, else
built-in defaults (the same values as the documented ``config.toml``). Any key can be overridden by
``MAZE_<SECTION>_<KEY>``: ``MAZE_SERVER_PORT=9000``, ``MAZE_ENGINE_EXECUTOR=local``,
``MAZE_PATHS_DATA_DIR=/tmp/maze``. Relative paths resolve against ``[paths] project_root``, which
itself resolves against the directory of the config file (or the working directory).

Maze's own sections are modelled here. A plugin's section (``[local]``, ``[sqlite]``, ``[ray]``,
``[daps]`` ...) is modelled by the plugin, which registers its pydantic model through the
``register_config_sections`` hook: ``load_config`` checks the section against it (the error names
the key, and the file or the ``MAZE_<SECTION>_<KEY>`` variable), and ``config.<section>`` is the
section as that model (:meth:`MazeConfig.plugin_section`).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class NoSuchSection(ConfigError, AttributeError):
    """``config.<name>`` where neither Maze nor a loaded plugin has a section ``name``."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # authentication (maze_api.auth): "name=token" or "name=sha256:<hex>" entries
    tokens: list[str] = []
    tokens_file: str = ""
    admins: list[str] = []
    cors_origins: list[str] = []
    # limits (maze_api): request bodies, extracted archives, event streams
    max_body_mb: float = Field(256.0, gt=0)
    max_archive_mb: float = Field(1024.0, gt=0)
    max_archive_files: int = Field(10000, ge=1)
    max_compression_ratio: float = Field(100.0, ge=1)
    sse_heartbeat_s: float = Field(15.0, gt=0)
    max_streams_per_token: int = Field(8, ge=1)   # live event streams open at once per token


class PathsConfig(_Section):
    project_root: str = "."
    model_folder: str = "models"
    data_dir: str = ".maze"


class EngineConfig(_Section):
    store: str = "sqlite"
    executor: str = "auto"      # "auto": "ray" where it is installed and registered, else "local"
    scheduler: str = "daps"
    retries: int = Field(0, ge=0, le=100)
    retry_backoff: float = Field(0.5, ge=0)
    retry_backoff_max: float = Field(30.0, ge=0)
    default_timeout: float | None = Field(None, gt=0)
    inline_result_limit: int = Field(65536, ge=0)
    max_batch: int = Field(2000, ge=1)
    validate_events: bool = False
    resume_on_start: bool = False
    max_interruptions: int = Field(3, ge=0)


class ToolsConfig(_Section):
    paths: list[str] = []
    package_root: str = ""   # "": each tool file is imported on its own (the task registry's package_root_path)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "console", "json"] = "auto"


Section = TypeVar("Section", bound=BaseModel)


class MazeConfig(BaseModel):
    """The whole configuration. Unknown keys in Maze's own sections are errors. Other sections are
    kept as given; those a loaded plugin models (``register_config_sections``) are read as that
    model: ``config.local.cpus``, ``config.plugin_section("local", LocalConfig)``."""

    model_config = ConfigDict(extra="allow")

    server: ServerConfig = ServerConfig()
    paths: PathsConfig = PathsConfig()
    engine: EngineConfig = EngineConfig()
    tools: ToolsConfig = ToolsConfig()
    logging: LoggingConfig = LoggingConfig()

    # where the file came from (None: defaults); not a config key
    source: str | None = Field(None, exclude=True)

    # ------------------------------------------------------------------ derived paths
    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def resolve(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        if p.is_absolute():
            return p
        root = Path(os.path.expanduser(self.paths.project_root))
        if not root.is_absolute():
            root = self.base_dir / root
        return (root / p).resolve()

    @property
    def project_root(self) -> Path:
        return self.resolve(".")

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.paths.data_dir)

    # ------------------------------------------------------------------ plugin sections
    def __getattr__(self, name: str) -> Any:
        """``config.<section>`` for a section a plugin models: :meth:`plugin_section`."""
        if name.startswith(("_", "model_")):
            return super().__getattr__(name)
        extra = self.__pydantic_extra__ or {}
        value = extra.get(name)
        if isinstance(value, BaseModel):
            return value
        model = _plugin_models().get(name)
        if model is not None:
            return self.plugin_section(name, model)
        if name in extra:
            return value
        from .plugins import allowed_plugins
        hint = " (MAZE_LOAD_PLUGINS is set)" if allowed_plugins() is not None else ""
        raise NoSuchSection(f"the configuration has no section [{name}]: no loaded plugin "
                            f"registers it{hint}")

    def plugin_section(self, name: str, model: type[Section]) -> Section:
        """A plugin's section read through the plugin's own pydantic ``model``: checked once
        (``ConfigError`` naming the key), then the same object every time, so that a change made
        to it (``config.local.cpus = 2``) is what every reader sees."""
        extra = self.__pydantic_extra__
        if extra is None:
            extra = self.__pydantic_extra__ = {}
        value = extra.get(name)
        if isinstance(value, model):
            return value
        given = value.model_dump() if isinstance(value, BaseModel) else dict(value or {})
        try:
            typed = model.model_validate(given)
        except ValidationError as exc:
            raise ConfigError(_section_error(exc, name, self.source or "built-in defaults")) from None
        extra[name] = typed
        return typed

    def section(self, name: str) -> dict[str, Any]:
        """A section as a dict ({} when absent): a plugin's section as given (the file and the
        environment), or with its defaults once read through its model."""
        if name in type(self).model_fields:
            value: Any = getattr(self, name)
        else:
            value = (self.__pydantic_extra__ or {}).get(name)
        return value.model_dump() if isinstance(value, BaseModel) else dict(value or {})

    def effective(self, plugin_sections: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every section with the values in effect: Maze's own sections, then each plugin's
        section with the plugin's defaults filled in, then sections no loaded plugin describes, as
        the file or the environment gave them.

        A plugin's own section is read by the plugin alone, with its defaults in its code: without
        a config file it is absent from this model. ``plugin_sections`` maps a section name to what
        its plugin registered for it (``register_config_sections``): a pydantic model of the
        section, or a dict of its defaults. Raises ``ConfigError`` naming the key on a bad value."""
        out = self.model_dump()
        for name, schema in (plugin_sections or {}).items():
            given = self.section(name)
            if isinstance(schema, type) and issubclass(schema, BaseModel):
                try:
                    out[name] = schema.model_validate(given).model_dump()
                except ValidationError as exc:
                    raise ConfigError(_section_error(exc, name, self.source or "built-in defaults")) from None
            else:
                out[name] = {**dict(schema), **given}
        return out


_SECTIONS = [name for name, f in MazeConfig.model_fields.items() if name != "source"]


def _plugin_models() -> dict[str, type[BaseModel]]:
    """Section name -> the pydantic model its plugin registered (``register_config_sections``)."""
    from .plugins import config_sections
    return {name: schema for name, schema in config_sections().items()
            if isinstance(schema, type) and issubclass(schema, BaseModel)}


def _section_error(exc: ValidationError, name: str, origin: str,
                   overrides: Mapping[str, Any] | None = None) -> str:
    """One line naming the key of a plugin's section, and where its value came from: the file
    or, for a key in ``overrides``, the environment variable."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "?"
    if loc and loc[0] in (overrides or {}):
        origin = f"environment variable MAZE_{name.upper()}_{loc[0].upper()}"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{origin}: [{name}] {key}: {first['msg']} (got {first.get('input')!r}){more}"


def _check_plugin_sections(data: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]],
                           origin: str) -> None:
    """Check each section that the file or the environment gives against the model its plugin
    registered, so that a bad value is one clear error at start, naming the key."""
    models = _plugin_models()
    for name in data:
        model = models.get(name)
        if model is None:
            continue
        if not isinstance(data[name], dict):
            raise ConfigError(f"{origin}: [{name}] must be a table, got {data[name]!r}")
        try:
            model.model_validate(data[name])
        except ValidationError as exc:
            raise ConfigError(_section_error(exc, name, origin, overrides.get(name))) from None


TOKENS_FD_VAR = "MAZE_SERVER_TOKENS_FD"   # not a key: see _tokens_from_fd


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for var, raw in environ.items():
        if not var.startswith("MAZE_") or var in ("MAZE_CONFIG", "MAZE_LOAD_PLUGINS", TOKENS_FD_VAR):
            continue
        rest = var[5:].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                model = MazeConfig.model_fields[section].annotation
                field = model.model_fields.get(key)
                if field is None:
                    raise ConfigError(f"environment variable {var}: [{section}] has no key {key!r}; "
                                      f"known: {', '.join(model.model_fields)}")
                value: Any = raw
                if get_origin(field.annotation) is list:
                    value = _env_list(var, raw)
                out.setdefault(section, {})[key] = value
                break
        else:
            # a plugin's own section ([ray], [daps] ...): MAZE_RAY_ADDRESS -> [ray] address; the
            # plugin validates its section (a JSON array or object is decoded, for list keys)
            section, sep, key = rest.partition("_")
            if sep and section and key:
                value = raw
                if raw.lstrip()[:1] in ("[", "{"):
                    try:
                        value = json.loads(raw)
                    except ValueError:
                        raise ConfigError(f"environment variable {var}: not valid JSON: {raw!r}") from None
                out.setdefault(section, {})[key] = value
    return out


def _env_list(var: str, raw: str) -> list[str]:
    """A list from an environment variable: a JSON array when the value starts with ``[`` (for
    items holding the path separator, such as URLs), else items separated by ``os.pathsep``."""
    if raw.lstrip().startswith("["):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"environment variable {var}: not a valid JSON array: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"environment variable {var}: the JSON array must hold strings only")
        return value
    return [p for p in raw.split(os.pathsep) if p]


def _describe(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0] if loc else "?"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    return f"{origin}: {key}: {first['msg']}{shown}{more}"


_fd_tokens: dict[str, str] = {}


def _tokens_from_fd(fd: str) -> str:
    """``MAZE_SERVER_TOKENS`` handed over through an inherited pipe (``maze start`` re-executes
    itself so, keeping plain tokens out of ``/proc/<pid>/environ``): read once, then closed."""
    if fd not in _fd_tokens:
        try:
            number = int(fd)
            chunks = []
            while chunk := os.read(number, 65536):
                chunks.append(chunk)
            os.close(number)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"environment variable {TOKENS_FD_VAR}: cannot read tokens from {fd!r}: {exc}") from None
        _fd_tokens[fd] = b"".join(chunks).decode("utf-8")
        os.environ.pop(TOKENS_FD_VAR, None)
    return _fd_tokens[fd]


def load_config(path: str | os.PathLike[str] | None = None,
                environ: dict[str, str] | None = None) -> MazeConfig:
    """Read the configuration; raise ``ConfigError`` naming the file and key on any problem."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get(TOKENS_FD_VAR) and "MAZE_SERVER_TOKENS" not in environ:
        environ = {**environ, "MAZE_SERVER_TOKENS": _tokens_from_fd(environ[TOKENS_FD_VAR])}
    if path is None:
        path = environ.get("MAZE_CONFIG") or ("config.toml" if Path("config.toml").is_file() else None)
    data: dict[str, Any] = {}
    origin = "built-in defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        try:
            with open(p, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        for section in _SECTIONS:
            if section in data and not isinstance(data[section], dict):
                raise ConfigError(f"{p}: [{section}] must be a table, got {data[section]!r}")
    overrides = _env_overrides(environ)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        cfg = MazeConfig.model_validate(data)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        if len(loc) > 1 and loc[1] in overrides.get(str(loc[0]), {}):
            origin = f"environment variable MAZE_{str(loc[0]).upper()}_{str(loc[1]).upper()}"
        raise ConfigError(_describe(exc, origin)) from None
    _check_plugin_sections(data, overrides, origin)
    cfg.source = str(Path(path).resolve()) if path is not None else None
    return cfg
