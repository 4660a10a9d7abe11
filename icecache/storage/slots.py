"""Slot bookkeeping shared by every built-in tier: page <-> slot maps, states, pins, eviction order.

All bookkeeping is CPU tensors indexed by slot or page id, so each call is a few vectorized ops
whatever the number of pages. Subclasses provide the memory (``_resize_storage``, ``read``,
``write``, ``view``, ``device``, ``_memory``).
"""

from __future__ import annotations

from typing import Any

import torch
from attrs import define, field
from torch import Tensor

from icecache.core.errors import ConfigError, PageError, StorageError
from icecache.core.validators import optional_positive
from icecache.storage.base import TierStats
from icecache.storage.layout import PageSpec, as_page_ids

FREE, STORING, READY = 0, 1, 2
#: eviction orders: ``lru`` re-stamps a page on every touch, ``fifo`` only when it is stored
EVICTION_POLICIES = ("lru", "fifo")
#: slots allocated first by a tier that grows (unbounded, or lazily up to its capacity)
INITIAL_SLOTS = 64


def _eviction(instance: Any, attribute: Any, value: str) -> None:
    if value not in EVICTION_POLICIES:
        raise ConfigError(f"eviction must be one of {list(EVICTION_POLICIES)}, got {value!r}")


@define(eq=False)
class SlotTier:
    """Implements the :class:`icecache.storage.base.Tier` protocol's bookkeeping over slots."""

    name: str
    spec: PageSpec
    capacity: int | None = field(default=None, validator=optional_positive)
    eviction: str = field(default="lru", validator=_eviction)
    _num_slots: int = field(init=False, default=0)
    _page_of: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int64))  # [slots]
    _state: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int8))  # [slots]
    _pins: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int32))  # [slots]
    _stamp: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int64))  # [slots]
    _new: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.bool))  # [slots]
    _slot_of: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int64))  # [ids]
    _clock: int = field(init=False, default=0)

    # ----- memory, provided by subclasses -------------------------------------------------------
    def _resize_storage(self, num_slots: int) -> None:
        raise NotImplementedError

    def _memory(self) -> str:
        raise NotImplementedError

    def _details(self) -> dict[str, Any]:
        return {}

    # ----- queries ----------------------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        """Slots currently allocated in memory (grows up to ``capacity``)."""
        return self._num_slots

    @property
    def free_slots(self) -> int | None:
        if self.capacity is None:
            return None
        return self.capacity - int((self._state != FREE).sum())

    def slot_of(self, page_ids: Tensor) -> Tensor:
        ids = as_page_ids(page_ids, unique=False)
        out = torch.full_like(ids, -1)
        inside = ids < self._slot_of.numel()
        out[inside] = self._slot_of[ids[inside]]
        return out

    def lookup(self, page_ids: Tensor) -> Tensor:
        slots = self.slot_of(page_ids)
        found = slots >= 0
        ready = torch.zeros_like(found)
        ready[found] = self._state[slots[found]] == READY
        return ready

    def resident_ids(self) -> Tensor:
        ids = self._page_of[self._state == READY]
        return torch.sort(ids).values

    def evictable(self) -> int:
        return int(((self._state == READY) & (self._pins == 0)).sum())

    def in_flight(self) -> Tensor:
        """Ids of pages in flight (being stored, or pinned by a load), ascending int64."""
        busy = (self._state == STORING) | ((self._state == READY) & (self._pins > 0))
        return torch.sort(self._page_of[busy]).values

    # ----- loads ---------------------------------------------------------------------------------
    def prepare_load(self, page_ids: Tensor) -> Tensor:
        ids = as_page_ids(page_ids)
        slots = self._ready_slots(ids)
        self._pins[slots] += 1
        return slots

    def complete_load(self, page_ids: Tensor) -> None:
        ids = as_page_ids(page_ids)
        slots = self._present_slots(ids)
        unpinned = self._pins[slots] <= 0
        if bool(unpinned.any()):
            raise PageError(f"page {int(ids[unpinned][0])} is not being loaded from tier {self.name!r}")
        self._pins[slots] -= 1

    # ----- stores --------------------------------------------------------------------------------
    def prepare_store(self, page_ids: Tensor) -> Tensor:
        ids = as_page_ids(page_ids)
        slots = self.slot_of(ids)
        present = slots >= 0
        if bool(present.any()):
            storing = self._state[slots[present]] == STORING
            if bool(storing.any()):
                raise PageError(f"page {int(ids[present][storing][0])} is already being stored in tier "
                                f"{self.name!r}")
        new_ids = ids[~present]
        if new_ids.numel():
            new_slots = self._take_slots(new_ids.numel())  # may grow memory; raises before any change
            self._grow_ids(int(new_ids.max()) + 1)
            self._slot_of[new_ids] = new_slots
            self._page_of[new_slots] = new_ids
            self._new[new_slots] = True
            slots[~present] = new_slots
        self._new[slots[present]] = False
        self._state[slots] = STORING
        return slots

    def complete_store(self, page_ids: Tensor, success: bool = True) -> None:
        ids = as_page_ids(page_ids)
        slots = self._present_slots(ids)
        bad = self._state[slots] != STORING
        if bool(bad.any()):
            raise PageError(f"page {int(ids[bad][0])} is not being stored in tier {self.name!r}")
        if success:
            self._state[slots] = READY
            self._new[slots] = False
            self._stamp_slots(slots)
            return
        # NOTE: a failed store drops new pages; a page that existed keeps its slot (callers reserve
        # everything that can fail, e.g. disk space, before writing, so it is not half-written).
        dropped = self._new[slots]
        self._release(slots[dropped], ids[dropped])
        self._state[slots[~dropped]] = READY
        self._new[slots] = False

    # ----- eviction ------------------------------------------------------------------------------
    def touch(self, page_ids: Tensor) -> None:
        if self.eviction != "lru":
            return
        ids = as_page_ids(page_ids)
        self._stamp_slots(self._present_slots(ids))

    def victims(self, count: int) -> Tensor:
        candidates = torch.nonzero((self._state == READY) & (self._pins == 0)).flatten()
        count = max(0, min(int(count), candidates.numel()))
        if count == 0:
            return torch.zeros(0, dtype=torch.int64)
        _, order = torch.topk(self._stamp[candidates], count, largest=False, sorted=True)
        return self._page_of[candidates[order]]

    def free(self, page_ids: Tensor) -> None:
        ids = as_page_ids(page_ids)
        slots = self._present_slots(ids)
        busy = (self._state[slots] == STORING) | (self._pins[slots] > 0)
        if bool(busy.any()):
            raise PageError(f"page {int(ids[busy][0])} is in flight in tier {self.name!r}; it cannot be "
                            "evicted or freed")
        self._release(slots, ids)

    def evict(self, count: int) -> Tensor:
        ids = self.victims(count)
        self.free(ids)
        return ids

    def stats(self) -> TierStats:
        resident = int((self._state == READY).sum())
        busy = int(((self._state == STORING) | ((self._state == READY) & (self._pins > 0))).sum())
        return TierStats(name=self.name, memory=self._memory(), capacity_pages=self.capacity,
                         resident_pages=resident, in_flight_pages=busy, page_nbytes=self.spec.page_nbytes,
                         allocated_slots=self._num_slots,
                         details={"eviction": self.eviction, **self._details()})

    # ----- internals -----------------------------------------------------------------------------
    def _present_slots(self, ids: Tensor) -> Tensor:
        slots = self.slot_of(ids)
        missing = slots < 0
        if bool(missing.any()):
            raise PageError(f"page {int(ids[missing][0])} is not in tier {self.name!r}")
        return slots

    def _ready_slots(self, ids: Tensor) -> Tensor:
        slots = self._present_slots(ids)
        storing = self._state[slots] != READY
        if bool(storing.any()):
            raise PageError(f"page {int(ids[storing][0])} is still being stored in tier {self.name!r}")
        return slots

    def _stamp_slots(self, slots: Tensor) -> None:
        n = slots.numel()
        self._stamp[slots] = torch.arange(self._clock, self._clock + n, dtype=torch.int64)
        self._clock += n

    def _release(self, slots: Tensor, ids: Tensor) -> None:
        self._state[slots] = FREE
        self._pins[slots] = 0
        self._page_of[slots] = -1
        self._slot_of[ids] = -1

    def _take_slots(self, n: int) -> Tensor:
        """``n`` free slots, one contiguous ascending run when there is one (so a bulk move is one
        block); grows memory when allowed. Raises before changing any bookkeeping."""
        free = torch.nonzero(self._state == FREE).flatten()
        if free.numel() < n:
            needed = self._num_slots + n - free.numel()
            if self.capacity is not None and needed > self.capacity:
                raise StorageError(
                    f"tier {self.name!r} has room for {self.free_slots} more pages, not {n} "
                    f"(capacity {self.capacity}); evict first"
                )
            target = max(needed, 2 * self._num_slots, INITIAL_SLOTS)
            self._ensure_slots(target if self.capacity is None else min(target, self.capacity))
            free = torch.nonzero(self._state == FREE).flatten()
        return _first_run(free, n)

    def _ensure_slots(self, num_slots: int) -> None:
        old = self._num_slots
        if num_slots <= old:
            return
        self._resize_storage(num_slots)  # may raise (disk full): bookkeeping untouched then
        extra = num_slots - old
        self._page_of = torch.cat([self._page_of, torch.full((extra,), -1, dtype=torch.int64)])
        self._state = torch.cat([self._state, torch.zeros(extra, dtype=torch.int8)])
        self._pins = torch.cat([self._pins, torch.zeros(extra, dtype=torch.int32)])
        self._stamp = torch.cat([self._stamp, torch.zeros(extra, dtype=torch.int64)])
        self._new = torch.cat([self._new, torch.zeros(extra, dtype=torch.bool)])
        self._num_slots = num_slots

    def _grow_ids(self, size: int) -> None:
        old = self._slot_of.numel()
        if size > old:
            extra = max(size, 2 * old) - old
            self._slot_of = torch.cat([self._slot_of, torch.full((extra,), -1, dtype=torch.int64)])


def _first_run(free: Tensor, n: int) -> Tensor:
    """The first run of ``n`` consecutive slots in ``free`` (ascending), else its first ``n``."""
    if n <= 1 or free.numel() <= n:
        return free[:n]
    starts = torch.ones(free.numel(), dtype=torch.bool)
    starts[1:] = free[1:] != free[:-1] + 1
    first = torch.nonzero(starts).flatten()  # index in ``free`` where each run begins
    lengths = torch.diff(first, append=torch.tensor([free.numel()]))
    fits = torch.nonzero(lengths >= n).flatten()
    if fits.numel():
        i = int(first[fits[0]])
        return free[i:i + n]
    return free[:n]
