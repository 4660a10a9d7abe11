"""Logical page ids: allocation, ownership and valid lengths (no data; tiers hold the data).

A page id names one page of one (sequence, layer, KV head) for its whole life, whichever tier
holds its data. Ids are ints in ``[0, capacity)``; allocating takes freed ids first (most
recently freed first), then fresh ones. Bookkeeping is tensors, so every call is vectorized.
"""

from __future__ import annotations

import torch
from attrs import define, field
from torch import Tensor

from icecache.core.errors import PageError, StorageError
from icecache.core.validators import optional_positive
from icecache.storage.layout import as_page_ids


@define(eq=False)
class PagePool:
    """Allocator of page ids with owner ``(sequence, layer, kv_head)`` and valid-slot count per page.

    ``capacity=None`` lets the id space grow without bound. ``lens[id]`` is the number of valid
    token slots (``0`` until the page is written; then ``1..page_size``, so partial pages anywhere).
    """

    capacity: int | None = field(default=None, validator=optional_positive)
    _allocated: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.bool))
    _lens: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int32))
    _owner: Tensor = field(init=False, factory=lambda: torch.zeros(0, 3, dtype=torch.int64))
    _free: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int64))
    _high: int = field(init=False, default=0)

    @property
    def num_allocated(self) -> int:
        return int(self._allocated.sum())

    @property
    def id_space(self) -> int:
        """One more than the largest id ever handed out."""
        return self._high

    def allocate(self, n: int, *, seq: int | Tensor = 0, layer: int | Tensor = 0,
                 head: int | Tensor = 0) -> Tensor:
        """``n`` free page ids, int64 ``[n]``, owned by ``(seq, layer, head)`` (ints or int tensors
        broadcastable to ``[n]``). Raises :class:`StorageError` when a bounded pool is exhausted."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise PageError(f"number of pages to allocate must be a non-negative int, got {n!r}")
        reused = min(n, self._free.numel())
        fresh = n - reused
        if self.capacity is not None and self._high + fresh > self.capacity:
            raise StorageError(
                f"page pool exhausted: {n} pages asked, {self.capacity - self.num_allocated} of "
                f"{self.capacity} free"
            )
        columns = ((seq, "seq"), (layer, "layer"), (head, "head"))
        owner = torch.stack([_owner_column(x, n, name) for x, name in columns], dim=1)  # [n, 3]
        ids = torch.cat([self._free[self._free.numel() - reused:].flip(0),
                         torch.arange(self._high, self._high + fresh, dtype=torch.int64)])
        self._free = self._free[: self._free.numel() - reused]
        self._grow(self._high + fresh)
        self._high += fresh
        self._allocated[ids] = True
        self._lens[ids] = 0
        self._owner[ids] = owner
        return ids

    def free(self, page_ids: Tensor) -> None:
        """Return ``page_ids`` to the pool. Raises :class:`PageError` naming an id that is out of range
        or already free; nothing is freed then."""
        ids = self.check(page_ids)
        self._allocated[ids] = False
        self._lens[ids] = 0
        self._owner[ids] = -1
        self._free = torch.cat([self._free, ids])

    def check(self, page_ids: Tensor | list[int] | int) -> Tensor:
        """``page_ids`` as int64 CPU ``[n]`` (distinct); raises :class:`PageError` naming the first id
        that is out of range or not allocated (freed or never handed out)."""
        ids = as_page_ids(page_ids)
        if ids.numel() == 0:
            return ids
        top = int(ids.max())
        limit = self._high
        if top >= limit:
            bound = f"[0, {limit})" if limit else "(no page allocated yet)"
            raise PageError(f"page id {top} is out of range {bound}")
        dead = ~self._allocated[ids]
        if bool(dead.any()):
            raise PageError(f"page id {int(ids[dead][0])} is not allocated (freed or never handed out)")
        return ids

    def set_lens(self, page_ids: Tensor, lens: Tensor) -> None:
        """Record valid-slot counts (int ``[n]``) of allocated pages."""
        self._lens[page_ids] = lens.to(torch.int32)

    def lens(self, page_ids: Tensor) -> Tensor:
        """Valid slots per page, int32 ``[n]`` (``0`` for a page never written)."""
        return self._lens[self.check(page_ids)]

    def written(self, page_ids: Tensor) -> Tensor:
        """Bool ``[n]``: the page holds data."""
        return self._lens[self.check(page_ids)] > 0

    def owners(self, page_ids: Tensor) -> Tensor:
        """``(seq, layer, kv_head)`` of each page, int64 ``[n, 3]``."""
        return self._owner[self.check(page_ids)]

    def pages_of(self, *, seq: int | None = None, layer: int | None = None,
                 head: int | None = None) -> Tensor:
        """Allocated ids (ascending, int64) whose owner matches every given field."""
        mask = self._allocated.clone()
        for col, want in enumerate((seq, layer, head)):
            if want is not None:
                mask &= self._owner[:, col] == want
        return torch.nonzero(mask).flatten()

    def allocated_ids(self) -> Tensor:
        return torch.nonzero(self._allocated).flatten()

    def _grow(self, size: int) -> None:
        old = self._allocated.numel()
        if size <= old:
            return
        new = max(size, 2 * old, 64)
        if self.capacity is not None:
            new = min(new, self.capacity)
        extra = new - old
        self._allocated = torch.cat([self._allocated, torch.zeros(extra, dtype=torch.bool)])
        self._lens = torch.cat([self._lens, torch.zeros(extra, dtype=torch.int32)])
        self._owner = torch.cat([self._owner, torch.full((extra, 3), -1, dtype=torch.int64)])


def _owner_column(value: int | Tensor, n: int, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.int64).reshape(-1)
    if t.numel() == 1:
        return t.expand(n)
    if t.numel() != n:
        raise PageError(f"{name} has {t.numel()} entries for {n} pages")
    return t
