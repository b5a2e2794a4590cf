"""Starting or joining Ray: the auth token, Ray's logging, the devices of this machine
(nvidia-smi), and ``ray.init`` for the executor. Shared with ``cluster.py`` (``maze start --head``,
``maze worker``), which starts Ray nodes with the same token and devices. Ray is imported only
where it is used."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Any

import structlog

from maze_core.errors import MazeError
from maze_core.logging import adopt_library_logger
from maze_core.resources import mem_bytes

from .config import RayConfig
from .ledger import device_resource

log = structlog.get_logger("maze.ray")

GPU_MEM_LABEL = "maze.gpu_mem_mb"      # node label: memory per GPU in MB ("10000" or "10000,24000")


class ExecutorError(MazeError):
    """The Ray executor cannot work (no cluster at the address, Ray failed to start)."""


def init_ray(ray: Any, cfg: RayConfig) -> None:
    """``ray.init`` as ``[ray]`` says: join the cluster at ``address``, or start an embedded Ray
    with this machine's CPUs and GPUs (each GPU's memory as a Ray resource, see
    ``device_resources``)."""
    quiet_ray_logs()
    common = {"namespace": cfg.namespace, "logging_level": "WARNING", "log_to_driver": True,
              "configure_logging": False}
    if cfg.address:
        check_reachable(cfg.address)
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
    log.info("ray started", address=cfg.address or "embedded", resources=ray.cluster_resources())


# ---------------------------------------------------------------------- the auth token
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


# ---------------------------------------------------------------------- Ray's logging
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


# ---------------------------------------------------------------------- this machine
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


def check_reachable(address: str, timeout: float = 5.0) -> None:
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
