"""The Ray executor: task bodies run as Ray tasks on this machine (an embedded Ray, the default
when Ray is importable) or on a cluster (``[ray] address``), with Maze's own GPU ledger for
``gpu_mem`` packing, warm-model affinity and ``CUDA_VISIBLE_DEVICES``. Commands: ``maze worker``
joins a node to a head, ``maze cluster`` shows the nodes."""

from maze_core import hookimpl

from .config import RayConfig
from .executor import RayExecutor
from .ledger import GpuLedger, Placement

__all__ = ["GpuLedger", "Placement", "RayConfig", "RayExecutor"]


@hookimpl
def register_executors(register):
    register("ray", RayExecutor.from_config)


@hookimpl
def register_config_sections(register):
    register("ray", RayConfig)


@hookimpl
def register_commands(cli):
    from .commands import cluster_cmd, worker_cmd
    cli.add_command(worker_cmd)
    cli.add_command(cluster_cmd)


@hookimpl
def start_cluster_head(config, port, host, server_host):
    """``maze start --head``: a Ray head on this machine (on loopback when the server binds
    loopback, else on this machine's address, so that workers can join), and ``[ray] address``
    pointed at it; ``executor = "local"`` becomes ``"ray"`` (``"auto"`` picks Ray by itself)."""
    from . import cluster
    if host is None:
        host = "127.0.0.1" if cluster.is_loopback(server_host) else cluster.node_ip()
    address = cluster.start_head(port, host=host)
    section = dict(config.section("ray"))
    section["address"] = address
    config.ray = section   # [ray] address: the engine's Ray executor joins this head
    if config.engine.executor == "local":
        config.engine.executor = "ray"
    return address


@hookimpl
def stop_cluster_head(config, address):
    """``maze stop`` after ``maze start --head``: ``ray stop``."""
    from . import cluster
    cluster.stop_ray()
    return True
