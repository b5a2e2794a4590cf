"""maze_sqlite: the default event store, on one SQLite file (``[engine] store = "sqlite"``).

Shaped like any third-party plugin: it registers through the ``maze`` entry-point group and
implements ``register_stores`` and ``register_config_sections`` (``[sqlite]``, read through
:class:`SqliteConfig`). The store module (and sqlite-utils) is imported only when a store is
actually created, so loading the plugin stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from maze_core import hookimpl

if TYPE_CHECKING:
    from maze_core.config import MazeConfig

    from .store import SqliteStore


class SqliteConfig(BaseModel):
    """``[sqlite]`` in config.toml."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    filename: str = "maze.db"
    busy_timeout_ms: int = Field(30000, ge=0)
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"

    @classmethod
    def from_config(cls, config: MazeConfig) -> SqliteConfig:
        """The ``[sqlite]`` section of ``config``, as this model (``ConfigError`` naming the key)."""
        return config.plugin_section("sqlite", cls)


def create_store(config: MazeConfig) -> SqliteStore:
    """The store at ``<data_dir>/<[sqlite] filename>``, creating the data directory if needed."""
    from .store import SqliteStore

    section = SqliteConfig.from_config(config)
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(data_dir / section.filename, busy_timeout_ms=section.busy_timeout_ms,
                       synchronous=section.synchronous)


@hookimpl
def register_config_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register("sqlite", SqliteConfig)


@hookimpl
def register_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("sqlite", create_store)
