"""Starting and stopping Ray nodes for ``maze start --head``, ``maze worker`` and ``maze stop``.

These wrap the ``ray`` command that Ray installs next to the Python interpreter, so a head or a
worker is an ordinary Ray node that outlives the command that started it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from maze_core.errors import MazeError

from .executor import GPU_MEM_LABEL, device_resources, use_cluster_token


class ClusterError(MazeError):
    pass


def _ray_exe() -> str:
    here = Path(sys.executable).with_name("ray")
    if here.exists():
        return str(here)
    found = shutil.which("ray")
    if found is None:
        raise ClusterError("the `ray` command was not found next to this Python; is Ray installed?")
    return found


def _run(args: list[str], timeout: float = 120) -> str:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    use_cluster_token(env)     # a worker joining a token-protected head must present the token
    try:
        proc = subprocess.run([_ray_exe(), *args], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`ray {' '.join(args)}` did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ClusterError(f"`ray {' '.join(args)}` failed: " + " | ".join(tail))
    return proc.stdout


def _devices(num_gpus: int | None, gpu_mem_mb: list[int] | None) -> list[str]:
    """``--resources`` with a Ray resource per GPU (its memory in MB), so that Ray books each
    device's memory as the ledger does; nothing when the GPUs or their memory are unknown."""
    devices = device_resources(num_gpus, gpu_mem_mb)
    return ["--resources", json.dumps(devices)] if devices else []


def _labels(gpu_mem_mb: list[int] | None) -> list[str]:
    if not gpu_mem_mb:
        return []
    return ["--labels", f"{GPU_MEM_LABEL}={','.join(str(m) for m in gpu_mem_mb)}"]


def node_ip() -> str:
    """This machine's address as other machines would reach it (no packet is sent)."""
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"


def start_head(port: int = 6379, *, host: str = "127.0.0.1", num_cpus: float | None = None,
               num_gpus: int | None = None, gpu_mem_mb: list[int] | None = None) -> str:
    """Start a Ray head node on this machine; returns its address (``HOST:PORT``).

    It listens on ``host`` (loopback by default: pass the machine's address to let workers of
    other machines join)."""
    if not 1 <= port <= 65535:
        raise ClusterError(f"--ray-port must be 1..65535, got {port}")
    args = ["start", "--head", f"--port={port}", f"--node-ip-address={host}",
            "--include-dashboard=false", "--disable-usage-stats"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus:g}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    _run([*args, *_labels(gpu_mem_mb), *_devices(num_gpus, gpu_mem_mb)])
    return f"{host}:{port}"


def start_worker(address: str, *, num_cpus: float | None = None, num_gpus: int | None = None,
                 gpu_mem_mb: list[int] | None = None, node_ip: str | None = None) -> None:
    """Join this machine to the Ray head at ``address`` as a worker node."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address must be HOST:PORT, got {address!r}")
    args = ["start", f"--address={address}", "--disable-usage-stats"]
    if node_ip:
        args.append(f"--node-ip-address={node_ip}")
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus:g}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    _run([*args, *_labels(gpu_mem_mb), *_devices(num_gpus, gpu_mem_mb)])


def stop_ray() -> None:
    """Stop every Ray node started on this machine (``ray stop``)."""
    _run(["stop"])
