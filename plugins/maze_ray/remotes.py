"""How calls become Ray tasks: their Ray options (CPUs, memory, the GPU placement: node, devices,
``CUDA_VISIBLE_DEVICES``), the remote functions that run them, exported once per function and
options and kept (Ray validates options on every ``.options()`` call: a cost per task worth
saving), and the call itself: one argument per call, ``(inputs, context)``, as Ray pays per
argument it serialises."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from maze_core.executor import Invocation, Pick, map_picks
from maze_core.resources import mem_bytes

from . import pickling
from .ledger import Placement
from .worker import make_batch_body, make_body

REMOTE_CACHE = 256                      # remote functions kept exported


def call_context(inv: Invocation) -> dict[str, Any]:
    """What the worker needs besides the inputs (see ``worker``): the task, its folder."""
    ctx: dict[str, Any] = {"task": (inv.run_id, inv.task_id, inv.attempt)}
    if inv.cwd:
        ctx["cwd"] = inv.cwd
    return ctx


def task_options(inv: Invocation, executor: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Ray options for ``inv``, its call context, and the worker description its start reports."""
    res = inv.resources
    grant = inv.grant
    cpu, mem = float(res.get("cpu") or 0.0), int(res.get("mem") or 0)
    opts: dict[str, Any] = {"num_cpus": cpu}
    if mem:
        opts["memory"] = mem_bytes(mem)
    ctx = call_context(inv)
    worker: dict[str, Any] = {"executor": executor}
    if isinstance(grant, Placement):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        opts["num_gpus"] = grant.num_gpus
        if grant.ray_mb:            # a per-device node: Ray books exactly these devices' MB
            opts["resources"] = grant.ray_resources
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(grant.node_id, soft=False)
        ctx["cuda"] = grant.cuda_visible_devices
        worker.update(node_id=grant.node_id, gpus=list(grant.gpus), gpu_share=grant.share)
    return opts, ctx, worker


class Remotes:
    """The remote functions of this executor, by function and options (the newest REMOTE_CACHE)."""

    def __init__(self, inline_limit: int) -> None:
        self._inline_limit = inline_limit      # [engine] inline_result_limit: results encode on workers
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()  # -> (func, remote)

    def submit(self, invs: list[Invocation], opts: dict[str, Any], ctx: dict[str, Any]) -> Any:
        """Start one Ray task for ``invs`` (one invocation, whose context is ``ctx``, or a fused
        batch of one function's calls); returns its ObjectRef."""
        inv = invs[0]
        pickling.sync()
        if len(invs) > 1:
            remote = self.get(inv.func, opts, batch=True)
            return remote.remote([(i.kwargs, call_context(i)) for i in invs])
        remote = self.get(inv.func, opts)
        if inv.held:   # upstream results in Ray's store: top-level arguments, fetched by Ray
            index = {h: i for i, h in enumerate(dict.fromkeys(inv.held))}
            kwargs = map_picks(inv.kwargs, lambda p: Pick(index[p.handle], p.path, p.ref))
            return remote.remote((kwargs, ctx), *index)
        return remote.remote((inv.kwargs, ctx))

    def get(self, func: Any, opts: dict[str, Any], batch: bool = False) -> Any:
        """The Ray remote function running ``func`` (or a fused batch of its calls) with these
        options."""
        with self._lock:
            return self._get(func, opts, batch)

    def _get(self, func: Any, opts: dict[str, Any], batch: bool) -> Any:
        import ray
        strategy = opts.get("scheduling_strategy")
        key = (id(func), batch, opts["num_cpus"], opts.get("memory"), opts.get("num_gpus"),
               tuple(sorted(opts.get("resources", {}).items())),
               strategy.node_id if strategy is not None else None)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is func:
            self._cache.move_to_end(key)
            return hit[1]
        # GPU tasks get a worker process each (max_calls=1, as Ray's own GPU functions): a
        # process keeps the CUDA context of the device it saw first, whatever
        # CUDA_VISIBLE_DEVICES says later, and its allocator's memory, which the ledger counts free.
        # max_calls is fixed at ray.remote, not per .options(): a separate function for GPU work.
        gpu = bool(opts.get("num_gpus") or opts.get("resources"))   # resources: GPU devices
        base_key = (id(func), batch, gpu)
        base = self._cache.get(base_key)
        if base is None or base[0] is not func:
            extra = {"max_calls": 1} if gpu else {}
            make = make_batch_body if batch else make_body
            base = (func, ray.remote(max_retries=0, **extra)(make(func, self._inline_limit)))
            self._cache[base_key] = base
        remote = base[1].options(**opts)
        self._cache[key] = (func, remote)
        while len(self._cache) > REMOTE_CACHE:
            self._cache.popitem(last=False)
        return remote
