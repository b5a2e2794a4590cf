"""maze_sqlite: the default event store, on one SQLite file (``[engine] store = "sqlite"``).

Shaped like any third-party plugin: it registers through the ``maze`` entry-point group and
implements ``register_stores``. The store module (and sqlite-utils) is imported only when a store is
actually created, so loading the plugin stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from maze_core import hookimpl

if TYPE_CHECKING:
    from maze_core.config import MazeConfig

    from .store import SqliteStore


def create_store(config: MazeConfig) -> SqliteStore:
    """The store at ``<data_dir>/<[sqlite] filename>``, creating the data directory if needed."""
    from .store import SqliteStore

    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(data_dir / config.sqlite.filename, busy_timeout_ms=config.sqlite.busy_timeout_ms,
                       synchronous=config.sqlite.synchronous)


@hookimpl
def register_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("sqlite", create_store)
