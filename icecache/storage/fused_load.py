"""The store's fast load: the whole bookkeeping of a bulk load in a few array operations.

``TieredStore.load`` through the two-phase tier protocol makes ~140 small calls per load (~0.2 ms on a
CPU core) while the bytes of 256 pages move in ~0.05-0.1 ms. When the device tier and the source tier
are memory tiers whose bookkeeping is the base class's own
(:meth:`~icecache.storage.memory.MemoryTier.fused_moves`: a subclass that overrides ``touch``,
``read``, ``victims``... is excluded, so this path is provably what the protocol calls would do) this
path does the same state changes directly: look up, make room (in the tier's eviction order, never a
requested page), admit, move, touch, through the same
:class:`~icecache.storage.eviction.EvictionPolicy` hooks. Anything else (pages on disk, pages split
across source tiers, too little room, a third-party or overriding tier) returns ``None`` before
changing anything, and the store takes the general path, which also raises the errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from icecache.storage.layout import contiguous_run, np_all, np_any
from icecache.storage.memory import MemoryTier
from icecache.storage.stats import MoveRecord
from icecache.storage.uva import copy_rows

if TYPE_CHECKING:
    from icecache.storage.store import TieredStore


def fused_load(store: TieredStore, ids: np.ndarray, *, pin: bool) -> np.ndarray | None:
    """Device slots of ``ids`` (distinct, checked, written), or ``None`` for the general path."""
    cache = store.cache
    if not isinstance(cache, MemoryTier) or not cache.fused_moves():
        return None
    slots = cache.ready_slots(ids)
    miss = slots < 0
    if np_any(miss):
        missing = ids[miss]
        found = _source(store, missing)
        if found is None:
            return None
        source, source_slots = found
        evicted = cache.make_room(missing.size, slots[~miss])
        if evicted is None:
            return None
        if evicted.size:
            store._evicted(cache, torch.from_numpy(evicted))
        new = cache.admit(missing)
        try:
            via, copies = _move(store, source, source_slots, new)
        except BaseException:
            cache.free(torch.from_numpy(missing))
            raise
        source.stamp(source_slots)
        slots[miss] = new
        nbytes = missing.size * store.spec.page_nbytes
        store._moved(MoveRecord(kind="load", tier=cache.name, pages=missing.size, nbytes=nbytes,
                                copies=copies, sources={source.name: missing.size}, via=via),
                     torch.from_numpy(missing))
    cache.stamp(slots, pin=pin)
    return slots


def _source(store: TieredStore, missing: np.ndarray) -> tuple[MemoryTier, np.ndarray] | None:
    """The one memory tier that holds every missing page, with their slots there."""
    for tier in store.backing:
        if not isinstance(tier, MemoryTier) or not (tier.device.type == "cpu" or store._uva_source(tier)):
            continue
        if not tier.fused_moves():
            return None  # NOTE: it may hold some of the pages: the protocol path reads them properly
        slots = tier.ready_slots(missing)
        held = slots >= 0
        if np_all(held):
            return tier, slots
        if np_any(held):
            return None  # split across tiers
    return None


def _move(store: TieredStore, source: MemoryTier, source_slots: np.ndarray, slots: np.ndarray
          ) -> tuple[str, int]:
    """Copy the pages in ``source_slots`` into the device tier's ``slots``: ``(via, copies)``."""
    cache = store.cache
    assert isinstance(cache, MemoryTier)
    m = slots.size
    if store._uva_source(source):
        idx = store._stager.index_buffer(m)
        idx_np = idx.numpy()
        idx_np[:, 0] = source_slots
        idx_np[:, 1] = slots
        copy_rows(source.data, cache.data, idx)
        store._stager.record()
        return "uva", 1
    start = contiguous_run(slots)
    src = torch.from_numpy(source_slots)
    if cache.device.type == "cpu" and start is not None:
        # NOTE: straight into the run of slots: one pass over the bytes, no staging, no scatter
        torch.index_select(source.data, 0, src, out=cache.data[start:start + m])
        return "direct", 1
    buf = store._stager.host_buffer(m)
    torch.index_select(source.data, 0, src, out=buf)
    return "staged", store._stager.upload(buf, cache, torch.from_numpy(slots))
