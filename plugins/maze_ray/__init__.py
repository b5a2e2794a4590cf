"""The Ray executor: task bodies run as Ray tasks on this machine (an embedded Ray, the default
when Ray is importable) or on a cluster (``[ray] address``), with Maze's own GPU ledger for
``gpu_mem`` packing, warm-model affinity and ``CUDA_VISIBLE_DEVICES``. Commands: ``maze worker``
joins a node to a head, ``maze cluster`` shows the nodes."""

from maze_core import hookimpl

from .executor import RayConfig, RayExecutor
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
