"""Resource requests: parsing, units, bad input."""

from __future__ import annotations

import pytest

from maze_core.errors import ResourceError
from maze_core.resources import mem_bytes, normalize, parse_mem_mb


@pytest.mark.parametrize("value, mb", [
    (512, 512), (1.5, 2), ("512", 512), ("512M", 512), ("512MB", 512), ("4G", 4096), ("4 GiB", 4096),
    ("1.5GB", 1536), ("1T", 1048576), ("2048k", 2), ("1048576 bytes", 1), ("0", 0),
])
def test_memory_units(value, mb):
    assert parse_mem_mb(value) == mb


@pytest.mark.parametrize("value", ["4 bananas", "G4", "", "-1G", -5, True, None, [4], "nanG", float("inf")])
def test_memory_nonsense_is_refused(value):
    with pytest.raises(ResourceError, match="mem"):
        parse_mem_mb(value)


def test_absurd_memory_is_a_unit_mistake():
    with pytest.raises(ResourceError, match="check the unit"):
        parse_mem_mb(4 * 1024**4)   # someone passed bytes as MB


def test_defaults_and_aliases():
    assert normalize(None) == {"type": "cpu", "cpu": 1.0, "mem": 0, "gpu": 0.0, "gpu_mem": 0,
                               "model_name": None, "backend": None}
    r = normalize({"cpu_num": 2, "memory": "4G", "gpu_num": 1, "gpu_memory": "6000", "model_name": "m"})
    assert (r["cpu"], r["mem"], r["gpu"], r["gpu_mem"], r["type"]) == (2.0, 4096, 1.0, 6000, "gpu")
    assert normalize({"type": "io"})["cpu"] == 0.1
    assert normalize({"type": "gpu"})["gpu"] == 1.0           # a gpu task wants one GPU
    assert normalize({"gpu_mem": 4096})["gpu"] == 1.0          # asking for GPU memory implies a GPU
    assert normalize({"gpu": 0.5})["type"] == "gpu"
    assert normalize({"cpu": "2"}, base={"cpu": 1, "mem": 100})["cpu"] == 2.0   # overrides win
    assert mem_bytes(4096) == 4 * 1024**3


@pytest.mark.parametrize("raw, culprit", [
    ({"gpu": -1}, "gpu"), ({"cpu": -2}, "cpu"), ({"cpu": 10**6}, "cpu"), ({"gpu": 1.5}, "whole number"),
    ({"type": "tpu"}, "type"), ({"gpus_please": 1}, "unknown resource"), ({"cpu": "many"}, "cpu"),
    ({"gpu": 1000}, "gpu"), ({"model_name": 3}, "model_name"), ({"cpu": float("nan")}, "cpu"),
])
def test_bad_requests_name_the_key(raw, culprit):
    with pytest.raises(ResourceError, match=culprit):
        normalize(raw)
