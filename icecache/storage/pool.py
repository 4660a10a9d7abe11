"""Logical page ids: allocation, ownership and valid lengths (no data; tiers hold the data).

A page id names one page of one (sequence, layer, KV head) for its whole life, whichever tier
holds its data. Ids are ints in ``[0, capacity)``; allocating takes freed ids first (most
recently freed first), then fresh ones. Bookkeeping is numpy arrays (cheap to index on every move),
so each call is vectorized; the API speaks int64 CPU tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from attrs import define, field, setters
from torch import Tensor

from icecache.core.errors import PageError, StorageError
from icecache.core.validators import optional_positive
from icecache.storage.layout import as_page_ids, np_any, np_max, np_min


@define(eq=False, on_setattr=setters.NO_OP)
class PagePool:
    """Allocator of page ids with owner ``(sequence, layer, kv_head)`` and valid-slot count per page.

    ``capacity=None`` lets the id space grow without bound. ``lens`` is the number of valid token
    slots per page (``0`` until the page is written; then ``1..page_size``: partial pages anywhere).
    """

    capacity: int | None = field(default=None, validator=optional_positive)
    _allocated: np.ndarray = field(init=False, factory=lambda: np.zeros(0, dtype=np.bool_))
    _lens: np.ndarray = field(init=False, factory=lambda: np.zeros(0, dtype=np.int32))
    _owner: np.ndarray = field(init=False, factory=lambda: np.zeros((0, 3), dtype=np.int64))
    _free: np.ndarray = field(init=False, factory=lambda: np.zeros(0, dtype=np.int64))
    _high: int = field(init=False, default=0)
    _count: int = field(init=False, default=0)

    @property
    def num_allocated(self) -> int:
        return self._count

    @property
    def id_space(self) -> int:
        """One more than the largest id ever handed out."""
        return self._high

    def allocate(self, n: int, *, seq: int | Tensor = 0, layer: int | Tensor = 0,
                 head: int | Tensor = 0) -> Tensor:
        """``n`` free page ids, int64 ``[n]``, owned by ``(seq, layer, head)`` (ints or int tensors
        ``[n]``). Raises :class:`StorageError` when a bounded pool is exhausted."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise PageError(f"number of pages to allocate must be a non-negative int, got {n!r}")
        reused = min(n, self._free.size)
        fresh = n - reused
        if self.capacity is not None and self._high + fresh > self.capacity:
            raise StorageError(
                f"page pool exhausted: {n} pages asked, {self.capacity - self._count} of "
                f"{self.capacity} free"
            )
        columns = ((seq, "seq"), (layer, "layer"), (head, "head"))
        owner = np.stack([_owner_column(x, n, name) for x, name in columns], axis=1)  # [n, 3]
        ids = np.concatenate([self._free[self._free.size - reused:][::-1],
                              np.arange(self._high, self._high + fresh, dtype=np.int64)])
        self._free = self._free[: self._free.size - reused]
        self._grow(self._high + fresh)
        self._high += fresh
        self._allocated[ids] = True
        self._lens[ids] = 0
        self._owner[ids] = owner
        self._count += n
        return torch.from_numpy(ids)

    def free(self, page_ids: Tensor) -> None:
        """Return ``page_ids`` to the pool. Raises :class:`PageError` naming an id that is out of range
        or already free; nothing is freed then."""
        ids = self.check(page_ids).numpy()
        self._allocated[ids] = False
        self._lens[ids] = 0
        self._owner[ids] = -1
        self._free = np.concatenate([self._free, ids])
        self._count -= ids.size

    def check(self, page_ids: Tensor | list[int] | int, *, written: bool = False) -> Tensor:
        """``page_ids`` as int64 CPU ``[n]`` (distinct); raises :class:`PageError` naming the first id
        that is out of range or not allocated (freed or never handed out), or (``written=True``) that
        holds no data yet."""
        ids = as_page_ids(page_ids)
        a = ids.numpy()
        if a.size == 0:
            return ids
        top = int(np_max(a))
        if top >= self._high:
            bound = f"[0, {self._high})" if self._high else "(no page allocated yet)"
            raise PageError(f"page id {top} is out of range {bound}")
        dead = ~self._allocated[a]
        if np_any(dead):
            raise PageError(f"page id {int(a[dead][0])} is not allocated (freed or never handed out)")
        if written:
            empty = self._lens[a] == 0
            if np_any(empty):
                raise PageError(f"page id {int(a[empty][0])} has no data (never written)")
        return ids

    def check_written(self, ids: np.ndarray) -> None:
        """:meth:`check` (``written=True``) for numpy ids in any order, repeats allowed (slot reads)."""
        if ids.size == 0:
            return
        if int(np_min(ids)) < 0 or int(np_max(ids)) >= self._high or np_any(~self._allocated[ids]) or \
                np_any(self._lens[ids] == 0):
            self.check(torch.from_numpy(np.unique(ids)), written=True)  # raises, naming the id

    def check_ascending(self, ids: np.ndarray, *, written: bool = False) -> None:
        """:meth:`check` for distinct ascending numpy ids (the store's loads), without re-sorting."""
        if ids.size == 0:
            return
        low, top = int(ids[0]), int(ids[-1])
        if low < 0 or top >= self._high:
            self.check(torch.from_numpy(ids), written=written)  # raises, naming the id
        if written:
            # NOTE: a written length implies an allocated id (allocate and free zero it): one test
            if np.count_nonzero(self._lens[ids]) < ids.size:
                self.check(torch.from_numpy(ids), written=True)  # raises, naming the id
        elif np.count_nonzero(self._allocated[ids]) < ids.size:
            self.check(torch.from_numpy(ids))  # raises, naming the id

    def nbytes(self) -> int:
        """Bytes of the id maps (allocation, lengths, owners, free list)."""
        return sum(a.nbytes for a in (self._allocated, self._lens, self._owner, self._free))

    def set_lens(self, page_ids: Tensor, lens: Tensor) -> None:
        """Record valid-slot counts (int ``[n]``) of allocated pages."""
        self._lens[page_ids.numpy()] = lens.numpy()

    def written_lens(self, ids: np.ndarray) -> np.ndarray:
        """Valid slots of pages ``ids`` (numpy, any order, repeats allowed) that the caller has checked
        (e.g. loaded), int32; no check here."""
        return self._lens[ids]

    def lens(self, page_ids: Tensor) -> Tensor:
        """Valid slots per page, int32 ``[n]`` (``0`` for a page never written)."""
        return torch.from_numpy(self._lens[self.check(page_ids).numpy()])

    def owners(self, page_ids: Tensor) -> Tensor:
        """``(seq, layer, kv_head)`` of each page, int64 ``[n, 3]``."""
        return torch.from_numpy(self._owner[self.check(page_ids).numpy()])

    def pages_of(self, *, seq: int | None = None, layer: int | None = None,
                 head: int | None = None) -> Tensor:
        """Allocated ids (ascending, int64) whose owner matches every given field."""
        mask = self._allocated.copy()
        for col, want in enumerate((seq, layer, head)):
            if want is not None:
                mask &= self._owner[:, col] == want
        return torch.from_numpy(np.flatnonzero(mask).astype(np.int64))

    def allocated_ids(self) -> Tensor:
        return torch.from_numpy(np.flatnonzero(self._allocated).astype(np.int64))

    def _grow(self, size: int) -> None:
        old = self._allocated.size
        if size <= old:
            return
        new = max(size, 2 * old, 64)
        if self.capacity is not None:
            new = min(new, self.capacity)
        extra = new - old
        self._allocated = np.concatenate([self._allocated, np.zeros(extra, dtype=np.bool_)])
        self._lens = np.concatenate([self._lens, np.zeros(extra, dtype=np.int32)])
        self._owner = np.concatenate([self._owner, np.full((extra, 3), -1, dtype=np.int64)])


def _owner_column(value: int | Tensor, n: int, name: str) -> np.ndarray:
    t = torch.as_tensor(value).to("cpu", torch.int64).reshape(-1).numpy()
    if t.size == 1:
        return np.broadcast_to(t, (n,))
    if t.size != n:
        raise PageError(f"{name} has {t.size} entries for {n} pages")
    return t
