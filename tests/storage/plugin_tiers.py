"""Tiers and an eviction policy written as a plugin author would from docs/storage.md ("Writing a
tier"): public hooks and names only (no ``_state``, ``_pins``, ``READY``...). The issue's failures were
these: an LFU device tier subclass lost its hot page (the fused load skipped its ``touch``), a bfloat16
subclass of ``HostTier`` crashed in the fused load's ``index_select``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from attrs import define, setters

from icecache.core.hookspecs import hookimpl
from icecache.storage.device import DeviceTier
from icecache.storage.eviction import EvictionPolicy
from icecache.storage.host import HostTier


class CountingLFUDeviceTier(DeviceTier):
    """LFU by subclassing: ``touch`` counts uses per page, ``victims`` takes the least used first."""

    def __attrs_post_init__(self) -> None:
        self.uses: dict[int, int] = {}
        super().__attrs_post_init__()

    def touch(self, page_ids) -> None:
        super().touch(page_ids)
        for i in self.checked_ids(page_ids).tolist():
            self.uses[i] = self.uses.get(i, 0) + 1

    def victims(self, count: int) -> torch.Tensor:
        ids = self.page_at(self.evictable_slots())
        order = sorted(ids.tolist(), key=lambda i: self.uses.get(i, 0))
        return torch.tensor(order[: max(0, count)], dtype=torch.int64)

    def free(self, page_ids) -> None:
        super().free(page_ids)
        for i in self.checked_ids(page_ids).tolist():
            self.uses.pop(i, None)


class BF16HostTier(HostTier):
    """Host pages kept in bfloat16 whatever the store's dtype: half the host bytes, lossy."""

    def resize_storage(self, num_slots: int) -> None:
        old = getattr(self, "packed", None)
        new = torch.zeros((num_slots, *self.spec.record_shape), dtype=torch.bfloat16)
        if old is not None:
            new[: old.shape[0]] = old
        self.packed = new

    def read(self, slots, *, out=None):
        got = self.packed.index_select(0, torch.as_tensor(slots)).to(self.spec.dtype)
        return got if out is None else out.copy_(got)

    def write(self, slots, records) -> None:
        self.packed.index_copy_(0, torch.as_tensor(slots), records.to("cpu", torch.bfloat16))

    def view(self, start, stop):
        return None  # NOTE: the memory is not the records

    def details(self):
        return {"stored_dtype": "bfloat16"}


@define(eq=False, on_setattr=setters.NO_OP)
class ScanMRU(EvictionPolicy):
    """Most recently used first, registered by a plugin as ``scan-mru``."""

    name: ClassVar[str] = "scan-mru"

    def key(self, slots: np.ndarray) -> np.ndarray:
        return -self.stamp[slots]


class Plugin:
    """What the plugin package's entry point would hold."""

    @staticmethod
    @hookimpl
    def icecache_register_tiers(register):
        register("lfu-device", lambda config, **o: CountingLFUDeviceTier.from_config(config, **o),
                 description="device tier, LFU by subclassing (test plugin)")
        register("bf16-host", lambda config, **o: BF16HostTier.from_config(config, **o),
                 description="host tier in bfloat16 (test plugin)")

    @staticmethod
    @hookimpl
    def icecache_register_evictions(register):
        register("scan-mru", ScanMRU, description="most recently used first (test plugin)")
