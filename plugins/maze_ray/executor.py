"""Task bodies as Ray tasks, on this machine or on a cluster.

Admission: CPU-only tasks are admitted while the CPUs (and memory) they hold, summed over the
cluster, stay within its capacity times ``1 + depth``; Ray places them on nodes and queues the
backlog. The depth adapts to how long tasks take: enough queued work per CPU to cover a few
milliseconds of round trip (so short tasks keep the workers busy), never more than
``[ray] prefetch`` per CPU, and never less than one task per CPU (so long tasks stay in the
scheduling policy's hands, not in Ray's FIFO queue). GPU tasks are placed here, by the GPU ledger (``ledger.py``): the node
and devices are chosen from each device's free memory and the model it last ran, the task is
pinned to that node, and ``CUDA_VISIBLE_DEVICES`` inside it names exactly those devices.

Ray queues what it cannot run yet, and says nothing when a queued task starts. The executor
keeps the same books: a task is reported ``started`` when it is submitted into free CPUs, or, if it
went to the backlog, when tasks before it end and free enough CPUs (the backlog is promoted in
order, with backfilling, as Ray does). So ``TaskStarted`` and timeouts count from when a task could
run, not from when it was queued; the worker's pid and node come with the end report's timing.

Ray does not retry (``max_retries=0``): a worker that dies or a node that leaves is reported to
the engine as a failed attempt (``WorkerLost``), and the task's own retry policy decides, so every
attempt is an event. Cancelling a task (or a timeout) kills its worker (``ray.cancel(force=True)``),
which also frees any GPU memory it held.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from maze_core.errors import MazeError
from maze_core.executor import Executor, Invocation, Pick, Report, TaskUpdate, map_picks
from maze_core.logging import adopt_library_logger
from maze_core.resources import mem_bytes

from . import pickling
from .ledger import Gpu, GpuLedger, Node, Placement, device_resource
from .worker import describe, make_batch_body, make_body, plain

log = structlog.get_logger("maze.ray")


class ExecutorError(MazeError):
    """The Ray executor cannot work (no cluster at the address, Ray failed to start)."""

GPU_MEM_LABEL = "maze.gpu_mem_mb"      # node label: memory per GPU in MB ("10000" or "10000,24000")
REFRESH_S = 2.0                         # how often the view of the cluster is re-read when busy
REMOTE_CACHE = 256                      # remote functions kept exported
COLLECT_WAIT_S = 0.01                   # longest a newly submitted task waits to be watched
SHUTDOWN_WAIT_S = 30.0                  # shutdown(wait=True): longest wait for running tasks
RECANCEL_S = 30.0                       # how long a cancel is repeated until the task has ended
SHUTDOWN_CANCEL_S = 5.0                 # the same, at shutdown on a Ray this executor does not own
PIPELINE_S = 0.005                      # queued work per CPU that covers a round trip to Ray
FUSE_BELOW_S = 0.001                    # calls of a tool shorter than this on average are fused
FUSE_MIN_SEEN = 3                       # ... once it has run this many times here
FUSE_SPAN_S = 0.002                     # work per fused batch
FUSE_MAX = 64                           # calls per fused batch at most


class RayConfig(BaseModel):
    """``[ray]`` in config.toml."""

    model_config = ConfigDict(extra="forbid")

    address: str = ""              # "": an embedded Ray on this machine; "auto" or "HOST:PORT": join
    num_cpus: float = Field(0, ge=0)          # embedded only; 0: every CPU
    num_gpus: int = Field(-1, ge=-1)          # embedded only; -1: detect; >0 fakes GPUs (tests)
    gpu_mem_mb: list[int] = []     # memory of each GPU (MB) where no node label or reading says
    prefetch: float = Field(16.0, ge=0, le=64)  # most CPU tasks queued in Ray beyond the CPUs, per CPU
    object_store_mb: int = Field(0, ge=0)     # embedded only; 0: Ray's default
    probe_gpus: bool = True        # read GPU memory with nvidia-smi on each GPU node
    namespace: str = "maze"
    fuse: bool = True              # run many tiny ready calls of one tool as one Ray task

    @classmethod
    def from_config(cls, config: Any) -> RayConfig:
        from maze_core.errors import ConfigError
        try:
            return cls.model_validate(config.section("ray") if config is not None else {})
        except Exception as exc:
            raise ConfigError(f"[ray]: {exc}") from None


@dataclass(slots=True)
class _Job:
    """One Ray task: one invocation, or a fused batch of them (``members``, in order)."""

    inv: Invocation
    ref: Any
    grant: Any
    cpu: float                  # what the Ray task holds (a batch: what one call asked for)
    mem: int
    worker: dict[str, Any]
    started: bool = False
    members: list[Invocation] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.inv.run_id, self.inv.task_id)

    def keys(self) -> list[tuple[str, str]]:
        return [(i.run_id, i.task_id) for i in self.members or [self.inv]]


def _failure_name(exc: BaseException) -> str:
    import ray.exceptions as rex
    lost = (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.ObjectLostError,
            rex.OwnerDiedError, rex.LocalRayletDiedError,
            rex.TaskUnschedulableError)   # pinned to a node that left (or is not yet visible)
    if isinstance(exc, lost):
        return "WorkerLost"
    if isinstance(exc, rex.TaskCancelledError):
        return "Cancelled"
    return type(exc).__name__


def _context(inv: Invocation) -> dict[str, Any]:
    """The context of one call of a fused batch (see ``worker``)."""
    ctx: dict[str, Any] = {"task": (inv.run_id, inv.task_id, inv.attempt)}
    if inv.cwd:
        ctx["cwd"] = inv.cwd
    return ctx


def use_cluster_token(environ: dict[str, str] | None = None) -> bool:
    """Ray 2.60 heads started with ``ray start`` require a token, but a process joining one only
    sends it in ``RAY_AUTH_MODE=token``. Turn that on when a token is at hand (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, where ``ray start`` keeps it) and the mode
    was not chosen explicitly. Returns whether token mode is on."""
    env = os.environ if environ is None else environ
    mode = env.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    path = env.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if env.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        _token_mode(env, refresh=environ is None)
        return True
    return False


def quiet_ray_logs() -> None:
    """Ray's own log lines go through Maze's logging, in its format: warnings when Maze logs at
    INFO or below (``-v``, a server), errors only otherwise. Ray's note that it set no SIGTERM
    handler (the engine starts it off the main thread in a server, where uvicorn handles
    signals) is dropped."""
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    adopt_library_logger("ray", "ERROR" if quiet else "WARNING")
    worker_log = logging.getLogger("ray._private.worker")
    if _drop_sigterm_note not in worker_log.filters:
        worker_log.addFilter(_drop_sigterm_note)


def _drop_sigterm_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("SIGTERM handler is not set")


def use_local_token() -> None:
    """An embedded Ray protects itself with a token (Ray 2.60's default for a new local cluster:
    it makes one in ``~/.ray/auth_token`` if there is none). Ask for that explicitly, so Ray does
    not print its advice on how to opt out into every ``maze run``; a mode the user chose stays."""
    if os.environ.get("RAY_AUTH_MODE") is None:
        _token_mode(os.environ, refresh=True)


def _token_mode(env: Any, refresh: bool) -> None:
    env["RAY_AUTH_MODE"] = "token"
    if refresh:   # this process: Ray read its settings at import; make it look again
        try:
            from ray._raylet import Config
            Config.initialize("")
        except (ImportError, AttributeError) as exc:  # a Ray without it: the variable suffices
            log.debug("could not refresh Ray's config", error=str(exc))


def device_resources(num_gpus: int | None, gpu_mem_mb: list[int] | None) -> dict[str, int]:
    """Per-device Ray resources for a node of this machine (``maze_gpu<i>_mb``: each GPU's memory
    in MB), from ``gpu_mem_mb`` (one value for every GPU, or one per GPU) or else nvidia-smi;
    ``num_gpus`` None: as many as nvidia-smi sees. {} when either is unknown: the node is then
    booked by fractions of GPUs."""
    read = _read_gpu_memory() if not gpu_mem_mb or num_gpus is None else []
    count = num_gpus if num_gpus is not None else len(read)
    if not count:
        return {}
    if gpu_mem_mb:
        mems = list(gpu_mem_mb) * count if len(gpu_mem_mb) == 1 else list(gpu_mem_mb)
    else:
        mems = read
    if len(mems) != count or not all(m > 0 for m in mems):
        return {}
    return {device_resource(i): int(m) for i, m in enumerate(mems)}


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a HOST:PORT address (ray.init keeps
    retrying an unreachable GCS for a long time)."""
    import socket
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorError(f"[ray] address must be HOST:PORT, 'auto' or '', got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ExecutorError(f"no Ray head answers at {address} ({exc}); start one with "
                            f"`maze start --head` or fix [ray] address") from None


def _read_gpu_memory() -> list[int]:
    """Memory (MB) of each GPU on this machine, by nvidia-smi, or [] where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    mems = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[1].isdigit():
            mems.append(int(parts[1]))
    return mems


class RayExecutor(Executor):
    name = "ray"
    isolates_inputs = True      # arguments are serialised into the worker: always a copy
    holds_results = True        # a blob result stays in Ray's object store for its consumers

    def __init__(self, cfg: RayConfig | None = None, inline_limit: int = 65536):
        self.cfg = cfg or RayConfig()
        self._inline_limit = inline_limit      # [engine] inline_result_limit: results encode on workers
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._remote_lock = threading.Lock()
        self._report: Report | None = None
        self._ledger = GpuLedger()
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._remotes: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()  # -> (func, remote)
        self._cpu_total = 0.0
        self._mem_total = 0
        self._cpu_held = 0.0           # admitted (running or in the backlog)
        self._mem_held = 0
        self._cpu_running = 0.0        # reported started
        self._backlog: OrderedDict[tuple[str, str], _Job] = OrderedDict()
        self._owns_ray = False
        self._started = False
        self._refreshed_at = 0.0
        self._probed: dict[str, list[int]] = {}
        self._avg_s: float | None = None          # moving average of task run time (admission depth)
        self._fn_stats: OrderedDict[Any, list] = OrderedDict()  # func -> [runs, mean s] (fusion)
        self._waiting: dict[Any, _Job] = {}      # ObjectRef -> job, for the results thread
        self._wake = threading.Event()
        self._collector: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Any) -> RayExecutor:
        limit = config.engine.inline_result_limit if config is not None else 65536
        return cls(RayConfig.from_config(config), inline_limit=limit)

    # ------------------------------------------------------------------ lifecycle
    def start(self, report: Report) -> None:
        import ray
        self._report = report
        if not ray.is_initialized():
            try:
                self._init_ray(ray)
            except ExecutorError:
                raise
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
                where = self.cfg.address or "an embedded Ray"
                raise ExecutorError(f"could not start the Ray executor on {where}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        self.refresh(force=True)
        self._started = True
        self._collector = threading.Thread(target=self._collect, name="maze-ray-results", daemon=True)
        self._collector.start()

    def _init_ray(self, ray: Any) -> None:
        cfg = self.cfg
        quiet_ray_logs()
        common = {"namespace": cfg.namespace, "logging_level": "WARNING", "log_to_driver": True,
                  "configure_logging": False}
        if cfg.address:
            _check_reachable(cfg.address)
            use_cluster_token()
            ray.init(address=cfg.address, **common)
        else:
            opts: dict[str, Any] = {"include_dashboard": False}
            if cfg.num_cpus:
                opts["num_cpus"] = cfg.num_cpus
            if cfg.num_gpus >= 0:
                opts["num_gpus"] = cfg.num_gpus
            devices = device_resources(cfg.num_gpus if cfg.num_gpus >= 0 else None, cfg.gpu_mem_mb)
            if devices:
                opts["resources"] = devices
            if cfg.object_store_mb:
                opts["object_store_memory"] = mem_bytes(cfg.object_store_mb)
            use_local_token()
            # "local": never join a cluster named by a stale file in Ray's temp folder
            ray.init(address="local", **opts, **common)
        self._owns_ray = True
        log.info("ray started", address=cfg.address or "embedded",
                 resources=ray.cluster_resources())

    def shutdown(self, wait: bool = True) -> None:
        import ray
        with self._lock:
            jobs = list({id(j): j for j in self._jobs.values()}.values())   # a batch once
            self._jobs.clear()
            self._backlog.clear()
            self._cpu_running = self._cpu_held = 0.0
            self._mem_held = 0
            self._started = False
            self._waiting.clear()
        self._wake.set()
        # tasks not yet started by our books are dropped (as the local executor does); running
        # ones are waited for, up to SHUTDOWN_WAIT_S, then stopped: on a Ray this executor does
        # not own, nothing may go on (or start) behind the stopped engine's back
        running = [j for j in jobs if j.started] if wait else []
        if running:
            try:
                ray.wait([j.ref for j in running], num_returns=len(running),
                         timeout=SHUTDOWN_WAIT_S)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        for job in jobs:
            self._kill(job, recancel=False)   # a task that already ended: nothing to cancel
        if not self._owns_ray:    # a shared Ray goes on: make sure every cancel took effect
            _ensure_cancelled([j.ref for j in jobs], SHUTDOWN_CANCEL_S)
        if self._collector is not None:
            self._collector.join(timeout=5)
            self._collector = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    # ------------------------------------------------------------------ the cluster
    def refresh(self, force: bool = False) -> list[str]:
        """Re-read the nodes of the cluster (at most every REFRESH_S unless forced); returns ids
        of nodes that left."""
        if not force and time.monotonic() - self._refreshed_at < REFRESH_S:
            return []
        with self._refresh_lock:   # one at a time: an older view must not land after a newer one
            return self._refresh(force)

    def _refresh(self, force: bool) -> list[str]:
        now = time.monotonic()
        if not force and now - self._refreshed_at < REFRESH_S:
            return []           # another thread just did it
        import ray
        self._refreshed_at = now
        nodes = []
        for info in ray.nodes():
            res = info.get("Resources") or {}
            labels = info.get("Labels") or {}
            nid = info["NodeID"]
            n_gpu = int(res.get("GPU", 0))
            per_device = [res.get(device_resource(i)) for i in range(n_gpu)]
            exact = n_gpu > 0 and all(per_device)     # Ray keeps per-device books of memory
            mems = ([int(m) for m in per_device] if exact
                    else self._gpu_memory(nid, n_gpu, labels, info.get("Alive", False)))
            nodes.append(Node(nid, info.get("NodeManagerAddress", ""), float(res.get("CPU", 0)),
                              int(res.get("memory", 0) // (1024 * 1024)),
                              [Gpu(i, mems[i] if i < len(mems) else 0) for i in range(n_gpu)],
                              bool(info.get("Alive")), dict(labels), exact))
        with self._lock:
            gone = self._ledger.set_nodes(nodes)
            alive = self._ledger.alive()
            self._cpu_total = sum(n.cpu for n in alive)
            self._mem_total = sum(n.mem for n in alive)
        if gone:
            log.warning("nodes left the cluster", nodes=gone)
        return gone

    def _gpu_memory(self, node_id: str, n_gpu: int, labels: dict[str, str], alive: bool) -> list[int]:
        if not n_gpu:
            return []
        label = labels.get(GPU_MEM_LABEL)
        if label:
            try:
                mems = [int(float(p)) for p in label.split(",") if p.strip()]
            except ValueError:
                mems = []
            if mems:
                return mems * n_gpu if len(mems) == 1 else mems
        if self.cfg.gpu_mem_mb:
            mems = list(self.cfg.gpu_mem_mb)
            return mems * n_gpu if len(mems) == 1 else mems
        if not (self.cfg.probe_gpus and alive):
            return []
        if node_id not in self._probed:
            self._probed[node_id] = self._probe(node_id)
        return self._probed[node_id]

    def _probe(self, node_id: str) -> list[int]:
        """Read the GPUs' memory on that node (a zero-CPU task pinned to it)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        probe = ray.remote(num_cpus=0, max_retries=0)(_read_gpu_memory)
        try:
            return ray.get(probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id, soft=False)).remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - unknown memory is handled (shared by fraction)
            log.warning("could not read GPU memory on node", node=node_id, error=str(exc))
            return []

    def capacity(self) -> dict[str, Any]:
        with self._lock:
            return self._capacity()

    def check(self, resources: dict[str, Any]) -> str | None:
        if not self._started:
            import ray
            if not ray.is_initialized():
                return None          # nothing to compare with until start() joins a cluster
            self.refresh(force=True)
        else:
            self.refresh()
        with self._lock:
            return self._ledger.impossible(resources)

    def describe(self) -> dict[str, Any]:
        self.refresh()
        with self._lock:
            running: dict[str, int] = {}
            for job in self._jobs.values():
                if isinstance(job.grant, Placement):
                    running[job.grant.node_id] = running.get(job.grant.node_id, 0) + 1
            nodes = self._ledger.snapshot()
            placed = sum(running.values())
            for n in nodes:
                n["running_gpu_tasks"] = running.get(n["node_id"], 0)
            return {"executor": self.name, "capacity": self._capacity(),
                    "running": len(self._jobs), "running_cpu_tasks": len(self._jobs) - placed,
                    "nodes": nodes}

    def _capacity(self) -> dict[str, Any]:
        alive = self._ledger.alive()
        return {"cpu": self._cpu_total, "mem": self._mem_total,
                "gpu": float(sum(len(n.gpus) for n in alive)), "nodes": len(alive)}

    # ------------------------------------------------------------------ admission
    def try_reserve(self, resources: dict[str, Any]) -> Any:
        cpu, mem = float(resources.get("cpu") or 0.0), int(resources.get("mem") or 0)
        gpu = float(resources.get("gpu") or 0.0)
        self.refresh()      # CPU work too: nodes that joined or left change what can start
        with self._lock:
            room = 1.0 + self._depth()
            if self._cpu_held + cpu > self._cpu_total * room + 1e-9 and self._cpu_held > 0:
                return False
            if mem and self._mem_total and self._mem_held + mem > self._mem_total and self._mem_held:
                return False
            grant: Any = True
            if gpu > 0:
                grant = self._ledger.place(resources)
                if grant is None:
                    return False
            self._cpu_held += cpu
            self._mem_held += mem
            return grant

    def _depth(self) -> float:
        """Tasks to queue in Ray per CPU: about PIPELINE_S of work, within [min(1, prefetch), prefetch]."""
        cap = self.cfg.prefetch
        if self._avg_s is None:
            return min(1.0, cap)
        return min(cap, max(1.0, PIPELINE_S / max(self._avg_s, 1e-6)))

    def release(self, resources: dict[str, Any], grant: Any = True) -> None:
        with self._lock:
            self._release_unlocked(float(resources.get("cpu") or 0.0), int(resources.get("mem") or 0),
                                   grant)

    def _release_unlocked(self, cpu: float, mem: int, grant: Any) -> None:
        self._cpu_held = max(0.0, self._cpu_held - cpu)
        self._mem_held = max(0, self._mem_held - mem)
        if isinstance(grant, Placement):
            self._ledger.free(grant)

    # ------------------------------------------------------------------ work
    def _remote_for(self, func: Any, opts: dict[str, Any], batch: bool = False) -> Any:
        """The Ray remote function running ``func`` (or a fused batch of its calls) with these
        options, exported once and kept (Ray validates options on every ``.options()`` call: a
        cost per task worth saving)."""
        with self._remote_lock:
            return self._remote_for_unlocked(func, opts, batch)

    def _remote_for_unlocked(self, func: Any, opts: dict[str, Any], batch: bool) -> Any:
        import ray
        strategy = opts.get("scheduling_strategy")
        key = (id(func), batch, opts["num_cpus"], opts.get("memory"), opts.get("num_gpus"),
               tuple(sorted(opts.get("resources", {}).items())),
               strategy.node_id if strategy is not None else None)
        hit = self._remotes.get(key)
        if hit is not None and hit[0] is func:
            self._remotes.move_to_end(key)
            return hit[1]
        # GPU tasks get a worker process each (max_calls=1, as Ray's own GPU functions): a
        # process keeps the CUDA context of the device it saw first, whatever
        # CUDA_VISIBLE_DEVICES says later, and its allocator's memory, which the ledger counts free.
        # max_calls is fixed at ray.remote, not per .options(): a separate function for GPU work.
        gpu = bool(opts.get("num_gpus") or opts.get("resources"))   # resources: GPU devices
        base_key = (id(func), batch, gpu)
        base = self._remotes.get(base_key)
        if base is None or base[0] is not func:
            extra = {"max_calls": 1} if gpu else {}
            make = make_batch_body if batch else make_body
            base = (func, ray.remote(max_retries=0, **extra)(make(func, self._inline_limit)))
            self._remotes[base_key] = base
        remote = base[1].options(**opts)
        self._remotes[key] = (func, remote)
        while len(self._remotes) > REMOTE_CACHE:
            self._remotes.popitem(last=False)
        return remote

    def submit(self, invocation: Invocation) -> None:
        if not self._started:
            raise RuntimeError("the Ray executor is not started")
        self._submit([invocation])

    def submit_many(self, invocations: list[Invocation]) -> list[tuple[Invocation, Exception]]:
        """Submit one engine turn's invocations, fusing tiny ones: calls of a tool that takes
        well under a millisecond (learned from its runs here) go to Ray in batches, one Ray task
        running several calls one after another, so Ray's cost per task (a millisecond or so of
        scheduling, leasing and messages) is paid once per batch. Only first attempts of
        CPU-only tasks without a timeout are fused, in order, with enough batches to keep
        every CPU busy."""
        if not self._started:
            return [(inv, RuntimeError("the Ray executor is not started")) for inv in invocations]
        groups: dict[tuple, list[Invocation]] = {}
        means: dict[tuple, float] = {}
        order: list[Any] = []          # an invocation, or the key of a group, at its first place
        for inv in invocations:
            found = self._fusable(inv)
            if found is None:
                order.append(inv)
                continue
            key = found[:3]
            if key not in groups:
                groups[key] = []
                means[key] = found[3]
                order.append(key)
            groups[key].append(inv)
        refused: list[tuple[Invocation, Exception]] = []
        for item in order:
            units = [[item]] if isinstance(item, Invocation) else self._split(groups[item], means[item])
            for unit in units:
                try:
                    self._submit(unit)
                except Exception as exc:  # noqa: BLE001 - the engine records it for each of them
                    refused.extend((inv, exc) for inv in unit)
        return refused

    def _fusable(self, inv: Invocation) -> tuple | None:
        """The group a fusable invocation joins, or None."""
        if not self.cfg.fuse or inv.attempt != 1 or inv.held:
            return None
        if inv.timeout is not None:
            # a call's time would count from its batch's start, and a call queued behind a hung
            # one in its batch would time out with it, though it never ran
            return None
        if inv.grant is not True or inv.resources.get("gpu"):
            return None
        cpu = float(inv.resources.get("cpu") or 0.0)
        if cpu > 1:
            return None
        seen = self._fn_stats.get(inv.func)
        if seen is None or seen[0] < FUSE_MIN_SEEN or seen[1] >= FUSE_BELOW_S:
            return None
        return (id(inv.func), cpu, int(inv.resources.get("mem") or 0), seen[1])

    def _split(self, group: list[Invocation], avg: float) -> list[list[Invocation]]:
        """Batches of a fusable group of calls taking ``avg`` seconds: about FUSE_SPAN_S of work
        each, at most FUSE_MAX calls, and at least as many batches as there are CPUs (when there
        are enough calls)."""
        size = min(FUSE_MAX, max(1, int(FUSE_SPAN_S / max(avg, 1e-6))),
                   max(1, math.ceil(len(group) / max(1.0, self._cpu_total))))
        return [group[i:i + size] for i in range(0, len(group), size)]

    def _submit(self, invs: list[Invocation], announced: bool = False,
                replacing: _Job | None = None) -> None:
        """One Ray task for ``invs``: a single invocation, or a fused batch of one function's.
        ``replacing``: the placeholder a rerun call holds its place with (see ``_resubmit``)."""
        inv = invs[0]
        res = inv.resources
        grant = inv.grant
        cpu, mem = float(res.get("cpu") or 0.0), int(res.get("mem") or 0)
        opts: dict[str, Any] = {"num_cpus": cpu}
        if mem:
            opts["memory"] = mem_bytes(mem)
        ctx = _context(inv)
        worker: dict[str, Any] = {"executor": self.name}
        if isinstance(grant, Placement):
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            opts["num_gpus"] = grant.num_gpus
            if grant.ray_mb:            # a per-device node: Ray books exactly these devices' MB
                opts["resources"] = grant.ray_resources
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(grant.node_id, soft=False)
            ctx["cuda"] = grant.cuda_visible_devices
            worker.update(node_id=grant.node_id, gpus=list(grant.gpus), gpu_share=grant.share)
        members = None
        pickling.sync()
        # a call is one argument, (inputs, context): Ray pays per argument it serialises
        if len(invs) > 1:
            members = invs
            worker["fused"] = len(invs)
            remote = self._remote_for(inv.func, opts, batch=True)
            ref = remote.remote([(i.kwargs, _context(i)) for i in invs])
        else:
            remote = self._remote_for(inv.func, opts)
            if inv.held:   # upstream results in Ray's store: top-level arguments, fetched by Ray
                index = {h: i for i, h in enumerate(dict.fromkeys(inv.held))}
                kwargs = map_picks(inv.kwargs, lambda p: Pick(index[p.handle], p.path, p.ref))
                ref = remote.remote((kwargs, ctx), *index)
            else:
                ref = remote.remote((inv.kwargs, ctx))
        job = _Job(inv, ref, grant, cpu, mem, worker, members=members)
        with self._lock:
            # shut down meanwhile, or a rerun call cancelled while it was being submitted again
            stale = not self._started or (replacing is not None and self._jobs.get(job.key) is not replacing)
            if not stale:
                for key in job.keys():
                    self._jobs[key] = job
                if announced:            # rerun: the engine already knows it started
                    self._mark_started(job)
                    started = []
                elif not self._backlog and self._fits_now(cpu):
                    self._mark_started(job)
                    started = [job]
                else:
                    self._backlog[job.key] = job
                    started = []
        if stale:
            self._kill(job)
            return
        self._announce(started)   # before the results thread may see it: its start comes first
        with self._lock:
            self._waiting[ref] = job
        self._wake.set()

    def _collect(self) -> None:
        """The results thread: waits on every submitted task's reference at once and hands the
        ends to ``_done`` in batches (cheaper than a callback per task under load)."""
        import ray
        while True:
            with self._lock:
                refs = list(self._waiting)
                if not refs and not self._started:
                    return
            if not refs:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._wake.clear()
            try:
                ready, rest = ray.wait(refs, num_returns=1, timeout=COLLECT_WAIT_S, fetch_local=True)
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=True)
                    ready += more
            except Exception as exc:  # noqa: BLE001 - Ray is shutting down
                if not self._started:
                    return
                log.warning("waiting on Ray tasks failed", error=str(exc))
                time.sleep(0.05)
                continue
            if not ready:
                continue
            with self._lock:
                jobs = [self._waiting.pop(r) for r in ready if r in self._waiting]
            try:
                outcomes = [(v, None) for v in ray.get([j.ref for j in jobs])]
            except Exception:  # noqa: BLE001 - one of them failed: take them one by one
                outcomes = []
                for j in jobs:
                    try:
                        outcomes.append((ray.get(j.ref), None))
                    except Exception as exc:  # noqa: BLE001 - the attempt's failure
                        outcomes.append((None, exc))
            for job, (value, exc) in zip(jobs, outcomes, strict=True):
                try:
                    self._done(job, value, exc)
                except Exception as err:  # noqa: BLE001 - this thread reports every task: live on
                    log.exception("could not report a Ray task's end", task_id=job.inv.task_id)
                    if self._report is not None:   # an end the engine already has is ignored there
                        for inv in job.members or [job.inv]:
                            self._report(TaskUpdate(
                                inv.run_id, inv.task_id, inv.attempt, "failed",
                                error=f"MazeInternalError: {type(err).__name__}: {err}"))

    def _fits_now(self, cpu: float) -> bool:
        return self._cpu_running + cpu <= self._cpu_total + 1e-9 or self._cpu_running == 0

    def _mark_started(self, job: _Job) -> None:
        job.started = True
        self._cpu_running += job.cpu

    def _promote(self) -> list[_Job]:
        """Backlog jobs that now have CPUs to run on, in order (a job that does not fit yet lets
        smaller ones after it go first, as Ray's own queue does)."""
        started = []
        for key, job in list(self._backlog.items()):
            if self._fits_now(job.cpu):
                del self._backlog[key]
                self._mark_started(job)
                started.append(job)
            elif self._cpu_running >= self._cpu_total - 1e-9:
                break
        return started

    def _announce(self, jobs: list[_Job]) -> None:
        """Report the start of every call of these jobs. A call cancelled or rerun meanwhile
        still gets it: the engine ignores a start it already has or that comes after the end."""
        for job in jobs:
            self._report_started(job.members or [job.inv], job.worker)

    def _take_job(self, job: _Job, only: set[tuple[str, str]] | None = None
                  ) -> tuple[list[Invocation], list[_Job]]:
        """Remove a job's invocations (those in ``only``, if given) that nobody removed yet,
        releasing what they held; returns them, and the backlog jobs that can start now."""
        with self._lock:
            taken = [inv for inv in job.members or [job.inv]
                     if self._jobs.get((inv.run_id, inv.task_id)) is job
                     and (only is None or (inv.run_id, inv.task_id) in only)]
            for inv in taken:
                del self._jobs[(inv.run_id, inv.task_id)]
                self._release_unlocked(job.cpu, job.mem, job.grant)
            if not taken or any(self._jobs.get(k) is job for k in job.keys()):
                return taken, []          # members of the batch are still live: it holds its CPU
            if job.started:
                self._cpu_running = max(0.0, self._cpu_running - job.cpu)
            else:
                self._backlog.pop(job.key, None)
            return taken, self._promote()

    def _done(self, job: _Job, outcome: Any, exc: BaseException | None) -> None:
        taken, promoted = self._take_job(job)
        if not taken:
            return
        if not job.started:        # Ray ran it before our books said so: its start comes first
            job.started = True
            self._report_started(taken, job.worker)
        self._announce(promoted)
        if exc is not None and job.members:
            # the batch's worker died (or the batch failed as a whole): run each call on its own,
            # so a call that takes its process down fails alone and the others are not charged
            log.warning("a fused batch failed; running its tasks one by one", tasks=len(taken),
                        error=str(exc).strip().splitlines()[:1])
            self._resubmit(taken)
            return
        outcomes = outcome if job.members else [outcome]
        by_key = {(inv.run_id, inv.task_id): out
                  for inv, out in zip(job.members or [job.inv], outcomes, strict=True)}
        assert self._report is not None
        for inv in taken:
            self._report(self._update(job, inv, by_key[(inv.run_id, inv.task_id)], exc))

    def _update(self, job: _Job, inv: Invocation, outcome: Any, exc: BaseException | None) -> TaskUpdate:
        if exc is not None:        # Ray's failure becomes the attempt's failure
            kind = _failure_name(exc)
            if kind == "WorkerLost":
                self._refreshed_at = 0.0     # re-read the nodes before the next placement
            import ray.exceptions as rex
            cause = exc.cause if isinstance(exc, rex.RayTaskError) and exc.cause is not None else None
            if cause is not None and kind not in ("WorkerLost", "Cancelled"):
                error = describe(cause)     # the real exception, not Ray's wrapper around it
            else:
                lines = plain(str(exc)).strip().splitlines()
                error = f"{kind}: {lines[0] if lines else kind}"
            return TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed", error=error,
                              traceback=plain("".join(traceback.format_exception(exc))),
                              lost_input=bool(inv.held) and isinstance(exc, rex.ObjectLostError))
        took = outcome[3]
        if outcome[0] == "ok" or outcome[4]:     # the body ran (not an input that did not resolve)
            self._learn(inv.func, took)
        if outcome[0] == "ok":
            fields = outcome[1]
            handle = job.ref if "result_ref" in fields and not job.members else None
            return TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "succeeded",
                              encoded=(fields, outcome[2]), duration_s=took, handle=handle)
        return TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed", error=outcome[1],
                          traceback=outcome[2], duration_s=took, retryable=outcome[4])

    def _learn(self, func: Any, took: float) -> None:
        """Task durations: the mean over all (admission depth) and per function (fusion)."""
        self._avg_s = took if self._avg_s is None else self._avg_s + 0.1 * (took - self._avg_s)
        stats = self._fn_stats.get(func)
        if stats is None:
            self._fn_stats[func] = [1, took]
            while len(self._fn_stats) > REMOTE_CACHE:
                self._fn_stats.popitem(last=False)
        else:
            self._fn_stats.move_to_end(func)
            stats[0] += 1
            stats[1] += (took - stats[1]) * (0.5 if stats[0] <= FUSE_MIN_SEEN else 0.1)

    def _report_started(self, invs: list[Invocation], worker: dict[str, Any]) -> None:
        assert self._report is not None
        for inv in invs:
            self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "started", worker=worker))

    def _resubmit(self, invs: list[Invocation], announced: bool = True) -> None:
        """Run the calls of a batch that was stopped or lost, each on its own. They take their
        reservations again at once (they were admitted before), held by placeholders, so that a
        cancel arriving while the others are being submitted finds its call."""
        holders = []
        with self._lock:
            if not self._started:
                return           # shutting down: nothing more starts
            for inv in invs:
                holder = _Job(inv, None, True, float(inv.resources.get("cpu") or 0.0),
                              int(inv.resources.get("mem") or 0), {})
                self._jobs[holder.key] = holder
                self._cpu_held += holder.cpu
                self._mem_held += holder.mem
                holders.append(holder)
        for holder in holders:
            try:
                self._submit([holder.inv], announced=announced, replacing=holder)
            except Exception as exc:  # noqa: BLE001 - Ray refused it: the attempt fails
                taken, promoted = self._take_job(holder)
                inv = holder.inv
                if taken and self._report is not None:
                    self._report(TaskUpdate(inv.run_id, inv.task_id, inv.attempt, "failed",
                                            error=f"{type(exc).__name__}: executor refused the task: {exc}"))
                self._announce(promoted)

    def cancel(self, run_id: str, task_id: str) -> None:
        self.cancel_many([(run_id, task_id)])

    def cancel_many(self, tasks: list[tuple[str, str]]) -> None:
        """Stop these calls. A fused batch is stopped once, whatever how many of its calls go; its
        other calls, if any, then run on their own (so that a cancelled call cannot hold them up;
        one that already ran may run again)."""
        wanted = set(tasks)
        with self._lock:
            jobs = {id(j): j for j in (self._jobs.get(key) for key in tasks) if j is not None}
        for job in jobs.values():
            taken, promoted = self._take_job(job, only=wanted)
            if not taken:
                continue
            others: list[Invocation] = []
            if job.members:
                with self._lock:
                    announced = job.started
                others, more = self._take_job(job)
                promoted += more
            self._kill(job)
            self._announce(promoted)
            if others:
                self._resubmit(others, announced)

    @staticmethod
    def _kill(job: _Job, recancel: bool = True) -> None:
        import ray
        if job.ref is None:        # a placeholder: nothing was submitted
            return
        try:
            ray.cancel(job.ref, force=True)
        except Exception as exc:  # noqa: BLE001 - it may have ended meanwhile
            log.debug("cancel failed", error=str(exc))
        if recancel:
            threading.Thread(target=_ensure_cancelled, args=([job.ref], RECANCEL_S),
                             name="maze-ray-cancel", daemon=True).start()


def _ensure_cancelled(refs: list[Any], limit_s: float) -> None:
    """Repeat ``ray.cancel`` until the tasks have ended (or ``limit_s`` passed): a cancel that
    reaches a task while Ray is still starting its worker can be lost, and the body would then
    run; once it runs, a forced cancel kills its worker."""
    import ray
    deadline = time.monotonic() + limit_s
    pending = [r for r in refs if r is not None]
    while pending and time.monotonic() < deadline:
        try:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2, fetch_local=False)
            for ref in pending:
                ray.cancel(ref, force=True)
        except (Exception, SystemExit):  # noqa: BLE001 - Ray is going away (its calls then raise
            return                       # SystemExit): nothing left to cancel

