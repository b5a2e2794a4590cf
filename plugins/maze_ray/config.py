"""``[ray]`` in config.toml: where the Ray executor runs and how it fills Ray."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RayConfig(BaseModel):
    """``[ray]`` in config.toml."""

    model_config = ConfigDict(extra="forbid")

    address: str = ""              # "": an embedded Ray on this machine; "auto" or "HOST:PORT": join
    num_cpus: float = Field(0, ge=0)          # embedded only; 0: every CPU
    num_gpus: int = Field(-1, ge=-1)          # embedded only; -1: detect; >0 fakes GPUs (tests)
    gpu_mem_mb: list[int] = []     # memory of each GPU (MB) where no node label or reading says
    prefetch: float = Field(16.0, ge=0, le=64)  # most CPU tasks queued in Ray beyond the CPUs, per CPU
    object_store_mb: int = Field(0, ge=0)     # embedded only; 0: Ray's default
    probe_gpus: bool = True        # read GPU memory with nvidia-smi on each GPU node
    namespace: str = "maze"
    fuse: bool = True              # run many tiny ready calls of one tool as one Ray task

    @classmethod
    def from_config(cls, config: Any) -> RayConfig:
        from maze_core.errors import ConfigError
        try:
            return cls.model_validate(config.section("ray") if config is not None else {})
        except Exception as exc:
            raise ConfigError(f"[ray]: {exc}") from None
