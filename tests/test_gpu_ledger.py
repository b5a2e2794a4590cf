"""The GPU ledger on its own (no Ray): packing by memory, whole devices, fractions, devices of
unknown memory, warm-model affinity, nodes that leave, and impossible requests."""

from __future__ import annotations

import stat

from maze_core.resources import normalize
from maze_ray.bootstrap import _read_gpu_memory
from maze_ray.config import RayConfig
from maze_ray.ledger import Gpu, GpuLedger, Node


def ledger(*nodes: tuple[str, list[int]], cpu: float = 8) -> GpuLedger:
    led = GpuLedger()
    led.set_nodes([Node(nid, "", cpu, 64000, [Gpu(i, m) for i, m in enumerate(mems)])
                   for nid, mems in nodes])
    return led


def test_two_6000_never_share_a_10000_gpu_two_4000_may():
    led = ledger(("a", [10000]))
    first = led.place(normalize({"gpu_mem": 6000}))
    assert first is not None and first.gpus == (0,) and first.share == 0.6
    assert led.place(normalize({"gpu_mem": 6000})) is None
    led.free(first)
    p1, p2 = led.place(normalize({"gpu_mem": 4000})), led.place(normalize({"gpu_mem": 4000}))
    assert p1 and p2 and p1.gpus == p2.gpus == (0,)
    assert led.place(normalize({"gpu_mem": 4000})) is None      # 8,000 of 10,000 MB held
    assert led.nodes["a"].gpus[0].used_mb == 8000


def test_packing_prefers_the_device_the_task_fills_best():
    led = ledger(("a", [24000, 10000]))
    p = led.place(normalize({"gpu_mem": 8000}))
    assert p.gpus == (1,), "an 8,000 MB task goes to the 10,000 MB GPU, keeping the big one free"
    big = led.place(normalize({"gpu_mem": 20000}))
    assert big is not None and big.gpus == (0,)


def test_whole_devices_and_visible_devices():
    led = ledger(("a", [10000, 10000]))
    two = led.place(normalize({"gpu": 2}))
    assert two.gpus == (0, 1) and two.cuda_visible_devices == "0,1" and two.num_gpus == 2.0
    assert led.place(normalize({"gpu": 0.5})) is None
    led.free(two)
    half = led.place(normalize({"gpu": 0.5}))
    assert half.share == 0.5 and half.num_gpus == 0.5
    assert led.place(normalize({"gpu": 2})) is None, "a device holding a share is not whole"
    one = led.place(normalize({"gpu": 1}))
    assert one.gpus == (1,)


def test_unknown_memory_is_not_shared_by_memory():
    led = ledger(("a", [0]))
    p = led.place(normalize({"gpu_mem": 1000}))
    assert p is not None and p.share == 1.0
    assert led.place(normalize({"gpu_mem": 1000})) is None


def test_warm_model_goes_back_to_its_device():
    led = ledger(("a", [10000, 10000]), ("b", [10000]))
    blocker = led.place(normalize({"gpu_mem": 9000}))
    assert blocker.node_id == "a" and blocker.gpus == (0,)
    m = led.place(normalize({"gpu_mem": 3000, "model_name": "llm"}))
    home = (m.node_id, m.gpus[0])
    assert home != ("a", 0)
    led.free(m)
    led.free(blocker)
    again = led.place(normalize({"gpu_mem": 3000, "model_name": "llm"}))
    assert (again.node_id, again.gpus[0]) == home
    assert led.home_of("llm") == home


def test_node_loss_drops_its_devices_and_homes():
    led = ledger(("a", [10000]), ("b", [10000]))
    pa = led.place(normalize({"gpu_mem": 9000, "model_name": "m"}))
    pb = led.place(normalize({"gpu_mem": 9000}))
    keep = pa if pa.node_id == "a" else pb
    gone = "b" if keep is pa else "a"
    nodes = [Node(n.node_id, "", n.cpu, n.mem, [Gpu(g.index, g.memory_mb) for g in n.gpus],
                  alive=n.node_id != gone) for n in led.nodes.values()]
    assert led.set_nodes(nodes) == [gone]
    survivor = led.nodes[keep.node_id].gpus[0]
    assert survivor.used_mb == 9000, "holdings on nodes that stay are kept across a refresh"
    assert all(p.node_id != gone for p in [led.place(normalize({"gpu_mem": 500}))] if p)
    led.free(pa)                               # freeing on a dead node is harmless
    led.free(pb)
    if gone == pa.node_id:
        assert led.home_of("m") is None


def test_impossible_requests_are_named():
    led = ledger(("a", [10000, 10000]), cpu=4)
    assert "20000 MB of GPU memory" in led.impossible(normalize({"gpu_mem": 20000}))
    assert "needs 3 GPU(s)" in led.impossible(normalize({"gpu": 3}))
    assert "8 CPUs" in led.impossible(normalize({"cpu": 8}))
    assert "MB of memory" in led.impossible(normalize({"mem": "100G"}))
    assert led.impossible(normalize({"gpu_mem": 10000, "gpu": 2})) is None
    assert "no GPU" in ledger(("c", [])).impossible(normalize({"gpu": 1}))
    assert "no live node" in GpuLedger().impossible(normalize({}))


def test_gpu_memory_read_with_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _read_gpu_memory() == [], "no nvidia-smi: nothing known"
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, 81559'\necho '1, 40960'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert _read_gpu_memory() == [81559, 40960]
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert _read_gpu_memory() == []


def test_config_toml_documents_every_ray_key():
    import tomllib

    from .conftest import REPO
    with open(REPO / "config.toml", "rb") as fh:
        documented = tomllib.load(fh)["ray"]
    assert set(documented) == set(RayConfig.model_fields)
    assert RayConfig(**documented) == RayConfig()


def test_joining_a_token_protected_head_turns_token_mode_on(tmp_path):
    from maze_ray.bootstrap import use_cluster_token
    token = tmp_path / "auth_token"
    env = {"RAY_AUTH_TOKEN_PATH": str(token)}
    assert not use_cluster_token(env) and "RAY_AUTH_MODE" not in env, "no token: leave Ray alone"
    token.write_text("x" * 32)
    assert use_cluster_token(env) and env["RAY_AUTH_MODE"] == "token"
    explicit = {"RAY_AUTH_TOKEN_PATH": str(token), "RAY_AUTH_MODE": "disabled"}
    assert not use_cluster_token(explicit) and explicit["RAY_AUTH_MODE"] == "disabled"
    assert use_cluster_token({"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})


def test_a_gpu_request_needs_its_cpus_and_memory_on_the_gpu_node_itself():
    """A big CPU-only node and a small GPU node: CPUs or memory that only the CPU node has do not
    make a GPU request possible (it is pinned to a GPU node); it must be refused at once, not wait
    forever, and never be pinned to a node that lacks the memory."""
    led = GpuLedger()
    led.set_nodes([Node("cpu-node", "", 32, 256000, []),
                   Node("gpu-node", "", 4, 16000, [Gpu(0, 10000)])])
    for res in ({"gpu": 1, "cpu": 8}, {"gpu_mem": 4000, "cpu": 8}, {"gpu": 1, "mem": "64G"},
                {"gpu": 0.5, "mem": "64G"}):
        reason = led.impossible(normalize(res))
        assert reason, f"{res} can never run: the GPU node has 4 CPUs and 16,000 MB"
        assert led.place(normalize(res)) is None, res
    assert led.impossible(normalize({"gpu": 1, "cpu": 4, "mem": 16000})) is None
    assert led.place(normalize({"gpu": 1, "cpu": 4, "mem": 16000})) is not None


def test_per_device_nodes_ask_ray_for_exact_megabytes_on_the_chosen_devices():
    exact = GpuLedger()
    exact.set_nodes([Node("a", "", 8, 64000, [Gpu(0, 10000), Gpu(1, 24000)], exact=True)])
    p = exact.place(normalize({"gpu_mem": 6000}))
    assert p.ray_resources == {"maze_gpu0_mb": 6000} and p.num_gpus == 0.0, p
    q = exact.place(normalize({"gpu": 0.25}))
    assert q.ray_resources in ({"maze_gpu0_mb": 2500}, {"maze_gpu1_mb": 6000}), q
    exact.free(p)
    exact.free(q)
    w = exact.place(normalize({"gpu": 2}))
    assert w.ray_resources == {"maze_gpu0_mb": 10000, "maze_gpu1_mb": 24000}, "whole devices"
    assert [n["gpu_accounting"] for n in exact.snapshot()] == ["per-device"]
    plain = ledger(("b", [10000])).place(normalize({"gpu_mem": 6000}))
    assert plain.ray_resources == {} and plain.num_gpus == 0.6, "elsewhere: a share of num_gpus"


def test_per_device_nodes_never_place_what_rays_books_cannot_hold():
    """Shares are rounded, megabytes are not: on an 81,559 MB device two halves ask Ray for
    40,780 MB each (rounded up), 1 MB more than it has. The ledger keeps Ray's sum and says no."""
    led = GpuLedger()
    led.set_nodes([Node("a", "", 8, 64000, [Gpu(0, 81559)], exact=True)])
    first = led.place(normalize({"gpu": 0.5}))
    assert first.ray_resources == {"maze_gpu0_mb": 40780}
    assert led.place(normalize({"gpu": 0.5})) is None, "Ray would queue it"
    assert led.place(normalize({"gpu_mem": 40779})) is not None, "what Ray has left still fits"
    led.free(first)
    assert led.nodes["a"].gpus[0].ray_mb == 40779
