"""A stack of tiers composed by name: writes go to backing tiers, loads bring pages to the device.

With tiers ``(t0, t1, ..., tk)`` (default ``("device", "host", "disk")``):

* ``t0`` is the **cache** that attention reads: it holds *copies* of pages, bounded, evicted LRU.
  Evicting from it drops a copy (no bytes move).
* ``t1..tk`` are the **backing** tiers: each written page lives in exactly one of them. New pages go
  to ``t1``; when it is full its least recently used pages spill to ``t2`` and so on (host -> disk).
  When the last one is full, the write fails with :class:`StorageError` and nothing changes.
* A single-tier stack (e.g. ``("device",)``) keeps every page in that tier; ``load`` just pins/touches.

Every move is bulk: gathers are one ``index_select`` per source tier into one contiguous staging
buffer (pinned on CUDA), one copy to the device, one ``index_copy_`` scatter; when the device slots
are one contiguous run the pages go straight into them. No loop runs per page. A load whose pages
all come from one memory tier takes :mod:`icecache.storage.fused_load` (the same state changes
without the per-call overhead of the two-phase protocol).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pluggy
import torch
from attrs import frozen
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, PageError, StorageError, TensorSpecError
from icecache.core.page_table import PageTable
from icecache.storage.base import Tier
from icecache.storage.eviction import resolve_eviction_option
from icecache.storage.fused_load import fused_load
from icecache.storage.layout import as_page_ids, contiguous_run, np_all, np_max, np_min
from icecache.storage.memory import MemoryTier
from icecache.storage.pool import PagePool
from icecache.storage.staging import Stager
from icecache.storage.stats import MOVE_KINDS, MoveCounter, MoveRecord, StoreStats
from icecache.storage.uva import copy_rows

DEFAULT_STACK: tuple[str, ...] = ("device", "host", "disk")


@frozen
class DevicePool:
    """The cache tier's memory: ``kv`` ``[num_slots, 2, S, D]``, ``k`` and ``v`` ``[num_slots, S, D]``
    views of it (page stride ``2 * S * D``). Index them with slots from :meth:`TieredStore.load`."""

    kv: Tensor
    k: Tensor
    v: Tensor


class TieredStore:
    """Pages of K/V in an ordered stack of tiers. Build with :meth:`build` or :meth:`from_policy`.

    ``hook`` (a pluggy hook relay, e.g. ``policy.hook``) receives ``icecache_pages_loaded`` and
    ``icecache_pages_evicted``.
    """

    def __init__(self, tiers: Sequence[Tier], *, hook: Any = None, max_pages: int | None = None,
                 transfer: str = "auto"):
        tiers = tuple(tiers)
        if not tiers:
            raise ConfigError("a store needs at least one tier, got ()")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"tier names must be distinct, got {names}")
        specs = {t.spec for t in tiers}
        if len(specs) != 1:
            raise ConfigError(f"tiers disagree on the page layout: {sorted(map(repr, specs))}")
        self.tiers = tiers
        self.transfer = _transfer_mode(transfer, tiers[0].device)
        self.spec = tiers[0].spec
        self.cache: Tier | None = tiers[0] if len(tiers) > 1 else None
        self.backing: tuple[Tier, ...] = tiers[1:] or tiers
        self.pool = PagePool(capacity=max_pages)
        self.hook = hook
        self._stager = Stager(self.spec, self.tiers[0].device)
        #: take :func:`~icecache.storage.fused_load.fused_load` when it applies (False: always the
        #: two-phase protocol; the same results, kept for comparison and tests)
        self.fused_load = True
        self._moves = {k: MoveCounter() for k in MOVE_KINDS}
        self._last: dict[str, MoveRecord] = {}
        self._closed = False

    # ----- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, config: CacheConfig, tiers: Sequence[str] = DEFAULT_STACK, *, head_dim: int | None = None,
              options: dict[str, dict[str, Any]] | None = None,
              plugin_manager: pluggy.PluginManager | None = None, max_pages: int | None = None,
              transfer: str = "auto") -> TieredStore:
        """Create tiers by registered name (``factory(config, **options[name])``) with capacities from
        ``config.tiers``; ``head_dim`` overrides ``config.geometry.head_dim``. An ``eviction`` option may
        name a policy registered through ``icecache_register_evictions``."""
        from icecache.core.plugins import build_registry, get_plugin_manager

        pm = plugin_manager or get_plugin_manager()
        registry = build_registry(pm)
        options = options or {}
        extra = {} if head_dim is None else {"head_dim": head_dim}
        made: list[Tier] = []
        try:
            for name in tiers:
                opts = resolve_eviction_option({**extra, **options.get(name, {})}, registry)
                made.append(registry.create("tier", name, config, **opts))
            return cls(made, hook=pm.hook, max_pages=max_pages, transfer=transfer)
        except BaseException:
            for tier in made:
                tier.close()
            raise

    @classmethod
    def from_policy(cls, policy: Any, *, head_dim: int | None = None, max_pages: int | None = None,
                    transfer: str = "auto") -> TieredStore:
        """The tiers of a :class:`~icecache.core.policy.CachePolicy` (``policy.tiers``), with its
        observer hooks."""
        made: list[Tier] = []
        try:
            for name in policy.tiers:
                if head_dim is None:
                    made.append(policy.make_tier(name))
                else:
                    made.append(policy.registry.create("tier", name, policy.config,
                                                       **{**policy.tier_options(name), "head_dim": head_dim}))
            return cls(made, hook=policy.hook, max_pages=max_pages, transfer=transfer)
        except BaseException:
            for tier in made:
                tier.close()
            raise

    # ----- page ids --------------------------------------------------------------------------------
    def allocate(self, n: int, *, seq: int | Tensor = 0, layer: int | Tensor = 0,
                 head: int | Tensor = 0) -> Tensor:
        """``n`` page ids, int64 ``[n]``, owned by ``(seq, layer, head)`` (ints or int tensors ``[n]``)."""
        self._check_open()
        return self.pool.allocate(n, seq=seq, layer=layer, head=head)

    def free(self, page_ids: Tensor) -> None:
        """Drop pages from every tier and return their ids. :class:`PageError` names a bad id or a page
        in flight (pinned); nothing is freed then."""
        self._check_open()
        ids = self.pool.check(page_ids)
        found = []
        for tier in self.tiers:
            held = ids[tier.slot_of(ids) >= 0]
            busy = torch.isin(held, tier.in_flight())
            if bool(busy.any()):
                raise PageError(f"page {int(held[busy][0])} is in flight in tier {tier.name!r}; release it "
                                "before freeing")
            found.append(held)
        for tier, held in zip(self.tiers, found, strict=True):
            if held.numel():
                tier.free(held)
        self.pool.free(ids)

    # ----- moves -----------------------------------------------------------------------------------
    def write_pages(self, page_ids: Tensor, k: Tensor, v: Tensor, lens: Tensor | None = None) -> None:
        """Offload (store) pages: ``k``, ``v`` ``[n, S, D]`` in the store dtype, on the CPU or the cache
        device; ``lens`` int ``[n]`` valid slots per page (default ``S``). New pages go to the first
        backing tier (spilling its LRU pages down when full); a page written before is rewritten
        where it lives, and in the device tier too if it holds a copy.

        Raises :class:`TensorSpecError` (bad tensors), :class:`PageError` (bad ids),
        :class:`StorageError` (no room) or :class:`DiskFullError`, with nothing changed."""
        self._check_open()
        ids = self.pool.check(page_ids)
        n = ids.numel()
        self.spec.check_kv(k, v, n, (torch.device("cpu"), self.tiers[0].device))
        self._stager.wait()  # NOTE: a queued device read of a host slot must finish before it is reused
        lens = self.spec.check_lens(lens, n)
        if n == 0:
            return
        records = torch.stack([k, v], dim=1)  # [n, 2, S, D] on the caller's device
        cpu_records = records.to("cpu")
        new = self._locate(ids) < 0
        if bool(new.any()):
            self._place(0, ids[new], cpu_records[new])  # may raise: nothing changed yet
        # NOTE: located again, after placing: making room may have spilled pages rewritten here.
        loc = torch.where(new, -1, self._locate(ids))
        for i, tier in enumerate(self.backing):
            here = loc == i
            if bool(here.any()):
                self._store_into(tier, ids[here], cpu_records[here], kind="write")
        if self.cache is not None:
            cached = self.cache.lookup(ids)
            if bool(cached.any()):
                self._writethrough(ids[cached], records[cached])
        self.pool.set_lens(ids, lens)

    def load(self, page_ids: Tensor, *, pin: bool = False) -> Tensor:
        """Make pages resident in the device tier; returns their device slots, int64 ``[n]`` (CPU), in
        the order of ``page_ids`` (repeats allowed). Missing pages are gathered from their backing
        tiers and moved to the device in bulk (see ``transfer``); least recently used unpinned pages
        are evicted to make room. ``pin=True`` keeps the pages from eviction until :meth:`release`.
        On CUDA the move is asynchronous on the current stream."""
        self._check_open()
        if isinstance(page_ids, Tensor) and page_ids.dtype == torch.int64 and page_ids.device.type == "cpu" \
                and page_ids.dim() == 1:
            a = page_ids.numpy()  # NOTE: negative ids are caught by check_ascending (the smallest is first)
        else:
            a = as_page_ids(page_ids, unique=False).numpy()
        uniq = _distinct(a)
        self.pool.check_ascending(uniq, written=True)
        # NOTE: from here on the tiers get numpy ids (checked above), skipping their own validation.
        # Each distinct page is handled once, in ascending id order; the slots come back in the caller's
        # order by one lookup of the caller's ids (every one of them is resident then).
        if self.cache is None:
            tier = self.backing[0]
            slots = tier.prepare_load(uniq)
            tier.touch(uniq)
            if not pin:
                tier.complete_load(uniq)
            return slots if uniq is a else tier.slot_of(torch.from_numpy(a))
        fast = fused_load(self, uniq, a, pin=pin) if self.fused_load else None
        if fast is not None:
            return fast
        cache = self.cache
        resident = cache.lookup(uniq).numpy()
        if not np_all(resident):
            missing = uniq[~resident]
            free = cache.free_slots
            # NOTE: pinned so that making room for the others cannot evict them (only needed then)
            held = uniq[resident] if free is not None and missing.size > free else None
            if held is not None:
                cache.prepare_load(held)
            try:
                self._bring_in(missing)
            finally:
                if held is not None:
                    cache.complete_load(held)
        if pin:
            cache.prepare_load(uniq)
        cache.touch(uniq)
        return cache.slot_of(torch.from_numpy(a))

    def release(self, page_ids: Tensor) -> None:
        """Unpin pages pinned by ``load(..., pin=True)`` (once per pin)."""
        self._check_open()
        tier = self.cache if self.cache is not None else self.backing[0]
        tier.complete_load(as_page_ids(page_ids))

    def evict(self, page_ids: Tensor) -> None:
        """Drop the device tier's copies of ``page_ids`` (those it holds). :class:`PageError` for a pinned
        page. The backing copy stays."""
        self._check_open()
        if self.cache is None:
            return
        ids = self.pool.check(page_ids)
        held = ids[self.cache.lookup(ids)]
        if held.numel():
            self.cache.free(held)
            self._evicted(self.cache, held)

    def read_pages(self, page_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(k, v, lens)`` of written pages from their backing tiers: ``[n, S, D]`` each on the CPU and
        int32 ``[n]`` (verifies disk checksums)."""
        self._check_open()
        ids = self.pool.check(page_ids, written=True)
        lens = self.pool.lens(ids)
        loc = self._locate(ids)
        order = torch.argsort(loc, stable=True)
        out = self.spec.empty(ids.numel())
        a = 0
        for i, tier in enumerate(self.backing):
            sub = ids[order][loc[order] == i]
            if sub.numel():
                slots = tier.prepare_load(sub)
                try:
                    tier.read(slots, out=out[a:a + sub.numel()])
                finally:
                    tier.complete_load(sub)
                a += sub.numel()
        records = torch.empty_like(out)
        records[order] = out
        return records[:, 0].contiguous(), records[:, 1].contiguous(), lens

    def read_keys(self, page_ids: Tensor, *, zero_missing: bool = True) -> Tensor:
        """The key halves of written pages ``page_ids`` int64 ``[M]`` (``-1``: zeros, repeats allowed) from
        their backing tiers: ``[M, S, D]`` on the CPU, one gather of whole ``S x D`` blocks per tier (what a
        page index's exact rescoring reads). ``zero_missing=False``: the ``-1`` entries may hold any
        finite values (a caller that masks them saves a pass over the result)."""
        self._check_open()
        ids = torch.as_tensor(page_ids, dtype=torch.int64).cpu().reshape(-1)
        S, D = self.spec.page_size, self.spec.head_dim
        where = (ids >= 0).nonzero()[:, 0]
        sub = ids[where]
        if sub.numel() == 0:
            return torch.zeros(ids.numel(), S, D, dtype=self.spec.dtype)
        self.pool.check_written(sub.numpy())
        tier = self.backing[0]
        raw = _raw(tier)
        if len(self.backing) == 1 and raw is not None:
            # NOTE: the usual case (one memory tier): one gather is the answer, the -1 entries read a
            # written page and are zeroed after (cheaper than zeros + index_copy_ of the rest)
            safe = torch.where(ids >= 0, ids, sub[0])
            keys = raw[:, 0].index_select(0, tier.slot_of(safe).to(raw.device)).cpu()
            if zero_missing and sub.numel() < ids.numel():
                keys.masked_fill_((ids < 0)[:, None, None], 0)
            return keys
        # NOTE: zeros only here: the one-tier path above fills its own answer (a zeroed [M, S, D] per
        # query was a pass as large as the gather itself)
        out = torch.zeros(ids.numel(), S, D, dtype=self.spec.dtype)
        loc = self._locate(sub) if len(self.backing) > 1 else torch.zeros(sub.numel(), dtype=torch.int64)
        for i, tier in enumerate(self.backing):  # a loop over tiers, not pages
            here = (loc == i).nonzero()[:, 0]
            if here.numel() == 0:
                continue
            part = sub[here]
            raw = _raw(tier)
            if raw is not None:
                keys = raw[:, 0].index_select(0, tier.slot_of(part).to(raw.device))
            else:
                uniq, inv = torch.unique(part, return_inverse=True)
                tier_slots = tier.prepare_load(uniq)
                try:
                    keys = tier.read(tier_slots)[inv, 0]
                finally:
                    tier.complete_load(uniq)
            out.index_copy_(0, where[here], keys.cpu())
        return out

    def read_tokens(self, page_ids: Tensor, slots: Tensor, *, values: bool = False) -> Tensor:
        """Keys (``values=True``: keys and values) of single token slots from the backing tiers:
        ``page_ids`` and ``slots`` int64 ``[M]`` (repeats allowed) -> ``[M, D]`` (or ``[M, 2, D]``) on the
        CPU. One gather per backing tier (an ``index_select`` of rows for a memory tier, read in place;
        another tier, e.g. disk with its checksums, reads each distinct page once)."""
        self._check_open()
        ids = torch.as_tensor(page_ids, dtype=torch.int64).cpu().reshape(-1)
        slot = torch.as_tensor(slots, dtype=torch.int64).cpu().reshape(-1)
        M, S, D = ids.numel(), self.spec.page_size, self.spec.head_dim
        out = torch.empty((M, 2, D) if values else (M, D), dtype=self.spec.dtype)
        if M == 0:
            return out
        if bool(((slot < 0) | (slot >= S)).any()):
            raise PageError(f"token slots must lie in [0, {S}), got {slot.min().item()}..{slot.max().item()}")
        self.pool.check_written(ids.numpy())
        loc = self._locate(ids) if len(self.backing) > 1 else torch.zeros(M, dtype=torch.int64)
        for i, tier in enumerate(self.backing):  # a loop over tiers, not pages
            here = (loc == i).nonzero()[:, 0] if len(self.backing) > 1 else None
            sub = ids if here is None else ids[here]
            if sub.numel() == 0:
                continue
            sub_slot = slot if here is None else slot[here]
            raw = _raw(tier)
            if raw is not None:
                # NOTE: rows of [slots * 2 * S, D]: one index_select (2-D advanced indexing is ~10x slower)
                base = tier.slot_of(sub) * (2 * S) + sub_slot
                rows = raw.view(-1, D)
                if values:  # K and V rows interleaved: one gather, no stack
                    pair = torch.stack([base, base + S], dim=1).reshape(-1)  # [2M]
                    rec = rows.index_select(0, pair.to(rows.device)).view(-1, 2, D)
                else:
                    rec = rows.index_select(0, base.to(rows.device))
            else:
                uniq, inv = torch.unique(sub, return_inverse=True)
                tier_slots = tier.prepare_load(uniq)
                try:
                    rec = tier.read(tier_slots)[inv, :, sub_slot]
                finally:
                    tier.complete_load(uniq)
                rec = rec if values else rec[:, 0]
            if here is None:
                return rec.cpu()  # NOTE: one backing tier: the gather is the answer, no second copy
            out.index_copy_(0, here, rec.cpu())
        return out

    def reserve(self, pages: int) -> None:
        """Allocate room for ``pages`` more pages in the first backing tier now (up to its capacity), so
        a large write (a prefill) does not grow it step by step."""
        self._check_open()
        reserve = getattr(self.backing[0], "reserve", None)
        if callable(reserve):
            reserve(pages)

    def page_table(self, pages: Tensor, *, pin: bool = False) -> PageTable:
        """Load the pages of padded lists ``pages`` int ``[R, K]`` (``-1`` padding) and return a
        :class:`PageTable` over device slots (``page_lens`` from the written lengths), on the device.
        NOTE: built in numpy (a few operations on the ``R x K`` entries; the torch build of the same
        table cost more than the load) and moved to the device as one int32 buffer, one copy."""
        self._check_open()
        lists = torch.as_tensor(pages).to("cpu", torch.int64)
        if lists.dim() != 2:
            raise TensorSpecError(f"pages must be padded lists [R, K], got shape {tuple(lists.shape)}")
        a = lists.numpy()
        R = a.shape[0]
        valid = a >= 0
        flat = a[valid]  # [nnz] row by row: the CSR order
        nnz = flat.size
        buf = np.empty(2 * R + 1 + 2 * nnz, dtype=np.int32)  # indptr | indices | last_page_len | page_lens
        indptr, indices = buf[:R + 1], buf[R + 1:R + 1 + nnz]
        last, lens = buf[R + 1 + nnz:2 * R + 1 + nnz], buf[2 * R + 1 + nnz:]
        indices[:] = self.load(torch.from_numpy(flat), pin=pin).numpy()  # ids checked, repeats allowed
        lens[:] = self.pool.written_lens(flat)
        indptr[0] = 0
        np.cumsum(np.count_nonzero(valid, axis=1), out=indptr[1:])
        last[:] = 0
        rows = indptr[1:] > indptr[:-1]  # rows with pages: their last page's length
        last[rows] = lens[indptr[1:][rows] - 1]
        dev = torch.from_numpy(buf).to(self.tiers[0].device)
        return PageTable(indptr=dev[:R + 1], indices=dev[R + 1:R + 1 + nnz],
                         last_page_len=dev[R + 1 + nnz:2 * R + 1 + nnz], page_size=self.spec.page_size,
                         page_lens=dev[2 * R + 1 + nnz:])

    # ----- views and stats -------------------------------------------------------------------------
    @property
    def device_pool(self) -> DevicePool:
        """K/V memory of the first tier (a bounded device tier never reallocates it)."""
        kv = self.tiers[0].data
        return DevicePool(kv=kv, k=kv[:, 0], v=kv[:, 1])

    def where(self, page_ids: Tensor) -> list[str | None]:
        """Name of the backing tier holding each page (``None``: not written)."""
        loc = self._locate(self.pool.check(page_ids))
        return [None if i < 0 else self.backing[i].name for i in loc.tolist()]

    def occupancy(self) -> list[dict[str, Any]]:
        """Per tier, in stack order: ``name``, ``role`` (``"cache"`` or ``"backing"``), ``memory`` (as in
        :class:`~icecache.storage.base.TierStats`), ``eviction`` (its policy's name, ``None`` when it
        reports none), ``pages`` resident, ``tokens`` (their valid slots),
        ``allocated_slots``, ``page_nbytes`` and ``token_nbytes`` (one slot's K and V)."""
        spec = self.spec
        token_nbytes = spec.page_nbytes // spec.page_size
        out = []
        for tier in self.tiers:
            st = tier.stats()
            ids = tier.resident_ids()
            tokens = int(self.pool.lens(ids).long().sum()) if ids.numel() else 0
            out.append({"name": tier.name, "role": "cache" if tier is self.cache else "backing",
                        "memory": st.memory, "eviction": st.details.get("eviction"),
                        "pages": int(ids.numel()), "tokens": tokens,
                        "allocated_slots": st.allocated_slots, "page_nbytes": st.page_nbytes,
                        "token_nbytes": token_nbytes})
        return out

    def bookkeeping_nbytes(self) -> int:
        """Bytes of the page-id pool's and the tiers' maps (a tier without them counts 0)."""
        return self.pool.nbytes() + sum(getattr(t, "bookkeeping_nbytes", lambda: 0)() for t in self.tiers)

    def staging_nbytes(self) -> int:
        """Bytes of the staging buffers kept between loads."""
        return self._stager.nbytes()

    def stats(self) -> StoreStats:
        return StoreStats(tiers=tuple(t.stats() for t in self.tiers),
                          moves={k: {"calls": c.calls, "pages": c.pages, "nbytes": c.nbytes,
                                     "copies": c.copies} for k, c in self._moves.items()},
                          last=dict(self._last))

    def close(self) -> None:
        """Release every tier's memory and files; any later call raises :class:`StorageError`."""
        if self._closed:
            return
        self._stager.wait()
        self._closed = True
        for tier in self.tiers:
            tier.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed: its tiers' memory and files are released")

    def __enter__(self) -> TieredStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- internals -------------------------------------------------------------------------------
    def _locate(self, ids: Tensor | np.ndarray) -> Tensor:
        """Index into ``backing`` of the tier holding each page, ``-1`` for none, int64 ``[n]``."""
        loc = np.full(len(ids), -1, dtype=np.int64)
        for i, tier in enumerate(self.backing):  # a loop over tiers, not pages
            loc[tier.lookup(ids).numpy()] = i
        return torch.from_numpy(loc)

    def _place(self, level: int, ids: Tensor, records: Tensor) -> None:
        """Store new pages in ``backing[level]``, spilling its LRU pages (and the oldest of the new ones
        when even eviction leaves too little room) to the next level first. Atomic: a failure below
        leaves this level unchanged."""
        tier = self.backing[level]
        n = ids.numel()
        free = tier.free_slots
        if free is None or n <= free:
            self._store_into(tier, ids, records, kind="write" if level == 0 else "spill")
            return
        if level == len(self.backing) - 1:
            raise StorageError(
                f"tier {tier.name!r} is full: {n} pages do not fit in its {free} free slots "
                f"(capacity {tier.capacity}) and no tier below takes them"
            )
        keep = min(n, free + tier.evictable())
        direct = n - keep  # the oldest new pages go straight down
        victims = tier.victims(keep - free)
        slots = tier.prepare_load(victims)
        try:
            victim_records = tier.read(slots)
            self._place(level + 1, torch.cat([victims, ids[:direct]]),
                        torch.cat([victim_records, records[:direct]]))
        finally:
            tier.complete_load(victims)
        if victims.numel():
            tier.free(victims)
            self._evicted(tier, victims)
        if keep:
            self._store_into(tier, ids[direct:], records[direct:], kind="write" if level == 0 else "spill")

    def _store_into(self, tier: Tier, ids: Tensor, records: Tensor, *, kind: str) -> None:
        slots = tier.prepare_store(ids)
        try:
            tier.write(slots, records)
        except BaseException:
            tier.complete_store(ids, success=False)
            raise
        tier.complete_store(ids)
        self._moved(MoveRecord(kind=kind, tier=tier.name, pages=ids.numel(),
                               nbytes=ids.numel() * self.spec.page_nbytes, copies=1), ids)

    def _writethrough(self, ids: Tensor, records: Tensor) -> None:
        cache = self.cache
        assert cache is not None
        slots = cache.prepare_store(ids)
        try:
            cache.write(slots, records.to(cache.device))
        except BaseException:
            cache.complete_store(ids, success=False)
            raise
        cache.complete_store(ids)
        self._moved(MoveRecord(kind="writethrough", tier=cache.name, pages=ids.numel(),
                               nbytes=ids.numel() * self.spec.page_nbytes, copies=1), ids)

    def _bring_in(self, missing: np.ndarray) -> None:
        """Gather ``missing`` pages from their backing tiers and put them in free device slots."""
        cache = self.cache
        assert cache is not None
        m = missing.size
        free = cache.free_slots
        if free is not None and m > free:
            evictable = cache.evictable()
            if m > free + evictable:
                raise StorageError(
                    f"cannot load {m} pages into tier {cache.name!r}: {free} free slots and "
                    f"{evictable} evictable pages (capacity {cache.capacity}; pinned and "
                    "requested pages are not evicted)"
                )
            self._evicted(cache, cache.evict(m - free))
        if len(self.backing) == 1:
            loc = np.zeros(m, dtype=np.int64)  # the tier's prepare_load checks the pages are there
        else:
            loc = self._locate(missing).numpy()
            assert np_all(loc >= 0), "a written page is in no backing tier"
        if loc.size and np_min(loc) != np_max(loc):
            order = np.argsort(loc, kind="stable")
            missing, loc = missing[order], loc[order]  # grouped by source tier
        slots = cache.prepare_store(missing)
        try:
            record = self._fill(missing, loc, slots)
        except BaseException:
            cache.complete_store(missing, success=False)
            raise
        cache.complete_store(missing)
        self._moved(record, torch.from_numpy(missing))

    def _fill(self, ids: np.ndarray, loc: np.ndarray, slots: Tensor) -> MoveRecord:
        cache = self.cache
        assert cache is not None
        m = ids.size
        counts = np.bincount(loc, minlength=len(self.backing)) if len(self.backing) > 1 else [m]
        groups, a = [], 0  # (source tier, first row, rows): ``ids`` are grouped by source tier
        for i, tier in enumerate(self.backing):
            if counts[i]:
                groups.append((tier, a, int(counts[i])))
                a += int(counts[i])
        uva = [g for g in groups if self._uva_source(g[0])]
        staged = [g for g in groups if g not in uva]
        n_uva, n_staged = sum(g[2] for g in uva), sum(g[2] for g in staged)
        idx = self._stager.index_buffer(n_uva) if uva else None
        idx_np = idx.numpy() if idx is not None else None
        target = None
        if staged and not uva and cache.device.type == "cpu":
            start = contiguous_run(slots)
            # NOTE: a CPU device tier takes the gather straight into a run of its slots (one pass over
            # the bytes); otherwise the pages meet in one staging buffer, pinned on CUDA.
            target = cache.view(start, start + m) if start is not None else None
        buf = target if target is not None else self._stager.host_buffer(n_staged) if staged else None
        sources: dict[str, int] = {}
        copies, b, dst = 0, 0, []
        for tier, a, c in staged:  # one gather per source tier
            self._read_into(tier, ids[a:a + c], buf[b:b + c])
            dst.append(slots[a:a + c])
            sources[tier.name] = c
            b += c
        if staged:
            copies += 1 if target is not None else \
                self._stager.upload(buf, cache, dst[0] if len(dst) == 1 else torch.cat(dst))
        b = 0
        slots_np = slots.numpy()
        for tier, a, c in uva:  # one kernel per source tier: the GPU reads the pinned pages
            sub = ids[a:a + c]
            idx_np[b:b + c, 0] = tier.prepare_load(sub).numpy()
            idx_np[b:b + c, 1] = slots_np[a:a + c]
            try:
                copy_rows(tier.data, cache.data, idx[b:b + c])
            finally:
                tier.complete_load(sub)  # NOTE: writes wait for the kernel (Stager.wait) before reusing slots
            tier.touch(sub)
            sources[tier.name] = c
            copies += 1
            b += c
        if uva:
            self._stager.record()
        modes = (("direct", target is not None), ("staged", bool(staged) and target is None),
                 ("uva", bool(uva)))
        via = "+".join(x for x, used in modes if used)
        return MoveRecord(kind="load", tier=cache.name, pages=m, nbytes=m * self.spec.page_nbytes,
                          copies=copies, sources=sources, via=via)

    def _read_into(self, tier: Tier, ids: np.ndarray | Tensor, out: Tensor) -> None:
        tier_slots = tier.prepare_load(ids)
        try:
            tier.read(tier_slots, out=out)
        finally:
            tier.complete_load(ids)
        tier.touch(ids)

    def _uva_source(self, tier: Tier) -> bool:
        """Whether ``transfer="uva"`` can read ``tier``'s pages from the device (pinned or same device)."""
        if self.transfer != "uva" or _raw(tier) is None or _raw(self.tiers[0]) is None:
            return False
        device = self.tiers[0].device
        return tier.pin_memory or tier.device == device or device.type == "cpu"

    def _moved(self, record: MoveRecord, ids: Tensor | np.ndarray) -> None:
        self._moves[record.kind].add(record)
        self._last[record.kind] = record
        # NOTE: no listener, no call (pluggy's dispatch costs every move)
        if self.hook is not None and self.hook.icecache_pages_loaded.get_hookimpls():
            ids = ids if isinstance(ids, Tensor) else torch.from_numpy(ids.copy())
            self.hook.icecache_pages_loaded(tier=record.tier, page_ids=ids, nbytes=record.nbytes,
                                            copies=record.copies)

    def _evicted(self, tier: Tier, ids: Tensor) -> None:
        if not ids.numel():
            return
        self._moves["evict"].add(MoveRecord(kind="evict", tier=tier.name, pages=ids.numel(), nbytes=0,
                                            copies=0))
        if self.hook is not None and self.hook.icecache_pages_evicted.get_hookimpls():
            self.hook.icecache_pages_evicted(tier=tier.name, page_ids=ids)


def _raw(tier: Tier) -> Tensor | None:
    """The records tensor of a memory tier the store may read in place of ``read``, else ``None``."""
    return tier.raw_records() if isinstance(tier, MemoryTier) else None


def _distinct(a: np.ndarray) -> np.ndarray:
    """The distinct ids of ``a``, ascending (``a`` itself when it holds at most one)."""
    if a.size <= 1:
        return a
    uniq = np.sort(a)  # NOTE: cheaper than testing for order first, and O(n) on ascending ids
    if np.count_nonzero(uniq[1:] == uniq[:-1]):
        return np.unique(uniq)
    return uniq


#: how ``load`` moves host pages to the device (see the module docstring and :mod:`icecache.storage.uva`)
TRANSFERS = ("auto", "staged", "uva")


def _transfer_mode(transfer: str, device: torch.device) -> str:
    if transfer not in TRANSFERS:
        raise ConfigError(f"transfer must be one of {list(TRANSFERS)}, got {transfer!r}")
    if transfer == "auto":
        # NOTE: the UVA kernel measured 0.64-0.86 of a plain copy's bandwidth on an H100 where the
        # staged gather + copy reached 0.39-0.41 (docs/benchmarks.md); staged stays the CPU path.
        return "uva" if device.type == "cuda" and importlib.util.find_spec("triton") is not None else "staged"
    if transfer == "uva" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(f"transfer='uva' needs a CUDA device tier, got {str(device)!r} (or "
                          "TRITON_INTERPRET=1 to run its kernel on the CPU)")
    return transfer
