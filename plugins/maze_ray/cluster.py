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

from .bootstrap import GPU_MEM_LABEL, device_resources, use_cluster_token


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


# ---------------------------------------------------------------------------- no cluster: this machine
START_HINT = ("Runs need no cluster: each `maze run` starts an embedded Ray on this machine. To keep "
              "one running and let other machines join: `maze start --head` here, then "
              "`maze worker --address HOST:6379` on each other machine.")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_mb() -> int | None:
    """Physical memory in MB: psutil if installed, else /proc/meminfo, else sysconf."""
    try:
        import psutil
        return int(psutil.virtual_memory().total // 2**20)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (AttributeError, OSError, ValueError):
        return None


def _gpus() -> tuple[list[dict], str]:
    """This machine's GPUs by nvidia-smi (index, name, memory), and how they were found."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append({"index": int(parts[0]), "name": parts[1],
                         "memory_mb": int(parts[2]) if parts[2].isdigit() else None})
    return gpus, "nvidia-smi"


def this_machine(num_cpus: float = 0, num_gpus: int = -1, gpu_mem_mb: list[int] | None = None) -> dict:
    """This machine as the embedded executor would use it (``[ray] num_cpus``, ``num_gpus``,
    ``gpu_mem_mb`` applied), read without starting Ray: CPUs, memory (MB) and GPUs."""
    import socket
    gpus, found_by = _gpus()
    if num_gpus >= 0 and num_gpus != len(gpus):    # [ray] num_gpus sets (or fakes) the count
        gpus = [gpus[i] if i < len(gpus) else {"index": i, "name": "configured", "memory_mb": None}
                for i in range(num_gpus)]
        found_by = "[ray] num_gpus"
    if gpu_mem_mb:
        for i, gpu in enumerate(gpus):
            if gpu["memory_mb"] is None:
                gpu["memory_mb"] = gpu_mem_mb[0] if len(gpu_mem_mb) == 1 else (
                    gpu_mem_mb[i] if i < len(gpu_mem_mb) else None)
    return {"host": socket.gethostname(), "cpu": num_cpus or _cpus(), "mem": _memory_mb(),
            "gpus": gpus, "gpus_found_by": found_by}


def print_this_machine(num_cpus: float = 0, num_gpus: int = -1, gpu_mem_mb: list[int] | None = None,
                       as_json: bool = False) -> None:
    """What ``maze cluster`` prints when no Ray cluster runs here: this machine, as a run's
    embedded Ray would use it, and how to start a cluster (as JSON: ``{"cluster": null,
    "this_machine": {...}, "hint": ...}``)."""
    import click
    machine = this_machine(num_cpus, num_gpus, gpu_mem_mb)
    if as_json:
        click.echo(json.dumps({"cluster": None, "this_machine": machine, "hint": START_HINT}, indent=2))
        return
    click.echo(describe_this_machine(machine))


def describe_this_machine(machine: dict) -> str:
    """``this_machine()`` as lines for a person, followed by how to start a cluster."""
    mem = f"{machine['mem']} MB memory" if machine["mem"] is not None else "memory unknown"
    lines = ["no Ray cluster is running here.",
             f"this machine ({machine['host']}), as the embedded executor would use it: "
             f"{machine['cpu']:g} CPUs, {mem}, {len(machine['gpus'])} GPUs"]
    for g in machine["gpus"]:
        gmem = f"{g['memory_mb']} MB" if g["memory_mb"] else "memory unknown"
        lines.append(f"  gpu {g['index']}: {g['name']}, {gmem}")
    if not machine["gpus"]:
        lines.append(f"  (GPUs: {machine['gpus_found_by']})")
    lines.append(START_HINT)
    return "\n".join(lines)
