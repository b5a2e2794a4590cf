"""The embedded executor, with no Ray: task bodies run in this process's daemon threads. CPU,
memory and (counted) GPU capacity, and the backlog depth, come from ``[local]`` in the
configuration."""

from maze_core import hookimpl

from .executor import LocalExecutor

__all__ = ["LocalExecutor"]


@hookimpl
def register_executors(register):
    register("local", LocalExecutor.from_config)
