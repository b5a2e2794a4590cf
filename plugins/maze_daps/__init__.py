"""Scheduling policies for Maze.

- ``daps`` (the default): runs with the least estimated work left first, with an ageing credit so
  none starves; within a run, the task on the longest estimated path to the end first. Durations
  are learned per tool from the event history. See ``daps.py``.
- ``fifo``: ready tasks in the order they became ready, with backfilling.

Both pass over a task that does not fit the executor now for one that does (backfilling).
``[daps] aging`` (seconds of work credited per second of waiting) and ``[daps] alpha`` (the weight
of each new duration) tune the policy.
"""

from pydantic import BaseModel, ConfigDict

from maze_core import hookimpl

from .daps import DapsScheduler, DurationModel
from .fifo import FifoScheduler

__all__ = ["DapsScheduler", "DurationModel", "FifoScheduler"]


class DapsConfig(BaseModel):
    """``[daps]``: ageing credit (s of work per s waited), EWMA weight, first guess (s)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    aging: float = 0.5
    alpha: float = 0.3
    default_s: float = 1.0


def _daps(config):
    from maze_core.errors import ConfigError
    section = config.plugin_section("daps", DapsConfig) if config is not None else DapsConfig()
    try:
        return DapsScheduler(aging=section.aging, alpha=section.alpha, default_s=section.default_s)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[daps]: {exc}") from None


@hookimpl
def register_config_sections(register):
    register("daps", DapsConfig)


@hookimpl
def register_schedulers(register):
    register("fifo", lambda config: FifoScheduler())
    register("daps", _daps)
