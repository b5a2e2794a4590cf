"""``maze worker`` and ``maze cluster``."""

from __future__ import annotations

import json

import click


def _mem_list(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        mems = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter("use MB per GPU, e.g. 24000 or 24000,80000") from None
    if any(m <= 0 for m in mems):
        raise click.BadParameter("GPU memory must be positive MB")
    return mems


@click.command("worker")
@click.option("--address", required=True, help="The head's Ray address, HOST:PORT.")
@click.option("--num-cpus", type=click.FloatRange(min=0), default=None, help="CPUs to offer.")
@click.option("--num-gpus", type=click.IntRange(min=0), default=None, help="GPUs to offer.")
@click.option("--gpu-mem", default=None, help="Memory per GPU in MB where nvidia-smi can't say.")
@click.option("--node-ip", default=None, help="This node's address as the head should see it.")
def worker_cmd(address: str, num_cpus: float | None, num_gpus: int | None, gpu_mem: str | None,
               node_ip: str | None) -> None:
    """Join this machine to a Maze cluster as a worker node."""
    from maze_core.errors import MazeError

    from .cluster import start_worker
    try:
        start_worker(address, num_cpus=num_cpus, num_gpus=num_gpus, gpu_mem_mb=_mem_list(gpu_mem),
                     node_ip=node_ip)
    except MazeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"joined {address}; `maze cluster` lists the nodes, `maze stop` leaves")


@click.command("cluster")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def cluster_cmd(obj, as_json: bool) -> None:
    """Nodes of the cluster: CPUs, memory, GPUs with their memory, and running tasks."""
    from .config import RayConfig
    from .executor import RayExecutor
    cfg = RayConfig.from_config(obj.config)
    embedded = not cfg.address
    if embedded:
        cfg.address = "auto"   # show the cluster this machine belongs to, don't start one
    ex = RayExecutor(cfg)
    try:
        ex.start(lambda update: None)
    except Exception as exc:  # noqa: BLE001 - no cluster to talk to
        if embedded:   # none running: this machine, as a run's embedded Ray would use it
            from .cluster import print_this_machine
            print_this_machine(cfg.num_cpus, cfg.num_gpus, cfg.gpu_mem_mb, as_json=as_json)
            return
        raise click.ClickException(f"no Ray cluster reachable at {cfg.address!r}: {exc}") from None
    try:
        info = ex.describe()
    finally:
        ex.shutdown()
    info["running_tasks"] = _running_tasks(obj)
    for n in info["nodes"]:   # holdings live in the driving engine; this process holds nothing
        for g in n["gpus"]:
            for key in ("used_mb", "used_share", "tasks"):
                g.pop(key, None)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    cap = info["capacity"]
    running = info["running_tasks"]
    click.echo(f"{cap['nodes']} node(s), {cap['cpu']:g} CPUs, {cap['mem']} MB, {cap['gpu']:g} GPUs; "
               f"Maze tasks running: {len(running)}")
    for n in info["nodes"]:
        state = "alive" if n["alive"] else "dead"
        books = f" (Ray books them {n['gpu_accounting']})" if n["gpus"] and "gpu_accounting" in n else ""
        click.echo(f"  {n['node_id'][:12]} {n['address']:<15} {state:<5} cpu={n['cpu']:g} "
                   f"mem={n['mem']}MB gpus={len(n['gpus'])}{books}")
        for g in n["gpus"]:
            mem = f"{g['memory_mb']} MB" if g["memory_mb"] else "memory unknown"
            users = [t for t in running if t["worker"].get("node_id") == n["node_id"]
                     and g["index"] in t["worker"].get("gpus", [])]
            click.echo(f"      gpu {g['index']}: {mem}, running {len(users)} Maze task(s)")
    for t in running:
        where = t["worker"].get("node_id", "")[:12] or "-"
        gpus = ",".join(str(i) for i in t["worker"].get("gpus", [])) or "-"
        click.echo(f"  running: run {t['run_id'][:8]} task {t['task_id']:<8} {t['func_name']:<24} "
                   f"node {where} gpus {gpus} attempt {t['attempt']}")


def _running_tasks(obj) -> list[dict]:
    """Tasks the event log shows running now (the log, not Ray, is the source of truth)."""
    from maze_core import plugins
    try:
        store = plugins.pick("store", obj.config.engine.store)(obj.config)
    except Exception:  # noqa: BLE001 - no store here: nothing to show
        return []
    try:
        rows = [r for r in store.projection_rows("tasks") if r.get("status") == "running"]
    finally:
        store.close()
    out = []
    for r in rows:
        try:
            worker = json.loads(r.get("worker") or "{}")
        except ValueError:
            worker = {}
        out.append({"run_id": r["run_id"], "task_id": r["task_id"], "func_name": r.get("func_name") or "",
                    "attempt": r.get("attempt"), "worker": worker if isinstance(worker, dict) else {}})
    return out
