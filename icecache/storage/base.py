"""The tier contract: a small two-phase protocol in the style of vLLM v1's offload manager.

A tier keeps page **records** (``[2, S, D]``: keys then values, see :mod:`icecache.storage.layout`)
in **slots** of its own memory, ``[num_slots, 2, S, D]``, and maps page ids to slots.

Conventions for every method:

* ``page_ids``: int64 ``[n]`` (CPU), distinct, non-negative; lists of ints are accepted.
* ``slots``: int64 ``[n]`` (CPU), this tier's slot of each page, in the order of ``page_ids``.
* ``records``: ``[n, 2, S, D]`` in the tier's ``spec.dtype``.

A page moves through states ``absent -> storing -> ready -> (loading) -> absent``:

* ``prepare_store(ids)`` reserves a slot per page (a page already ready keeps its slot) and marks it
  **in flight**; the caller writes the records with ``write(slots, records)``; ``complete_store(ids)``
  makes the pages ready (``success=False`` releases the slots of new pages instead).
* ``prepare_load(ids)`` pins ready pages (**in flight**) and returns their slots; the caller reads with
  ``read(slots)``; ``complete_load(ids)`` unpins. Pins nest.
* ``touch(ids)`` marks pages used (the eviction order); ``victims(count)`` proposes the pages to evict
  (never one in flight); ``free(ids)`` drops pages (raises :class:`PageError` for a page in flight);
  ``evict(count)`` is ``free(victims(count))`` and returns the ids.

Pages in flight (prepared, not completed) are never evicted or freed. A tier does not move data
between tiers; :class:`icecache.storage.store.TieredStore` does, with these calls.

To write a tier, subclass :class:`icecache.storage.slots.SlotTier` (all of the bookkeeping; provide
memory through its public hooks) or :class:`icecache.storage.memory.MemoryTier` (memory in one tensor);
see ``docs/storage.md``, "Writing a tier".
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from attrs import field, frozen
from torch import Tensor

from icecache.storage.layout import PageSpec


@frozen(kw_only=True)
class TierStats:
    """A snapshot of one tier.

    ``memory`` says what backs it: ``"cuda"``, ``"cpu-standin"`` (a CPU tensor standing in for a
    device without CUDA), ``"pinned"``, ``"pageable"`` or ``"file"``.
    """

    name: str
    memory: str
    capacity_pages: int | None
    resident_pages: int
    in_flight_pages: int
    page_nbytes: int
    allocated_slots: int
    details: dict[str, Any] = field(factory=dict)

    @property
    def resident_bytes(self) -> int:
        return self.resident_pages * self.page_nbytes

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "memory": self.memory, "capacity_pages": self.capacity_pages,
                "resident_pages": self.resident_pages, "resident_bytes": self.resident_bytes,
                "in_flight_pages": self.in_flight_pages, "page_nbytes": self.page_nbytes,
                "allocated_slots": self.allocated_slots, **self.details}


@runtime_checkable
class Tier(Protocol):
    """One storage tier. Built by a factory registered through ``icecache_register_tiers``:
    ``factory(config: CacheConfig, **options)``."""

    name: str
    spec: PageSpec
    capacity: int | None  # pages; None: unbounded

    @property
    def device(self) -> torch.device:
        """Where ``read`` returns records and ``write`` expects them."""

    @property
    def free_slots(self) -> int | None:
        """Pages that fit without evicting; ``None`` when unbounded."""

    def lookup(self, page_ids: Tensor) -> Tensor:
        """Bool ``[n]``: the page is ready in this tier."""

    def prepare_load(self, page_ids: Tensor) -> Tensor:
        """Pin ready pages and return their slots; :class:`PageError` names a page not ready here."""

    def complete_load(self, page_ids: Tensor) -> None:
        """Unpin pages pinned by ``prepare_load``."""

    def prepare_store(self, page_ids: Tensor) -> Tensor:
        """Reserve slots (in flight). Raises :class:`StorageError` when they do not fit (evict first) and
        :class:`DiskFullError` when the medium is full; nothing changes then."""

    def complete_store(self, page_ids: Tensor, success: bool = True) -> None:
        """Make stored pages ready, or (``success=False``) drop pages that were new."""

    def touch(self, page_ids: Tensor) -> None:
        """Mark ready pages as just used."""

    def victims(self, count: int) -> Tensor:
        """Up to ``count`` page ids to evict first (ready, not in flight), int64 ``[<= count]``."""

    def evictable(self) -> int:
        """Pages ``victims`` could return (ready, not in flight)."""

    def free(self, page_ids: Tensor) -> None:
        """Drop pages; :class:`PageError` names one absent or in flight (nothing changes then)."""

    def evict(self, count: int) -> Tensor:
        """``free(victims(count))``; returns the evicted ids."""

    def read(self, slots: Tensor, *, out: Tensor | None = None) -> Tensor:
        """Gather records ``[n, 2, S, D]`` of ``slots`` into ``out`` (any device the tier can copy to;
        contiguous) in one bulk operation. A disk tier verifies checksums (:class:`ChecksumError`)."""

    def write(self, slots: Tensor, records: Tensor) -> None:
        """Scatter ``records`` ``[n, 2, S, D]`` into ``slots`` (reserved by ``prepare_store``)."""

    def view(self, start: int, stop: int) -> Tensor | None:
        """A writable contiguous ``[stop - start, 2, S, D]`` view of slots ``start..stop-1``, or ``None``
        when the tier cannot expose its memory (a disk tier keeps checksums)."""

    def slot_of(self, page_ids: Tensor) -> Tensor:
        """Slot of each page, ``-1`` where absent, int64 ``[n]`` (no state change)."""

    def resident_ids(self) -> Tensor:
        """Ids of ready pages, ascending int64."""

    def in_flight(self) -> Tensor:
        """Ids of pages in flight (being stored, or pinned by a load), ascending int64."""

    def stats(self) -> TierStats: ...

    def close(self) -> None:
        """Release memory and files."""
