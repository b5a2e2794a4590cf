"""The exceptions Maze raises. Each names the culprit in its message."""

from __future__ import annotations


class MazeError(Exception):
    """Base class of every Maze error."""


class ConfigError(MazeError):
    """The configuration file or an environment override is invalid."""


class PluginError(MazeError):
    """A plugin is missing, broken, or registered twice under one name."""


class TaskDefinitionError(MazeError):
    """A function cannot be a task: not decorated, bad metadata, bad resources."""


class ResourceError(TaskDefinitionError):
    """A resource request is malformed or can never be satisfied."""


class DAGValidationError(MazeError):
    """A workflow is invalid: cycle, unknown reference, unknown tool, input against the schema..."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


class ConcurrencyError(MazeError):
    """Another writer appended to a stream since this writer last read it."""

    def __init__(self, stream: str, expected: int, actual: int):
        super().__init__(f"stream {stream!r} is at version {actual}, writer expected {expected}")
        self.stream, self.expected, self.actual = stream, expected, actual


class NotFoundError(MazeError):
    """A run, task, tool or blob does not exist."""


class RunStateError(MazeError):
    """The operation does not fit the run's state (e.g. destroying a run that is still active)."""
