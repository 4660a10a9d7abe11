"""Slot bookkeeping shared by every built-in tier: page <-> slot maps, states, pins, eviction order.

The protocol speaks int64 CPU tensors; inside, the bookkeeping is numpy arrays indexed by slot or page
id (zero-copy views of the same memory), so each call is a few vectorized operations whatever the
number of pages. NOTE: numpy, not torch, because these arrays are small and indexed many times per
move: a numpy fancy index costs ~0.3 us where a torch one costs ~3-5 us, and that overhead is what
separates a bulk move of 256 pages from a plain memcpy of the same bytes.

This is the documented base class of a tier (``docs/storage.md``, "Writing a tier"). A subclass
provides the memory through public hooks: :meth:`SlotTier.resize_storage`, ``read``, ``write``,
``view``, ``device``, :meth:`SlotTier.memory_kind` (and optionally :meth:`SlotTier.details`,
``close``); the eviction order is a pluggable :class:`~icecache.storage.eviction.EvictionPolicy`
(``eviction=``). A subclass that needs the bookkeeping reads it through public methods
(:meth:`SlotTier.checked_ids`, :meth:`SlotTier.present_slots`, :meth:`SlotTier.page_at`,
:meth:`SlotTier.state_at`, :meth:`SlotTier.pins_at`, :meth:`SlotTier.evictable_slots`); the
arrays behind them are private.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from attrs import Factory, define, field, setters
from torch import Tensor

from icecache.core.errors import PageError, StorageError
from icecache.core.validators import optional_positive
from icecache.storage.base import TierStats
from icecache.storage.eviction import BUILTIN_EVICTIONS, EvictionPolicy, make_eviction
from icecache.storage.layout import PageSpec, as_page_ids, np_all, np_any, np_max, np_min

#: slot states (:meth:`SlotTier.state_at`): a free slot, a page being stored, a ready page
FREE, STORING, READY = 0, 1, 2
#: NOTE: an unbounded tier grows by an eighth (doubling left up to half of the host tier unused: the
#: largest waste after page padding); reserve() sizes it once when the need is known
GROWTH = 8
#: the built-in eviction orders (:mod:`icecache.storage.eviction`; plugins register more)
EVICTION_POLICIES = tuple(BUILTIN_EVICTIONS)
#: slots allocated first by a tier that grows (unbounded, or lazily up to its capacity)
INITIAL_SLOTS = 64


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
    #: a registered eviction policy name (``lru``, ``fifo``, ``lfu``, ``mru``, or a plugin's) or an
    #: :class:`~icecache.storage.eviction.EvictionPolicy` instance
    eviction: str | EvictionPolicy = field(default="lru")
    #: the tier's eviction policy object (built from ``eviction``)
    policy: EvictionPolicy = field(init=False, default=Factory(lambda self: make_eviction(self.eviction),
                                                               takes_self=True))
    _num_slots: int = field(init=False, default=0)
    _used: int = field(init=False, default=0)  # slots not FREE
    _storing: int = field(init=False, default=0)  # slots STORING (0: every present page is ready)
    _page_of: np.ndarray = field(init=False, factory=_empty(np.int64))  # [slots], -1 free
    _state: np.ndarray = field(init=False, factory=_empty(np.int8))  # [slots]
    _pins: np.ndarray = field(init=False, factory=_empty(np.int32))  # [slots]
    _new: np.ndarray = field(init=False, factory=_empty(np.bool_))  # [slots]
    _slot_of: np.ndarray = field(init=False, factory=_empty(np.int64))  # [ids], -1 absent

    # ----- memory, provided by subclasses -------------------------------------------------------
    def resize_storage(self, num_slots: int) -> None:
        """Hook: make room for ``num_slots`` slots (only ever grows; keep the bytes of slots below the
        old count). May raise (e.g. :class:`~icecache.core.errors.DiskFullError`): the bookkeeping is
        untouched then."""
        raise NotImplementedError

    def memory_kind(self) -> str:
        """Hook: what backs the tier, for :class:`~icecache.storage.base.TierStats` ``memory``
        (``"cuda"``, ``"pinned"``, ``"pageable"``, ``"file"``, or the subclass's own word)."""
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """Hook: extra entries of :class:`~icecache.storage.base.TierStats` ``details``."""
        return {}

    # ----- bookkeeping, for subclasses -----------------------------------------------------------
    @staticmethod
    def checked_ids(page_ids: Tensor | np.ndarray, *, unique: bool = True) -> np.ndarray:
        """``page_ids`` as an int64 numpy array; :class:`PageError` for a negative or (``unique``)
        repeated id."""
        return _ids(page_ids, unique=unique)

    def present_slots(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each page in ``ids`` (numpy, from :meth:`checked_ids`); :class:`PageError` names one
        absent (ready or being stored both count as present)."""
        return self._present_slots(ids)

    def page_at(self, slots: np.ndarray) -> np.ndarray:
        """Page id in each slot, ``-1`` for a free slot."""
        return self._page_of[slots]

    def state_at(self, slots: np.ndarray) -> np.ndarray:
        """State of each slot: :data:`FREE`, :data:`STORING` or :data:`READY` (int8)."""
        return self._state[slots]

    def pins_at(self, slots: np.ndarray) -> np.ndarray:
        """Load pins held on each slot (int32)."""
        return self._pins[slots]

    def evictable_slots(self) -> np.ndarray:
        """Slots of the pages :meth:`victims` may propose (ready, not pinned), ascending."""
        return np.flatnonzero((self._state == READY) & (self._pins == 0))

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
        self._storing += ids.size  # NOTE: none was STORING (checked above)
        return torch.from_numpy(slots)

    def complete_store(self, page_ids: Tensor, success: bool = True) -> None:
        ids = _ids(page_ids)
        slots = self._present_slots(ids)
        bad = self._state[slots] != STORING
        if np_any(bad):
            raise PageError(f"page {int(ids[bad][0])} is not being stored in tier {self.name!r}")
        self._storing -= ids.size  # every one was STORING; each becomes READY or FREE below
        if success:
            self._state[slots] = READY
            self._new[slots] = False
            self.policy.stored(slots)
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
    def ready_slots(self, ids: np.ndarray, *, top: int | None = None) -> np.ndarray:
        """Slot of each page that is ready here, ``-1`` where absent or still being stored (a new
        array). ``top``: the largest of ``ids`` when the caller knows it (ascending ids)."""
        slots = self._lookup_slots(ids, top=top)
        if not self._storing or not self._num_slots:
            return slots  # NOTE: nothing is being stored: present means ready (one fancy index)
        return np.where((slots >= 0) & (self._state[slots] == READY), slots, -1)

    def settled(self) -> bool:
        """No page is being stored here: every present page is ready."""
        return not self._storing

    def make_room(self, n: int, keep: np.ndarray) -> np.ndarray | None:
        """Evict unpinned pages in the eviction policy's order, none in slots ``keep``, until ``n`` slots
        are free.
        Returns the evicted ids, or ``None`` with nothing changed when pins and ``keep`` leave too few."""
        free = self.free_slots
        if free is None or n <= free:
            return np.zeros(0, dtype=np.int64)
        self._pins[keep] += 1
        try:
            # NOTE: victims() in place, with the candidates counted once (the base methods' results)
            candidates = self.evictable_slots()
            if n - free > candidates.size:
                return None
            slots = self.policy.victims(candidates, n - free)
            victims = self._page_of[slots]
            self._release(slots, victims)
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
        self.policy.stored(slots)  # stored now (the order ``fifo`` keeps)
        return slots

    def stamp(self, slots: np.ndarray, *, pin: bool = False) -> None:
        """:meth:`touch` by slot; ``pin`` also pins them (as ``prepare_load`` does)."""
        self.policy.touched(slots)
        if pin:
            self._pins[slots] += 1

    def bookkeeping_nbytes(self) -> int:
        """Bytes of the slot and page maps (host memory, whatever the tier's medium)."""
        return self.policy.nbytes() + sum(a.nbytes for a in (self._page_of, self._state, self._pins,
                                                             self._new, self._slot_of))

    def reserve(self, pages: int) -> None:
        """Allocate memory for ``pages`` more pages now (up to ``capacity``), so the writes that follow
        take exactly what they need instead of growing step by step."""
        want = self._used + max(0, int(pages))
        self._ensure_slots(want if self.capacity is None else min(want, self.capacity))

    # ----- eviction ------------------------------------------------------------------------------
    def touch(self, page_ids: Tensor) -> None:
        self.policy.touched(self._present_slots(_ids(page_ids)))

    def victims(self, count: int) -> Tensor:
        candidates = self.evictable_slots()
        count = max(0, min(int(count), candidates.size))
        if count == 0:
            return torch.zeros(0, dtype=torch.int64)
        return _tensor(self._page_of[self.policy.victims(candidates, count)])

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
        return TierStats(name=self.name, memory=self.memory_kind(), capacity_pages=self.capacity,
                         resident_pages=int(np.count_nonzero(self._state == READY)),
                         in_flight_pages=int(np.count_nonzero(busy)), page_nbytes=self.spec.page_nbytes,
                         allocated_slots=self._num_slots,
                         details={"eviction": self.policy.name, **self.details()})

    # ----- internals -----------------------------------------------------------------------------
    def _lookup_slots(self, ids: np.ndarray, *, top: int | None = None) -> np.ndarray:
        """Slot of each id, ``-1`` where absent (a new array); ``top``: ``max(ids)`` when known."""
        if ids.size:
            if top is None:
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

    def _release(self, slots: np.ndarray, ids: np.ndarray) -> None:
        self.policy.released(slots)
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
        if not self._used:
            return np.arange(n, dtype=np.int64)  # NOTE: an empty tier's first run, without the search
        return _first_run(np.flatnonzero(self._state == FREE), n)

    def _ensure_slots(self, num_slots: int) -> None:
        old = self._num_slots
        if num_slots <= old:
            return
        self.resize_storage(num_slots)  # may raise (disk full): bookkeeping untouched then
        extra = num_slots - old
        self._page_of = np.concatenate([self._page_of, np.full(extra, -1, dtype=np.int64)])
        self._state = np.concatenate([self._state, np.zeros(extra, dtype=np.int8)])
        self._pins = np.concatenate([self._pins, np.zeros(extra, dtype=np.int32)])
        self.policy.resize(num_slots)
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
