"""The engine: turns submissions, executor reports and timers into events, and events into work.

One thread (the loop) owns all run state. Everything else talks to it through an inbox of
messages (``messages``): submissions, cancellations, resumptions and events to record from
callers, ``TaskUpdate`` reports from the executor. Each turn of the loop (``loop``) hands each
message to its handler, creating events and applying each to its ``RunState`` at once
(``runs``), fires due timers (``timers``: retries, timeouts), lets the scheduling policy pick the
ready tasks that fit (``dispatch``), appends the whole batch of events in one store transaction
(``commits``), publishes them (``observers``) and only then hands the picked tasks to the
executor. So a task never starts before the log says it was queued, and a crash at any point
leaves a log from which ``resume`` (planned by ``resume``) finishes the run without re-running a
task the log shows finished. ``compiler`` turns a DAG into its ``RunSubmitted`` payload;
``retention`` keeps results in memory for the consumers still to come; ``api`` is ``Engine``.
"""

from .api import Engine
from .messages import EngineError, EngineStats
from .resume import ResumeReport

__all__ = ["Engine", "EngineError", "EngineStats", "ResumeReport"]
