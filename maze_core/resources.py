"""Resource requests: parsing, validation and unit conversion, in one place.

A task asks for ``type`` (``cpu`` | ``gpu`` | ``io``), ``cpu`` cores (``cpu_num`` in the original ``@task`` arguments),
``mem`` in MB, ``gpu`` devices (fractions allowed), ``gpu_mem`` in MB per device, ``model_name`` and
``backend``. Memory accepts numbers (MB) or strings with a unit: ``"512M"``, ``"4G"``, ``"4 GiB"``,
``"1.5GB"``. Anything else is an error that names the task and the key.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ResourceError
from .json_limits import text_problem

TASK_TYPES = ("cpu", "gpu", "io")
IO_CPU_SHARE = 0.1  # an io task holds a tenth of a core: it mostly waits
MAX_CPU = 1024
MAX_GPU = 64
MAX_MEM_MB = 64 * 1024 * 1024  # 64 TiB: anything above is a unit mistake
MAX_NAME = 256                 # model_name, backend

_ALIASES = {
    "cpu_num": "cpu", "cpus": "cpu", "num_cpus": "cpu",
    "memory": "mem", "mem_mb": "mem",
    "gpus": "gpu", "gpu_num": "gpu", "num_gpus": "gpu",
    "gpu_memory": "gpu_mem", "task_type": "type",
}
_KNOWN = {"type", "cpu", "mem", "gpu", "gpu_mem", "model_name", "backend"}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b|bytes)?\s*$", re.IGNORECASE)
_MEM_UNIT_MB = {"": 1.0, "b": 1 / 2**20, "bytes": 1 / 2**20, "k": 1 / 1024, "m": 1.0, "g": 1024.0,
                "t": 1024.0 * 1024}


def parse_mem_mb(value: Any, what: str = "mem") -> int:
    """Memory in MB from a number (already MB) or a string with a unit ("4G", "512 MiB")."""
    if isinstance(value, bool):
        raise ResourceError(f"{what}: expected a size such as 512 (MB) or '4G', got {value!r}")
    if isinstance(value, int | float):
        if not _finite(value):
            raise ResourceError(f"{what}: must be a non-negative size, got {_short(value)}")
        mb = float(value)
    elif isinstance(value, str):
        m = _MEM_RE.match(value)
        if not m:
            raise ResourceError(f"{what}: cannot read {value!r} as a size; use MB as a number or a "
                                f"unit such as '512M', '4G', '1.5GiB'")
        unit = (m.group(2) or "").lower()
        key = unit if unit in ("b", "bytes") else unit[:1]
        mb = float(m.group(1)) * _MEM_UNIT_MB[key]
    else:
        raise ResourceError(f"{what}: expected a size such as 512 (MB) or '4G', got {value!r}")
    if not math.isfinite(mb) or mb < 0:
        raise ResourceError(f"{what}: must be a non-negative size, got {value!r}")
    if mb > MAX_MEM_MB:
        raise ResourceError(f"{what}: {value!r} is more than {MAX_MEM_MB} MB; check the unit")
    return int(math.ceil(mb))


def _number(value: Any, what: str, maximum: float) -> float:
    if isinstance(value, bool):
        raise ResourceError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ResourceError(f"{what}: expected a number, got {value!r}") from None
    if not isinstance(value, int | float) or not _finite(value):
        raise ResourceError(f"{what}: expected a number, got {_short(value)}")
    if value < 0:
        raise ResourceError(f"{what}: must not be negative, got {value!r}")
    if value > maximum:
        raise ResourceError(f"{what}: {_short(value)} is more than the maximum {maximum:g}")
    return float(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:          # an int too large for a float
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def normalize(raw: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate a resource request and return its canonical form.

    ``base`` (a task's declared resources) is overlaid with ``raw`` (per-use overrides such as
    ``DAG.add_task(resources=...)``). The result always has every key:
    ``{"type", "cpu", "mem", "gpu", "gpu_mem", "model_name", "backend"}``.
    """
    merged: dict[str, Any] = {}
    for source in (base or {}, raw or {}):
        if not isinstance(source, dict):
            raise ResourceError(f"resources must be a mapping, got {type(source).__name__}")
        for key, value in source.items():
            canon = _ALIASES.get(key, key)
            if canon not in _KNOWN:
                raise ResourceError(f"unknown resource {key!r}; known: {', '.join(sorted(_KNOWN))}")
            merged[canon] = value
    explicit_cpu = merged.get("cpu") is not None
    explicit_gpu = merged.get("gpu") is not None
    kind = merged.get("type") or "cpu"
    if kind not in TASK_TYPES:
        raise ResourceError(f"type: must be one of {', '.join(TASK_TYPES)}, got {kind!r}")
    gpu_mem = parse_mem_mb(merged["gpu_mem"], "gpu_mem") if merged.get("gpu_mem") is not None else 0
    gpu = _number(merged["gpu"], "gpu", MAX_GPU) if explicit_gpu else 0.0
    if not explicit_gpu and (kind == "gpu" or gpu_mem > 0):
        gpu = 1.0
    if gpu > 1 and gpu != int(gpu):
        raise ResourceError(f"gpu: more than one GPU must be a whole number, got {gpu:g}")
    if gpu > 0 and kind == "cpu" and merged.get("type") is None:
        kind = "gpu"
    if explicit_cpu:
        cpu = _number(merged["cpu"], "cpu", MAX_CPU)
    else:
        cpu = IO_CPU_SHARE if kind == "io" else 1.0
    mem = parse_mem_mb(merged["mem"], "mem") if merged.get("mem") is not None else 0
    for name in ("model_name", "backend"):
        if merged.get(name) is not None and not isinstance(merged[name], str):
            raise ResourceError(f"{name}: expected a string, got {_short(merged[name])}")
        if merged.get(name) is not None and (problem := text_problem(merged[name])):
            raise ResourceError(f"{name}: {problem}")
        if merged.get(name) is not None and len(merged[name]) > MAX_NAME:
            raise ResourceError(f"{name}: longer than {MAX_NAME} characters")
    return {"type": kind, "cpu": cpu, "mem": mem, "gpu": gpu, "gpu_mem": gpu_mem,
            "model_name": merged.get("model_name"), "backend": merged.get("backend")}


def mem_bytes(mem_mb: int) -> int:
    """MB to bytes (what Ray wants)."""
    return int(mem_mb) * 1024 * 1024
