"""Deliberately broken tiers, each a small twist on the real host tier, for the tier suite to catch."""

from __future__ import annotations

import numpy as np
import torch

from icecache.storage.host import HostTier
from icecache.storage.slots import READY


class LosesPageTier(HostTier):
    """Silently drops its lowest ready page once it holds three."""

    def complete_store(self, page_ids, success=True):
        super().complete_store(page_ids, success)
        ready = self.resident_ids()
        if ready.numel() >= 3:
            slot = int(self.slot_of(ready[:1])[0])
            self._release(np.array([slot]), ready[:1].numpy())


class CorruptsByteTier(HostTier):
    """Flips one byte of the first page it reads back."""

    def read(self, slots, *, out=None):
        got = super().read(slots, out=out)
        raw = got.view(torch.uint8).reshape(got.shape[0], -1)
        raw[0, 3] ^= 0x10
        return got


class EvictsPinnedTier(HostTier):
    """Proposes (and evicts) pages pinned by a load first."""

    def victims(self, count):
        slots = np.arange(self.num_slots)
        ready = slots[self.state_at(slots) == READY]
        pinned = ready[self.pins_at(ready) > 0]
        rest = self.evictable_slots()
        order = np.concatenate([pinned, self.policy.victims(rest, rest.size)])[:count]  # pinned first
        return torch.from_numpy(self.page_at(order).astype(np.int64))

    def free(self, page_ids):
        ids = torch.as_tensor(page_ids, dtype=torch.int64)
        slots = self.slot_of(ids).numpy()
        self._pins[slots] = 0
        super().free(ids)


class IgnoresCapacityTier(HostTier):
    """Grows past its capacity instead of refusing the store."""

    def _take_slots(self, n):
        cap, self.capacity = self.capacity, None
        try:
            return super()._take_slots(n)
        finally:
            self.capacity = cap

    @property
    def free_slots(self):
        return None if self.capacity is None else max(0, self.capacity - self._used)


class LaxIdsTier(HostTier):
    """Returns -1 slots for pages it does not hold instead of raising PageError."""

    def prepare_load(self, page_ids):
        ids = torch.as_tensor(page_ids, dtype=torch.int64)
        if bool((self.slot_of(ids) < 0).any()):
            return self.slot_of(ids)
        return super().prepare_load(ids)


def factory(cls):
    def make(config):
        return cls.from_config(config)

    make.__name__ = cls.__name__
    return make


#: broken tier class -> the property the suite reports
BROKEN_TIERS = {
    LosesPageTier: "state",
    CorruptsByteTier: "round-trip",
    EvictsPinnedTier: "in-flight",
    IgnoresCapacityTier: "capacity",
    LaxIdsTier: "bad-ids",
}


class EvictsNewestTier(HostTier):
    """Reports ``lru`` but proposes the most recently used pages first (written with public names only)."""

    def victims(self, count):
        slots = self.evictable_slots()
        order = self.policy.victims(slots, slots.size)[::-1][:count]  # NOTE: lru order, reversed
        return torch.from_numpy(self.page_at(order).copy())


BROKEN_TIERS[EvictsNewestTier] = "eviction-order"
