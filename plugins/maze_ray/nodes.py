"""The executor's view of the cluster's nodes: re-read from Ray at most every ``REFRESH_S`` (or
when forced, or after a worker was lost), each node's CPUs, memory and GPUs, with each GPU's
memory from Ray's per-device resources, a node label, ``[ray] gpu_mem_mb``, or nvidia-smi run on
the node. Turning Ray's description of a node into the ledger's ``Node`` is pure (``node_from``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from .bootstrap import GPU_MEM_LABEL, _read_gpu_memory
from .config import RayConfig
from .ledger import Gpu, Node, device_resource

log = structlog.get_logger("maze.ray")

REFRESH_S = 2.0                         # how often the view of the cluster is re-read when busy

GpuMemory = Callable[[str, int, dict[str, str], bool], list[int]]


def node_from(info: dict[str, Any], gpu_memory: GpuMemory) -> Node:
    """The ledger's node for one entry of ``ray.nodes()``. Where Ray keeps per-device books of
    memory (``maze_gpu<i>_mb``), they are the GPUs' memory; else ``gpu_memory(node_id, gpus,
    labels, alive)`` says."""
    res = info.get("Resources") or {}
    labels = info.get("Labels") or {}
    nid = info["NodeID"]
    n_gpu = int(res.get("GPU", 0))
    per_device = [res.get(device_resource(i)) for i in range(n_gpu)]
    exact = n_gpu > 0 and all(per_device)     # Ray keeps per-device books of memory
    mems = ([int(m) for m in per_device] if exact
            else gpu_memory(nid, n_gpu, labels, info.get("Alive", False)))
    return Node(nid, info.get("NodeManagerAddress", ""), float(res.get("CPU", 0)),
                int(res.get("memory", 0) // (1024 * 1024)),
                [Gpu(i, mems[i] if i < len(mems) else 0) for i in range(n_gpu)],
                bool(info.get("Alive")), dict(labels), exact)


def configured_memory(n_gpu: int, labels: dict[str, str], gpu_mem_mb: list[int]) -> list[int] | None:
    """Each GPU's memory (MB) as the node's label (``maze.gpu_mem_mb``) or else ``[ray]
    gpu_mem_mb`` says (one value for every GPU, or one per GPU); None when neither does."""
    label = labels.get(GPU_MEM_LABEL)
    if label:
        try:
            mems = [int(float(p)) for p in label.split(",") if p.strip()]
        except ValueError:
            mems = []
        if mems:
            return mems * n_gpu if len(mems) == 1 else mems
    if gpu_mem_mb:
        mems = list(gpu_mem_mb)
        return mems * n_gpu if len(mems) == 1 else mems
    return None


class NodeView:
    """Reads the nodes from Ray; ``refresh`` hands them to the executor's books."""

    def __init__(self, cfg: RayConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()   # one read at a time: an older view must not land after a newer one
        self._refreshed_at = 0.0
        self._probed: dict[str, list[int]] = {}

    def stale(self) -> None:
        """Re-read the nodes before the next placement (a worker or node was lost)."""
        self._refreshed_at = 0.0

    def refresh(self, apply: Callable[[list[Node]], list[str]], force: bool = False) -> list[str]:
        """Re-read the nodes (at most every REFRESH_S unless forced) and ``apply`` them; returns
        what ``apply`` returns (the ids of nodes that left), [] when it was not time yet."""
        if not force and time.monotonic() - self._refreshed_at < REFRESH_S:
            return []
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed_at < REFRESH_S:
                return []           # another thread just did it
            import ray
            self._refreshed_at = now
            return apply([node_from(info, self._gpu_memory) for info in ray.nodes()])

    def _gpu_memory(self, node_id: str, n_gpu: int, labels: dict[str, str], alive: bool) -> list[int]:
        if not n_gpu:
            return []
        mems = configured_memory(n_gpu, labels, self.cfg.gpu_mem_mb)
        if mems is not None:
            return mems
        if not (self.cfg.probe_gpus and alive):
            return []
        if node_id not in self._probed:
            self._probed[node_id] = self._probe(node_id)
        return self._probed[node_id]

    @staticmethod
    def _probe(node_id: str) -> list[int]:
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
