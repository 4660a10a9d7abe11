"""Slot bookkeeping shared by every built-in tier: page <-> slot maps, states, pins, eviction order.

The protocol speaks int64 CPU tensors; inside, the bookkeeping is numpy arrays indexed by slot or page
id (zero-copy views of the same memory), so each call is a few vectorized operations whatever the
number of pages. NOTE: numpy, not torch, because these arrays are small and indexed many times per
move: a numpy fancy index costs ~0.3 us where a torch one costs ~3-5 us, and that overhead is what
separates a bulk move of 256 pages from a plain memcpy of the same bytes.

Subclasses provide the memory (``_resize_storage``, ``read``, ``write``, ``view``, ``device``,
``_memory``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from attrs import define, field, setters
from torch import Tensor

from icecache.core.errors import ConfigError, PageError, StorageError
from icecache.core.validators import optional_positive
from icecache.storage.base import TierStats
from icecache.storage.layout import PageSpec, as_page_ids, np_all, np_any, np_max, np_min

FREE, STORING, READY = 0, 1, 2
#: NOTE: an unbounded tier grows by an eighth (doubling left up to half of the host tier unused: the
#: largest waste after page padding); reserve() sizes it once when the need is known
GROWTH = 8
#: eviction orders: ``lru`` re-stamps a page on every touch, ``fifo`` only when it is stored
EVICTION_POLICIES = ("lru", "fifo")
#: slots allocated first by a tier that grows (unbounded, or lazily up to its capacity)
INITIAL_SLOTS = 64


def _eviction(instance: Any, attribute: Any, value: str) -> None:
    if value not in EVICTION_POLICIES:
        raise ConfigError(f"eviction must be one of {list(EVICTION_POLICIES)}, got {value!r}")


def _empty(dtype: Any) -> Any:
    return lambda: np.zeros(0, dtype=dtype)


def _ids(page_ids: Tensor | np.ndarray, unique: bool = True) -> np.ndarray:
    if type(page_ids) is np.ndarray and page_ids.dtype == np.int64 and page_ids.ndim == 1:
        # NOTE: the store's internal calls pass ascending int64 arrays: checked in O(n) without a sort or
        # a tensor round trip; anything else (repeats, unsorted) goes through the full check
        a = page_ids
        if a.size > 1 and unique and not np_all(a[1:] > a[:-1]):
            return as_page_ids(torch.from_numpy(a), unique=True).numpy()
        if a.size and int(a[0] if unique else np_min(a)) < 0:
            raise PageError(f"page id {int(np_min(a))} is out of range (negative)")
        return a
    return as_page_ids(page_ids, unique=unique).numpy()


def _tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


# NOTE: no attrs on_setattr hooks: the bookkeeping assigns attributes on every move.
@define(eq=False, on_setattr=setters.NO_OP)
class SlotTier:
    """Implements the :class:`icecache.storage.base.Tier` protocol's bookkeeping over slots."""

    name: str
    spec: PageSpec
    capacity: int | None = field(default=None, validator=optional_positive)
    eviction: str = field(default="lru", validator=_eviction)
    _num_slots: int = field(init=False, default=0)
    _used: int = field(init=False, default=0)  # slots not FREE
    _page_of: np.ndarray = field(init=False, factory=_empty(np.int64))  # [slots], -1 free
    _state: np.ndarray = field(init=False, factory=_empty(np.int8))  # [slots]
    _pins: np.ndarray = field(init=False, factory=_empty(np.int32))  # [slots]
    _stamp: np.ndarray = field(init=False, factory=_empty(np.int64))  # [slots]
    _new: np.ndarray = field(init=False, factory=_empty(np.bool_))  # [slots]
    _slot_of: np.ndarray = field(init=False, factory=_empty(np.int64))  # [ids], -1 absent
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
        return None if self.capacity is None else self.capacity - self._used

    def slot_of(self, page_ids: Tensor) -> Tensor:
        return torch.from_numpy(self._lookup_slots(_ids(page_ids, unique=False)))

    def lookup(self, page_ids: Tensor) -> Tensor:
        slots = self._lookup_slots(_ids(page_ids, unique=False))
        ready = slots >= 0
        ready[ready] = self._state[slots[ready]] == READY
        return torch.from_numpy(ready)

    def resident_ids(self) -> Tensor:
        return _tensor(np.sort(self._page_of[self._state == READY]))

    def evictable(self) -> int:
        return int(np.count_nonzero((self._state == READY) & (self._pins == 0)))

    def in_flight(self) -> Tensor:
        """Ids of pages in flight (being stored, or pinned by a load), ascending int64."""
        busy = (self._state == STORING) | ((self._state == READY) & (self._pins > 0))
        return _tensor(np.sort(self._page_of[busy]))

    # ----- loads ---------------------------------------------------------------------------------
    def prepare_load(self, page_ids: Tensor) -> Tensor:
        ids = _ids(page_ids)
        slots = self._present_slots(ids)
        storing = self._state[slots] != READY
        if np_any(storing):
            raise PageError(f"page {int(ids[storing][0])} is still being stored in tier {self.name!r}")
        self._pins[slots] += 1
        return torch.from_numpy(slots)

    def complete_load(self, page_ids: Tensor) -> None:
        ids = _ids(page_ids)
        slots = self._present_slots(ids)
        unpinned = self._pins[slots] <= 0
        if np_any(unpinned):
            raise PageError(f"page {int(ids[unpinned][0])} is not being loaded from tier {self.name!r}")
        self._pins[slots] -= 1

    # ----- stores --------------------------------------------------------------------------------
    def prepare_store(self, page_ids: Tensor) -> Tensor:
        ids = _ids(page_ids)
        slots = self._lookup_slots(ids)
        present = slots >= 0
        if np_any(present):
            storing = self._state[slots[present]] == STORING
            if np_any(storing):
                raise PageError(f"page {int(ids[present][storing][0])} is already being stored in tier "
                                f"{self.name!r}")
        absent = ~present
        n_new = int(np.count_nonzero(absent))
        if n_new:
            new_ids = ids[absent] if n_new < ids.size else ids
            new_slots = self._take_slots(n_new)  # may grow memory; raises before any change
            self._slot_of[new_ids] = new_slots
            self._page_of[new_slots] = new_ids
            self._new[new_slots] = True
            self._used += n_new
            slots[absent] = new_slots
        if n_new < ids.size:
            self._new[slots[present]] = False
        self._state[slots] = STORING
        return torch.from_numpy(slots)

    def complete_store(self, page_ids: Tensor, success: bool = True) -> None:
        ids = _ids(page_ids)
        slots = self._present_slots(ids)
        bad = self._state[slots] != STORING
        if np_any(bad):
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

    # ----- fused steps of the store's bulk load (numpy ids the store has checked) ---------------------
    # NOTE: one load through the two-phase protocol costs ~30 bookkeeping calls per tier; these do the
    # same state changes in a few array operations. A move that is complete (or queued on the device
    # stream) before control returns has no window in which "in flight" could be observed.
    def ready_slots(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each page that is ready here, ``-1`` where absent or still being stored."""
        slots = self._lookup_slots(ids)
        if not self._num_slots:
            return slots
        return np.where((slots >= 0) & (self._state[slots] == READY), slots, -1)

    def make_room(self, n: int, keep: np.ndarray) -> np.ndarray | None:
        """Evict least recently used unpinned pages, none in slots ``keep``, until ``n`` slots are free.
        Returns the evicted ids, or ``None`` with nothing changed when pins and ``keep`` leave too few."""
        free = self.free_slots
        if free is None or n <= free:
            return np.zeros(0, dtype=np.int64)
        self._pins[keep] += 1
        try:
            if n > free + self.evictable():
                return None
            victims = self.victims(n - free).numpy()
            self._release(self._slot_of[victims], victims)
            return victims
        finally:
            self._pins[keep] -= 1

    def admit(self, ids: np.ndarray) -> np.ndarray:
        """Ready slots for ``ids`` (absent here; room made by :meth:`make_room`), one run when there is
        one. The caller fills them before returning control."""
        slots = self._take_slots(ids.size)
        self._slot_of[ids] = slots
        self._page_of[slots] = ids
        self._state[slots] = READY
        self._used += ids.size
        self._stamp_slots(slots)  # stored now (the order ``fifo`` keeps)
        return slots

    def stamp(self, slots: np.ndarray, *, pin: bool = False) -> None:
        """:meth:`touch` by slot; ``pin`` also pins them (as ``prepare_load`` does)."""
        if self.eviction == "lru":
            self._stamp_slots(slots)
        if pin:
            self._pins[slots] += 1

    def bookkeeping_nbytes(self) -> int:
        """Bytes of the slot and page maps (host memory, whatever the tier's medium)."""
        return sum(a.nbytes for a in (self._page_of, self._state, self._pins, self._stamp, self._new,
                                      self._slot_of))

    def reserve(self, pages: int) -> None:
        """Allocate memory for ``pages`` more pages now (up to ``capacity``), so the writes that follow
        take exactly what they need instead of growing step by step."""
        want = self._used + max(0, int(pages))
        self._ensure_slots(want if self.capacity is None else min(want, self.capacity))

    # ----- eviction ------------------------------------------------------------------------------
    def touch(self, page_ids: Tensor) -> None:
        if self.eviction != "lru":
            return
        self._stamp_slots(self._present_slots(_ids(page_ids)))

    def victims(self, count: int) -> Tensor:
        candidates = np.flatnonzero((self._state == READY) & (self._pins == 0))
        count = max(0, min(int(count), candidates.size))
        if count == 0:
            return torch.zeros(0, dtype=torch.int64)
        stamps = self._stamp[candidates]
        if count < candidates.size:
            part = np.argpartition(stamps, count - 1)[:count]
            order = part[np.argsort(stamps[part], kind="stable")]
        else:
            order = np.argsort(stamps, kind="stable")
        return _tensor(self._page_of[candidates[order]])

    def free(self, page_ids: Tensor) -> None:
        ids = _ids(page_ids)
        slots = self._present_slots(ids)
        busy = (self._state[slots] == STORING) | (self._pins[slots] > 0)
        if np_any(busy):
            raise PageError(f"page {int(ids[busy][0])} is in flight in tier {self.name!r}; it cannot be "
                            "evicted or freed")
        self._release(slots, ids)

    def evict(self, count: int) -> Tensor:
        ids = self.victims(count)
        self.free(ids)
        return ids

    def stats(self) -> TierStats:
        busy = (self._state == STORING) | ((self._state == READY) & (self._pins > 0))
        return TierStats(name=self.name, memory=self._memory(), capacity_pages=self.capacity,
                         resident_pages=int(np.count_nonzero(self._state == READY)),
                         in_flight_pages=int(np.count_nonzero(busy)), page_nbytes=self.spec.page_nbytes,
                         allocated_slots=self._num_slots,
                         details={"eviction": self.eviction, **self._details()})

    # ----- internals -----------------------------------------------------------------------------
    def _lookup_slots(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, ``-1`` where absent (a new array)."""
        if ids.size:
            top = int(np_max(ids))
            if top >= self._slot_of.size:
                self._grow_ids(top + 1)
        return self._slot_of[ids]

    def _present_slots(self, ids: np.ndarray) -> np.ndarray:
        slots = self._lookup_slots(ids)
        missing = slots < 0
        if np_any(missing):
            raise PageError(f"page {int(ids[missing][0])} is not in tier {self.name!r}")
        return slots

    def _stamp_slots(self, slots: np.ndarray) -> None:
        n = slots.size
        self._stamp[slots] = np.arange(self._clock, self._clock + n, dtype=np.int64)
        self._clock += n

    def _release(self, slots: np.ndarray, ids: np.ndarray) -> None:
        self._state[slots] = FREE
        self._pins[slots] = 0
        self._page_of[slots] = -1
        self._slot_of[ids] = -1
        self._used -= slots.size

    def _take_slots(self, n: int) -> np.ndarray:
        """``n`` free slots, one contiguous ascending run when there is one (so a bulk move is one
        block); grows memory when allowed. Raises before changing any bookkeeping."""
        if self._num_slots - self._used < n:
            needed = self._used + n
            if self.capacity is not None and needed > self.capacity:
                raise StorageError(
                    f"tier {self.name!r} has room for {self.free_slots} more pages, not {n} "
                    f"(capacity {self.capacity}); evict first"
                )
            target = max(needed, self._num_slots + self._num_slots // GROWTH, INITIAL_SLOTS)
            self._ensure_slots(target if self.capacity is None else min(target, self.capacity))
        return _first_run(np.flatnonzero(self._state == FREE), n)

    def _ensure_slots(self, num_slots: int) -> None:
        old = self._num_slots
        if num_slots <= old:
            return
        self._resize_storage(num_slots)  # may raise (disk full): bookkeeping untouched then
        extra = num_slots - old
        self._page_of = np.concatenate([self._page_of, np.full(extra, -1, dtype=np.int64)])
        self._state = np.concatenate([self._state, np.zeros(extra, dtype=np.int8)])
        self._pins = np.concatenate([self._pins, np.zeros(extra, dtype=np.int32)])
        self._stamp = np.concatenate([self._stamp, np.zeros(extra, dtype=np.int64)])
        self._new = np.concatenate([self._new, np.zeros(extra, dtype=np.bool_)])
        self._num_slots = num_slots

    def _grow_ids(self, size: int) -> None:
        old = self._slot_of.size
        if size > old:
            extra = max(size, 2 * old, 1024) - old
            self._slot_of = np.concatenate([self._slot_of, np.full(extra, -1, dtype=np.int64)])


def _first_run(free: np.ndarray, n: int) -> np.ndarray:
    """The first run of ``n`` consecutive slots in ``free`` (ascending), else its first ``n``."""
    if n <= 1 or free.size <= n:
        return free[:n].copy()
    if int(free[n - 1]) - int(free[0]) == n - 1:
        return free[:n].copy()  # NOTE: the usual case (a fresh or emptied tier), without the run search
    starts = np.flatnonzero(np.diff(free) != 1) + 1
    first = np.concatenate([[0], starts])  # index in ``free`` where each run begins
    lengths = np.diff(np.concatenate([first, [free.size]]))
    fits = np.flatnonzero(lengths >= n)
    if fits.size:
        i = int(first[fits[0]])
        return free[i:i + n].copy()
    return free[:n].copy()
