"""The store's fast load: the whole bookkeeping of a bulk load in a few array operations.

``TieredStore.load`` through the two-phase tier protocol makes ~140 small calls per load (~0.2 ms on a
CPU core) while the bytes of 256 pages move in ~0.05-0.1 ms. When the device tier and the source tier
are memory tiers whose bookkeeping is the base class's own
(:meth:`~icecache.storage.memory.MemoryTier.fused_moves`: a subclass that overrides ``touch``,
``read``, ``victims``... is excluded, so this path is provably what the protocol calls would do) this
path does the same state changes directly: look up, make room (in the tier's eviction order, never a
requested page), admit, touch and move (on CUDA the move is queued before the touches), through the same
:class:`~icecache.storage.eviction.EvictionPolicy` hooks. Anything else (pages on disk, pages split
across source tiers, too little room, a third-party or overriding tier) returns ``None`` before
changing anything, and the store takes the general path, which also raises the errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from icecache.storage.memory import MemoryTier
from icecache.storage.stats import MoveRecord
from icecache.storage.uva import copy_rows

if TYPE_CHECKING:
    from icecache.storage.store import TieredStore


def fused_load(store: TieredStore, ids: np.ndarray, request: np.ndarray, *, pin: bool) -> Tensor | None:
    """Device slots of the pages ``request`` (any order, repeats allowed) whose distinct ids are ``ids``
    (ascending, checked, written), in the order of ``request``; ``None`` for the general path.

    NOTE: the budget is the gap between a load and its bare gather (docs/benchmarks.md, "Storage
    transfers"), so each step is one or two numpy operations and a single backing tier is trusted to
    hold every written page (the store's invariant) rather than checked. On a CPU device tier all of the
    bookkeeping runs before the copy (a 2 MiB gather leaves the CPU caches cold: every small operation
    after it costs several times more); on CUDA the copy is queued first and the stamps run while it
    moves. A copy that raises frees the admitted pages and unpins them; on the CPU the requested pages
    keep the stamps of this use (the eviction order counts it)."""
    cache = store.cache
    if not isinstance(cache, MemoryTier) or not cache.fused_moves():
        return None
    if not ids.size:
        return torch.zeros(0, dtype=torch.int64)
    top = int(ids[-1])  # ascending: the largest id, so no lookup scans for it
    slots = cache.ready_slots(ids, top=top)
    miss = slots < 0
    n_miss = int(np.count_nonzero(miss))
    if not n_miss:  # every page resident: stamps (and pins) only
        cache.stamp(slots, pin=pin)
        return torch.from_numpy(slots if request is ids else cache.ready_slots(request, top=top))
    whole = n_miss == ids.size  # NOTE: the usual bulk load: nothing resident, no masking
    missing = ids if whole else ids[miss]
    found = _source(store, missing, top)
    if found is None:
        return None
    source, source_slots = found
    free = cache.free_slots
    if free is not None and n_miss > free:
        evicted = cache.make_room(n_miss, slots[~miss])
        if evicted is None:
            return None
        if evicted.size:
            store._evicted(cache, torch.from_numpy(evicted))
    new = cache.admit(missing)
    via = _route(store, source, new)
    record = MoveRecord(kind="load", tier=cache.name, pages=n_miss, nbytes=n_miss * store.spec.page_nbytes,
                        copies=1, sources={source.name: n_miss}, via=via)
    if whole:
        slots = new
    else:
        slots[miss] = new
    queued = cache.device.type == "cuda"  # NOTE: then the copy is queued first and the stamps overlap it
    pinned = False
    try:
        if queued:
            _move(store, source, source_slots, new, via)
        source.stamp(source_slots)
        cache.stamp(slots, pin=pin)
        pinned = pin
        out = torch.from_numpy(slots if request is ids else cache.ready_slots(request, top=top))
        if not queued:
            _move(store, source, source_slots, new, via)
    except BaseException:
        if pinned:
            cache.complete_load(torch.from_numpy(ids))
        cache.free(torch.from_numpy(missing))
        raise
    store._moved(record, missing)
    return out


def _source(store: TieredStore, missing: np.ndarray, top: int) -> tuple[MemoryTier, np.ndarray] | None:
    """The one memory tier that holds every missing page, with their slots there."""
    n = missing.size
    single = len(store.backing) == 1
    for tier in store.backing:
        if not isinstance(tier, MemoryTier) or not (tier.device.type == "cpu" or store._uva_source(tier)):
            continue
        if not tier.fused_moves():
            return None  # NOTE: it may hold some of the pages: the protocol path reads them properly
        slots = tier.ready_slots(missing, top=top)
        if single and tier.settled():
            return tier, slots  # every written page lives in the one backing tier, ready when settled
        held = int(np.count_nonzero(slots >= 0))
        if held == n:
            return tier, slots
        if held:
            return None  # split across tiers
    return None


def _route(store: TieredStore, source: MemoryTier, slots: np.ndarray) -> str:
    """How :func:`_move` copies into the device tier's ``slots`` (ascending, from
    :meth:`~icecache.storage.slots.SlotTier.admit`): ``uva``, ``direct`` (a CPU device tier whose slots
    are one run: distinct ascending slots spanning ``size - 1``) or ``staged``."""
    if store._uva_source(source):
        return "uva"
    if store.cache.device.type == "cpu" and int(slots[-1]) - int(slots[0]) == slots.size - 1:
        return "direct"
    return "staged"


def _move(store: TieredStore, source: MemoryTier, source_slots: np.ndarray, slots: np.ndarray, via: str
          ) -> None:
    """Copy the pages in ``source_slots`` into the device tier's ``slots``, one copy (see :func:`_route`)."""
    cache = store.cache
    assert isinstance(cache, MemoryTier)
    m = slots.size
    if via == "uva":
        idx = store._stager.index_buffer(m)
        idx_np = idx.numpy()
        idx_np[:, 0] = source_slots
        idx_np[:, 1] = slots
        copy_rows(source.data, cache.data, idx)
        store._stager.record()
        return
    src = torch.from_numpy(source_slots)
    if via == "direct":
        # NOTE: straight into the run of slots: one pass over the bytes, no staging, no scatter
        start = int(slots[0])
        torch.index_select(source.data, 0, src, out=cache.data[start:start + m])
        return
    buf = store._stager.host_buffer(m)
    torch.index_select(source.data, 0, src, out=buf)
    store._stager.upload(buf, cache, torch.from_numpy(slots))
