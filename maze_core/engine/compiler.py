"""The DAG compiler: a validated ``DAG`` becomes the payload of its ``RunSubmitted`` event.

Pure: it reads the DAG and the registry it is given, and touches no store, executor or clock.
A registered tool is recorded by name and version; any other function is cloudpickled into a
blob (once per function object) and recorded by the blob's hash. Inputs are stored as the log
will hold them (JSON, UTF-8), so an input the log cannot hold is a problem here, before anything
runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from ..events import clean_text, compact_json
from ..json_limits import json_problems
from ..store import blob_hash


@dataclass
class CompiledRun:
    """What submitting a DAG records: the ``RunSubmitted`` payload, the blobs of its pickled
    functions and those functions themselves (by blob hash), or the problems that refuse it."""

    data: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    funcs: dict[str, Callable[..., Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def compile_dag(dag: Any, *, registered_tool: Callable[[str], Any], default_retries: int,
                default_timeout: float | None, name: Any, process: dict[str, Any],
                workdir: str | None = None) -> CompiledRun:
    """Compile ``dag`` (already validated) into a run. ``registered_tool(name)``: the registry
    entry of a tool, or None; ``process``: the driving process (``RunSubmitted.driver``)."""
    out = CompiledRun()
    tasks: dict[str, dict[str, Any]] = {}
    pickled: dict[int, str] = {}   # id(function) -> blob hash: each function is pickled once
    for tid, node in dag.tasks.items():
        tool = registered_tool(node.func_name)
        if tool is not None and tool.func is node.func:
            func_ref, tool_version = None, tool.version
        else:
            func_ref = pickled.get(id(node.func))
            if func_ref is None:
                try:
                    data = cloudpickle.dumps(node.func)
                except Exception as exc:
                    out.problems.append(f"task {tid}: function {node.func_name!r} cannot be pickled: {exc}")
                    continue
                func_ref = blob_hash(data)
                out.blobs[func_ref] = data
                out.funcs[func_ref] = node.func
                pickled[id(node.func)] = func_ref
            tool_version = None
        try:
            text = compact_json(node.inputs)
            text.encode("utf-8")
            inputs = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            out.problems.append(f"task {tid}: inputs are not JSON-serialisable ({exc}); pass file paths "
                                f"or JSON values")
            continue
        meta = node.meta
        retries = node.retries if node.retries is not None else meta.retries
        timeout = node.timeout if node.timeout is not None else meta.timeout
        tasks[tid] = {
            "func_name": node.func_name, "task_name": node.task_name, "func_ref": func_ref,
            "tool_version": tool_version, "dependencies": list(node.dependencies), "inputs": inputs,
            "resources": node.resources,
            "retries": default_retries if retries is None else int(retries),
            "timeout": default_timeout if timeout is None else float(timeout),
        }
    if not isinstance(name, str) or clean_text(name) != name:
        out.problems.append(f"run name must be text, got {name!r}")
    for tid, spec in tasks.items():   # what the log must hold (the server's door checked it too)
        out.problems += json_problems({k: spec[k] for k in ("task_name", "inputs", "resources")},
                                      f"task {tid}")
    out.data = {"name": name, "tasks": tasks, "driver": process}
    if workdir is not None:
        out.data["workdir"] = str(workdir)
    return out
