"""The GPU ledger: which GPU of which node holds how much of whose memory.

Ray counts GPUs, and packs fractional requests onto one device without looking at memory (four
``num_gpus=0.5`` tasks all saw GPU 0 of two). Maze decides the device itself, here, from each
device's memory, and pins the task to its node; Ray's own count follows the same decision.

Rules, for a task's canonical resources (``maze_core.resources.normalize``):

- ``gpu_mem > 0`` and ``gpu <= 1``: the task shares a device by memory. It fits a device whose free
  memory is at least ``gpu_mem`` (two 6,000 MB tasks never share a 10,000 MB GPU, two of 4,000 MB
  may). Its share of the device, for Ray, is ``gpu_mem / device memory`` (or ``gpu`` if that is
  smaller than 1 and larger).
- ``gpu >= 1`` (whole) without ``gpu_mem``, or ``gpu > 1``: whole devices, each untouched by others
  (and each with ``gpu_mem`` free if given).
- ``0 < gpu < 1`` without ``gpu_mem``: a fraction of one device.
- A device whose memory is unknown (no reading, no label, no config) is shared by fraction only.

Placement prefers, in order: the device where the task's ``model_name`` ran last (a warm model),
then the device that the task fills best (packing, so large requests still find room).

What Ray is told: on a node that offers a Ray resource per device (``maze_gpu<i>_mb``, its memory
in MB: Maze's own ``maze start --head``, ``maze worker`` and embedded Ray add them), the task asks
for megabytes on exactly the devices chosen (its ``gpu_mem``, a whole device's memory, or its
share of the memory rounded up), and the ledger also keeps the sum asked of Ray per device, so a
placement it makes always fits Ray's books.
Elsewhere it asks for ``num_gpus`` (whole devices, or one device's share), and Ray picks the
device in its own books: mostly the same, but not when a warm model chose another device, and
Ray may then queue a task that the ledger has room for.
This module is pure Python: no Ray, so it is tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

EPS = 1e-6


def device_resource(index: int) -> str:
    """The Ray resource naming one GPU's memory in MB on a node that offers per-device resources."""
    return f"maze_gpu{index}_mb"


@dataclass(slots=True)
class Gpu:
    index: int
    memory_mb: int = 0            # 0: unknown
    used_frac: float = 0.0        # sum of granted shares (<= 1)
    used_mb: int = 0              # sum of granted gpu_mem
    holders: int = 0              # tasks holding a share
    ray_mb: int = 0               # per-device node: sum of the MB asked of Ray (its books)

    def free_mb(self) -> int:
        return self.memory_mb - self.used_mb


@dataclass(slots=True)
class Node:
    node_id: str
    address: str = ""
    cpu: float = 0.0
    mem: int = 0                  # MB (Ray's logical "memory" resource)
    gpus: list[Gpu] = field(default_factory=list)
    alive: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    exact: bool = False           # the node offers a Ray resource per device (device_resource)


@dataclass(frozen=True, slots=True)
class Placement:
    """A grant: the node a GPU task is pinned to, its devices, and its share of each."""

    node_id: str
    gpus: tuple[int, ...]
    share: float                  # of each device (1.0: whole)
    mem_mb: int                   # gpu_mem held on each device
    model_name: str | None = None
    ray_mb: tuple[int, ...] = ()  # per-device node: the MB of each device to ask Ray for

    @property
    def ray_resources(self) -> dict[str, int]:
        """Custom Ray resources to ask for (per-device nodes), else {}."""
        if not self.ray_mb:
            return {}
        return {device_resource(i): mb for i, mb in zip(self.gpus, self.ray_mb, strict=True)}

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(i) for i in self.gpus)

    @property
    def num_gpus(self) -> float:
        """What Ray is asked for: nothing on a per-device node (``ray_resources`` says it all),
        else whole devices, or one device's share."""
        if self.ray_mb:
            return 0.0
        return float(len(self.gpus)) if self.share >= 1 else self.share


def _wants(resources: dict[str, Any]) -> tuple[float, int]:
    return float(resources.get("gpu") or 0.0), int(resources.get("gpu_mem") or 0)


def _hosts(node: Node, cpu: float, mem: int) -> bool:
    """Whether the node could ever run a task of these CPUs and memory (MB)."""
    return node.cpu + EPS >= cpu and (not mem or node.mem >= mem)


class GpuLedger:
    """Not thread-safe: the executor calls it under its own lock."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self._homes: dict[str, tuple[str, int]] = {}   # model_name -> (node, device) it ran on last

    # ------------------------------------------------------------------ nodes
    def set_nodes(self, nodes: list[Node]) -> list[str]:
        """Replace the view of the cluster; devices of nodes still present keep their holdings.
        Returns the ids of nodes that left (or died)."""
        gone = [nid for nid, n in self.nodes.items() if n.alive and
                not any(m.node_id == nid and m.alive for m in nodes)]
        fresh: dict[str, Node] = {}
        for node in nodes:
            old = self.nodes.get(node.node_id)
            if old is not None and old.alive and node.alive:
                held = {g.index: g for g in old.gpus}
                for g in node.gpus:
                    prev = held.get(g.index)
                    if prev is not None:
                        g.used_frac, g.used_mb, g.holders = prev.used_frac, prev.used_mb, prev.holders
                        g.ray_mb = prev.ray_mb
            fresh[node.node_id] = node
        self.nodes = fresh
        for model, (nid, _) in list(self._homes.items()):
            if nid in gone:
                del self._homes[model]
        return gone

    def alive(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive]

    # ------------------------------------------------------------------ feasibility
    def impossible(self, resources: dict[str, Any]) -> str | None:
        """Why no node of the cluster could ever run this request, or None."""
        gpu, gpu_mem = _wants(resources)
        cpu, mem = float(resources.get("cpu") or 0.0), int(resources.get("mem") or 0)
        nodes = self.alive()
        if not nodes:
            return "the Ray cluster has no live node"
        if not any(n.cpu + EPS >= cpu for n in nodes):
            return (f"needs {cpu:g} CPUs on one node; the largest node has "
                    f"{max(n.cpu for n in nodes):g}")
        if mem and not any(n.mem >= mem for n in nodes if n.cpu + EPS >= cpu):
            return (f"needs {mem} MB of memory on one node; the largest node offers "
                    f"{max(n.mem for n in nodes)} MB to Ray")
        if gpu <= 0:
            return None
        need = max(1, int(round(gpu))) if gpu >= 1 else 1
        best_count = max(len(n.gpus) for n in nodes)
        if best_count < need:
            have = "no GPU" if best_count == 0 else f"at most {best_count} GPU(s) on one node"
            return f"needs {need} GPU(s) on one node; the cluster has {have}"
        # the task is pinned to the node of its GPUs: that node must also have its CPUs and memory
        nodes = [n for n in nodes if _hosts(n, cpu, mem)]
        if not any(len(n.gpus) >= need for n in nodes):
            return (f"needs {need} GPU(s) with {cpu:g} CPUs" + (f" and {mem} MB" if mem else "")
                    + " on one node; no GPU node has that much")
        if gpu_mem:
            def fits(g: Gpu) -> bool:
                return g.memory_mb == 0 or g.memory_mb >= gpu_mem
            if not any(sum(1 for g in n.gpus if fits(g)) >= need for n in nodes):
                largest = max((g.memory_mb for n in nodes for g in n.gpus), default=0)
                return (f"needs {gpu_mem} MB of GPU memory on {need} GPU(s); the largest GPU has "
                        f"{largest} MB")
        return None

    # ------------------------------------------------------------------ placement
    def place(self, resources: dict[str, Any]) -> Placement | None:
        """Choose a node and devices for a GPU request now, and hold them; None if nothing fits
        at the moment."""
        gpu, gpu_mem = _wants(resources)
        model = resources.get("model_name")
        cpu = float(resources.get("cpu") or 0.0)
        by_memory = gpu_mem > 0 and gpu <= 1
        whole = not by_memory and gpu >= 1
        need = int(round(gpu)) if whole else 1
        best: tuple[tuple, Placement] | None = None
        home = self._homes.get(model) if model else None
        mem = int(resources.get("mem") or 0)
        for node in self.alive():
            if not _hosts(node, cpu, mem):
                continue
            if whole:
                free = [g for g in node.gpus if g.holders == 0 and g.used_frac < EPS and g.ray_mb == 0
                        and (g.memory_mb == 0 or g.memory_mb >= gpu_mem)]
                if len(free) < need:
                    continue
                # prefer the warm device, then the smallest devices that fit (keep big ones free)
                free.sort(key=lambda g: ((node.node_id, g.index) != home, g.memory_mb, g.index))
                chosen = free[:need]
                warm = home is not None and any((node.node_id, g.index) == home for g in chosen)
                key = (not warm, sum(g.memory_mb for g in chosen), node.node_id)
                chosen.sort(key=lambda g: g.index)
                cand = Placement(node.node_id, tuple(g.index for g in chosen), 1.0, gpu_mem, model,
                                 tuple(g.memory_mb for g in chosen) if node.exact else ())
            else:
                for g in node.gpus:
                    share = self._share(g, gpu, gpu_mem, by_memory)
                    if share is None or g.used_frac + share > 1 + EPS:
                        continue
                    if by_memory and g.memory_mb and g.free_mb() < gpu_mem:
                        continue
                    ray_mb: tuple[int, ...] = ()
                    if node.exact:       # Ray's books must have room too, to the megabyte
                        ray_mb = (max(1, gpu_mem if by_memory else math.ceil(share * g.memory_mb)),)
                        if g.ray_mb + ray_mb[0] > g.memory_mb:
                            continue
                    warm = home == (node.node_id, g.index)
                    left = (g.free_mb() - gpu_mem) if g.memory_mb else 1 << 40
                    key = (not warm, left, 1 - g.used_frac - share, node.node_id, g.index)
                    if best is None or key < best[0]:
                        best = (key, Placement(node.node_id, (g.index,), share, gpu_mem, model, ray_mb))
                continue
            if best is None or key < best[0]:
                best = (key, cand)
        if best is None:
            return None
        self._hold(best[1], +1)
        return best[1]

    @staticmethod
    def _share(g: Gpu, gpu: float, gpu_mem: int, by_memory: bool) -> float | None:
        if by_memory:
            if not g.memory_mb:          # unknown memory: a whole device, to be safe
                return 1.0
            if gpu_mem > g.memory_mb:
                return None
            share = gpu_mem / g.memory_mb
            if 0 < gpu < 1:
                share = max(share, gpu)
            return min(1.0, round(max(share, 1e-4), 4))
        return round(gpu, 4)

    def free(self, placement: Placement) -> None:
        """Give a placement back (the task ended, was cancelled, or never started)."""
        self._hold(placement, -1)

    def _hold(self, p: Placement, sign: int) -> None:
        node = self.nodes.get(p.node_id)
        if node is None:
            return                      # the node left; its devices went with it
        asked = dict(zip(p.gpus, p.ray_mb, strict=True)) if p.ray_mb else {}
        for g in node.gpus:
            if g.index in p.gpus:
                g.used_frac = max(0.0, round(g.used_frac + sign * p.share, 6))
                g.used_mb = max(0, g.used_mb + sign * p.mem_mb)
                g.holders = max(0, g.holders + sign)
                g.ray_mb = max(0, g.ray_mb + sign * asked.get(g.index, 0))
        if sign > 0 and p.model_name:
            self._homes[p.model_name] = (p.node_id, p.gpus[0])

    def home_of(self, model_name: str) -> tuple[str, int] | None:
        return self._homes.get(model_name)

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"node_id": n.node_id, "address": n.address, "alive": n.alive, "cpu": n.cpu,
                 "mem": n.mem, "gpu_accounting": "per-device" if n.exact else "fraction",
                 "gpus": [{"index": g.index, "memory_mb": g.memory_mb, "used_mb": g.used_mb,
                           "used_share": round(g.used_frac, 4), "tasks": g.holders}
                          for g in n.gpus]}
                for n in self.nodes.values()]
