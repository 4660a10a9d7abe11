"""The host tier: pinned CPU memory when CUDA is present (fast, async copies), pageable otherwise."""

from __future__ import annotations

from typing import Any

import torch
from attrs import define, setters

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError
from icecache.storage.device import spec_from_config
from icecache.storage.memory import MemoryTier
from icecache.storage.slots import INITIAL_SLOTS


def can_pin() -> bool:
    """``pin_memory`` raises on a CPU-only torch build: pin only when CUDA is available."""
    return torch.cuda.is_available()


@define(eq=False, on_setattr=setters.NO_OP)
class HostTier(MemoryTier):
    """Slots ``[num_slots, 2, S, D]`` in CPU memory, grown by doubling up to ``capacity``; pinned when
    ``pin_memory`` is True, or ``None`` (the default) and CUDA is available."""

    def __attrs_post_init__(self) -> None:
        if self.pin_memory is None:
            self.pin_memory = can_pin()
        if self.device.type != "cpu":
            raise ConfigError(f"a host tier lives on the CPU, got device {str(self.device)!r}")
        if self.pin_memory and not can_pin():
            raise ConfigError("pin_memory=True needs CUDA, which is not available")
        self._ensure_slots(INITIAL_SLOTS if self.capacity is None else min(self.capacity, INITIAL_SLOTS))

    def memory_kind(self) -> str:
        return "pinned" if self.pin_memory else "pageable"

    def details(self) -> dict[str, Any]:
        return {"pinned": self.pin_memory}

    @classmethod
    def from_config(cls, config: CacheConfig, *, name: str = "host", capacity: int | None = None,
                    head_dim: int | None = None, pin_memory: bool | None = None,
                    eviction: str | None = None) -> HostTier:
        """``config.tiers.host_pages`` slots (``capacity`` overrides); pinned when CUDA is available
        unless ``pin_memory=False``."""
        return cls(name=name, spec=spec_from_config(config, head_dim),
                   capacity=config.tiers.host_pages if capacity is None else capacity,
                   eviction=eviction or config.tiers.eviction,
                   pin_memory=can_pin() if pin_memory is None else pin_memory)
