"""The embedded executor, with no Ray: task bodies run in this process's daemon threads. CPU,
memory and (counted) GPU capacity, and the backlog depth, come from ``[local]`` in the
configuration (:class:`LocalConfig`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from maze_core import hookimpl

from .executor import LocalExecutor

__all__ = ["LocalConfig", "LocalExecutor"]


class LocalConfig(BaseModel):
    """``[local]`` in config.toml."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cpus: float = Field(0, ge=0)  # 0: os.cpu_count()
    mem: int = Field(0, ge=0)     # MB; 0: no memory accounting
    gpus: int = Field(0, ge=0)
    prefetch: float = Field(1.0, ge=0, le=16)  # backlog admitted per CPU beyond what runs

    @classmethod
    def from_config(cls, config) -> LocalConfig:
        """The ``[local]`` section of ``config``, as this model (``ConfigError`` naming the key)."""
        return config.plugin_section("local", cls)


@hookimpl
def register_config_sections(register):
    register("local", LocalConfig)


@hookimpl
def register_executors(register):
    register("local", LocalExecutor.from_config)
