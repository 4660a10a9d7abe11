"""The device tier: the page pool that attention reads (a CPU tensor stands in without CUDA)."""

from __future__ import annotations

from typing import Any

import torch
from attrs import define, setters
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError
from icecache.storage.layout import PageSpec
from icecache.storage.memory import MemoryTier


def default_device() -> torch.device:
    """``cuda`` when present, else ``cpu`` (the stand-in)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@define(eq=False, on_setattr=setters.NO_OP)
class DeviceTier(MemoryTier):
    """Slots ``[num_slots, 2, S, D]`` on the device. ``k`` and ``v`` are ``[num_slots, S, D]`` views
    (page stride ``2 * S * D``; each page contiguous), usable with a :class:`PageTable` whose indices
    are slots. A bounded tier allocates its whole capacity up front, so the views stay valid."""

    def __attrs_post_init__(self) -> None:
        if self.capacity is not None:
            self._ensure_slots(self.capacity)

    @property
    def k(self) -> Tensor:
        return self.data[:, 0]  # [num_slots, S, D]

    @property
    def v(self) -> Tensor:
        return self.data[:, 1]  # [num_slots, S, D]

    @property
    def is_cpu_standin(self) -> bool:
        return self.device.type == "cpu"

    def memory_kind(self) -> str:
        return "cpu-standin" if self.is_cpu_standin else self.device.type

    def details(self) -> dict[str, Any]:
        return {"device": str(self.device), "cpu_standin": self.is_cpu_standin}

    @classmethod
    def from_config(cls, config: CacheConfig, *, name: str = "device", capacity: int | None = None,
                    head_dim: int | None = None, device: torch.device | str | None = None,
                    eviction: str | None = None) -> DeviceTier:
        """``config.tiers.device_pages`` slots (``capacity`` overrides) on ``device``: ``config.device``
        when it is a CUDA device, else CUDA when present, else the CPU stand-in."""
        if device is None:
            device = config.device if config.device.type == "cuda" else default_device()
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} asked for but CUDA is not available")
        return cls(name=name, spec=spec_from_config(config, head_dim),
                   capacity=config.tiers.device_pages if capacity is None else capacity,
                   eviction=eviction or config.tiers.eviction, device=device)


def spec_from_config(config: CacheConfig, head_dim: int | None = None) -> PageSpec:
    """The page spec of ``config``: its page size and dtype, and ``head_dim`` (else its geometry's)."""
    if head_dim is None:
        if config.geometry is None:
            raise ConfigError("head_dim is unknown: give CacheConfig.geometry or the tier option head_dim=")
        head_dim = config.geometry.head_dim
    return PageSpec(page_size=config.page_size, head_dim=head_dim, dtype=config.dtype)
