"""The embedded executor: task bodies run in this process's threads (or a process pool), with no
Ray. CPU, memory and (counted) GPU capacity come from ``[local]`` in the configuration."""

from maze_core import hookimpl

from .executor import LocalExecutor

__all__ = ["LocalExecutor"]


@hookimpl
def register_executors(register):
    register("local", LocalExecutor.from_config)
