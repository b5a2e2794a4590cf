"""What runs on a Ray worker: the body around a task's function, and the fused batch of calls.

Everything here is shipped to workers inside the remote functions the executor exports, and
imports only ``maze_core`` (never the executor's driver-side state).

A call is ``(kwargs, ctx)``: the task's inputs, and ``ctx`` with ``task`` (run id, task id,
attempt, for ``maze_core.current_task()``), and, when they apply, ``cwd`` (the run's folder) and
``cuda`` (the devices granted). Upstream results that stay in Ray's object store come as extra
arguments, each ``Pick`` in the inputs naming one by its index. The body never raises for a task
error: it returns ``("ok", fields, blobs, s)`` or ``("error", message, traceback, s, retryable)``.
"""

from __future__ import annotations

import os
import re
import time
import traceback
from typing import Any

import cloudpickle

from maze_core import results
from maze_core.executor import map_picks
from maze_core.task_context import TaskContext, running

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def plain(text: str) -> str:
    """``text`` without terminal colour codes (Ray colours the names in its error texts)."""
    return _ANSI.sub("", text)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, as the log keeps a task's error."""
    return plain(f"{type(exc).__name__}: {exc}")


def environment_hint(exc: BaseException) -> str:
    """What to try when a task's code cannot be imported on a worker ("" otherwise)."""
    if not isinstance(exc, ImportError):
        return ""
    missing = getattr(exc, "name", None) or "the module"
    return (f" (on the Ray worker: make {missing!r} importable there: install it in the workers'"
            f" Python environment, or keep the module next to the workflow file so that"
            f" `maze run` ships it by value)")


def make_body(func: Any, inline_limit: int) -> Any:
    """The Ray task running one call of ``func``: loads the function, resolves the inputs handed
    over as ``Pick`` of upstream results, sets the task's context, devices and working directory,
    runs the task, encodes the result as the log will hold it (``maze_core.results``: the driver
    only stores it), restores the process, and returns the outcome as data.

    The function travels as ``cloudpickle`` bytes, made here with the same pickler (and so the
    same rules for what goes by value) as the log's copy: Ray's own pickler keeps a registry of
    its own, so a module that ``maze run`` ships by value would reach the worker as a name it
    cannot import. It is loaded once per worker process, inside the body, so a function that
    cannot be loaded there fails its task with the real error and what to try."""
    payload = cloudpickle.dumps(func)
    loaded: list[Any] = []        # per worker process: Ray keeps the deserialised body

    def maze_task(call: tuple[dict[str, Any], dict[str, Any]], *held: Any) -> tuple:
        kwargs, ctx = call
        if not loaded:
            try:
                loaded.append(cloudpickle.loads(payload))
            except BaseException as exc:  # noqa: BLE001 - the code cannot be loaded on this worker
                return ("error", describe(exc) + environment_hint(exc), traceback.format_exc(), 0.0, False)
        func = loaded[0]
        if held:
            try:
                kwargs = unpick(kwargs, held)
            except Exception as exc:  # noqa: BLE001 - the inputs could not be made
                from maze_core.dag import ReferenceResolutionError
                return ("error", describe(exc), traceback.format_exc(), 0.0,
                        not isinstance(exc, ReferenceResolutionError))
        cuda = ctx.get("cuda")
        saved_env = os.environ.get("CUDA_VISIBLE_DEVICES")
        saved_order = os.environ.get("CUDA_DEVICE_ORDER")
        saved_cwd = None
        if cuda is not None:   # nvidia-smi's indices (the ledger's) are in PCI order
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        run_id, task_id, attempt = ctx["task"]
        t0 = time.perf_counter()
        try:
            if ctx.get("cwd"):
                saved_cwd = os.getcwd()
                os.chdir(ctx["cwd"])
            with running(TaskContext(run_id, task_id, attempt, ctx.get("cwd"))):
                value = func(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - the task's failure is data for the engine
            return ("error", describe(exc), traceback.format_exc(), time.perf_counter() - t0, True)
        finally:
            if saved_cwd is not None:
                try:
                    os.chdir(saved_cwd)
                except OSError:
                    os.chdir("/")
            if cuda is not None:
                for name, saved in (("CUDA_VISIBLE_DEVICES", saved_env), ("CUDA_DEVICE_ORDER", saved_order)):
                    if saved is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = saved
        took = time.perf_counter() - t0
        try:
            fields, blobs = results.encode(value, inline_limit)
        except results.ResultEncodingError as exc:
            return ("error", f"ResultError: {exc}", None, took, False)
        return ("ok", fields, blobs, took)

    maze_task.__qualname__ = maze_task.__name__ = f"maze:{getattr(func, '__name__', 'task')}"
    return maze_task


def make_batch_body(func: Any, inline_limit: int) -> Any:
    """The Ray task for a fused batch: each call in turn, each outcome as ``make_body``'s."""
    one = make_body(func, inline_limit)

    def maze_batch(calls: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple]:
        return [one(call) for call in calls]

    maze_batch.__qualname__ = maze_batch.__name__ = f"maze:{getattr(func, '__name__', 'task')}[fused]"
    return maze_batch


def unpick(kwargs: dict[str, Any], held: tuple) -> dict[str, Any]:
    """Each ``Pick`` (its handle replaced by the index of an extra argument) becomes the value at
    its path in that upstream result, decoded as the log holds it."""
    from maze_core.dag import resolve_path
    values: dict[int, Any] = {}

    def value(pick: Any) -> Any:
        i = pick.handle
        if i not in values:
            outcome = held[i]          # the upstream task's ("ok", fields, blobs, s)
            fields, blobs = outcome[1], outcome[2]
            values[i] = results.decode(fields.get("result"), fields.get("result_ref"), blobs.__getitem__)
        return resolve_path(values[i], list(pick.path), ref=pick.ref)

    return map_picks(kwargs, value)

