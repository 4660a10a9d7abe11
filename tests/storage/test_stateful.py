"""Random sequences of allocate / write / load / pin / release / evict / free over whole tier stacks
(disk in a temporary directory), checked against a model after every step."""

import shutil
import tempfile
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from icecache.core.config import CacheConfig, TierConfig
from icecache.core.errors import PageError, StorageError
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore
from icecache.testing.strategies.tiers import PAGE_DTYPES, bits, random_records, tier_capacities, tier_stacks

PAGE_SIZE, HEAD_DIM = 4, 8


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="icecache-test-")
        self.store = None
        self.model: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (record bytes, valid slots)
        self.allocated: set[int] = set()
        self.freed: set[int] = set()
        self.pins: Counter = Counter()
        self.pinned_slots: dict[int, int] = {}
        self.seed = 0

    @initialize(caps=tier_capacities(), dtype=st.sampled_from(PAGE_DTYPES), names=tier_stacks(),
                fused=st.booleans())
    def build(self, caps, dtype, names, fused):
        config = CacheConfig(page_size=PAGE_SIZE, dtype=dtype,
                             tiers=TierConfig(device_pages=caps["device"], host_pages=caps["host"],
                                              disk_dir=self.dir, disk_pages=caps["disk"]))
        self.store = TieredStore.build(config, names, head_dim=HEAD_DIM)
        self.store.fused_load = fused
        self.spec = PageSpec(page_size=PAGE_SIZE, head_dim=HEAD_DIM, dtype=dtype)
        self.caps = {t.name: t.capacity for t in self.store.tiers}

    def teardown(self):
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----- helpers ---------------------------------------------------------------------------------
    @property
    def pinned(self) -> set[int]:
        return {i for i, n in self.pins.items() if n > 0}

    def _room(self) -> float:
        total = 0.0
        for tier in self.store.backing:
            total += float("inf") if tier.capacity is None else tier.capacity
        return total

    def _pick(self, data, pool, max_size=4):
        return data.draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=max_size, unique=True))

    # ----- rules -----------------------------------------------------------------------------------
    @rule(n=st.integers(1, 4))
    def allocate(self, n):
        ids = self.store.allocate(n).tolist()
        assert len(set(ids)) == n and not set(ids) & self.allocated, "allocate returned a live id"
        self.allocated |= set(ids)
        self.freed -= set(ids)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def write(self, data):
        ids = self._pick(data, self.allocated)
        lens = data.draw(st.lists(st.integers(1, PAGE_SIZE), min_size=len(ids), max_size=len(ids)))
        self.seed += 1
        records = random_records(self.spec, len(ids), self.seed)
        new = [i for i in ids if i not in self.model]
        t = torch.tensor(ids)
        if len(self.model) + len(new) > self._room():
            where = self.store.where(t)
            with pytest.raises(StorageError, match="is full"):
                self.store.write_pages(t, records[:, 0], records[:, 1], torch.tensor(lens))
            assert self.store.where(t) == where
            return
        self.store.write_pages(t, records[:, 0], records[:, 1], torch.tensor(lens))
        for k, i in enumerate(ids):
            self.model[i] = (bits(records[k]), lens[k])

    @precondition(lambda self: self.model)
    @rule(data=st.data(), pin=st.booleans())
    def load(self, data, pin):
        ids = self._pick(data, self.model)
        cap = self.caps[self.store.tiers[0].name] if self.store.cache is not None else None
        t = torch.tensor(ids)
        if cap is not None and len(set(ids) | self.pinned) > cap:
            with pytest.raises(StorageError, match="cannot load"):
                self.store.load(t, pin=pin)
            return
        slots = self.store.load(t, pin=pin)
        assert len(set(slots.tolist())) == len(ids), "two pages share a device slot"
        kv = self.store.device_pool.kv
        for k, i in enumerate(ids):
            assert torch.equal(bits(kv[slots[k]]), self.model[i][0]), f"page {i} loaded with other bytes"
            if pin:
                self.pins[i] += 1
                self.pinned_slots[i] = int(slots[k])

    @precondition(lambda self: self.pinned)
    @rule(data=st.data())
    def release(self, data):
        ids = self._pick(data, self.pinned)
        self.store.release(torch.tensor(ids))
        for i in ids:
            self.pins[i] -= 1

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def evict(self, data):
        ids = self._pick(data, self.model)
        if self.store.cache is not None and set(ids) & self.pinned:
            with pytest.raises(PageError, match="in flight"):
                self.store.evict(torch.tensor(ids))
            return
        self.store.evict(torch.tensor(ids))

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free(self, data):
        ids = self._pick(data, self.allocated)
        if set(ids) & self.pinned:
            with pytest.raises(PageError, match="in flight"):
                self.store.free(torch.tensor(ids))
            return
        self.store.free(torch.tensor(ids))
        for i in ids:
            self.model.pop(i, None)
        self.allocated -= set(ids)
        self.freed |= set(ids)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def freed_pages_are_never_returned(self, data):
        i = data.draw(st.sampled_from(sorted(self.freed)))
        with pytest.raises(PageError, match=f"page id {i} "):
            self.store.read_pages(torch.tensor([i]))
        with pytest.raises(PageError, match=f"page id {i} "):
            self.store.load(torch.tensor([i]))

    # ----- invariants ----------------------------------------------------------------------------------
    @invariant()
    def every_page_reads_back_bit_identical(self):
        if self.store is None or not self.model:
            return
        ids = sorted(self.model)
        k, v, lens = self.store.read_pages(torch.tensor(ids))
        for n, i in enumerate(ids):
            assert torch.equal(bits(torch.stack([k[n], v[n]])), self.model[i][0]), f"page {i} changed"
            assert int(lens[n]) == self.model[i][1]

    @invariant()
    def each_page_lives_in_exactly_one_backing_tier_within_capacity(self):
        if self.store is None:
            return
        held = Counter()
        for tier in self.store.backing:
            resident = tier.resident_ids().tolist()
            held.update(resident)
            assert tier.capacity is None or len(resident) <= tier.capacity
        assert set(held) == set(self.model), "a page was lost or invented"
        assert all(n == 1 for n in held.values()), "a page is duplicated across backing tiers"
        cache = self.store.cache
        if cache is not None:
            resident = cache.resident_ids().tolist()
            assert cache.capacity is None or len(resident) <= cache.capacity
            assert set(resident) <= set(self.model)

    @invariant()
    def cached_copies_match_and_pinned_pages_stay_put(self):
        if self.store is None or self.store.cache is None:
            return
        cache = self.store.cache
        resident = cache.resident_ids()
        if resident.numel():
            slots = cache.slot_of(resident)
            kv = self.store.device_pool.kv
            for i, s in zip(resident.tolist(), slots.tolist(), strict=True):
                assert torch.equal(bits(kv[s]), self.model[i][0]), f"stale device copy of page {i}"
        assert set(cache.in_flight().tolist()) == self.pinned
        for i in self.pinned:
            assert int(cache.slot_of(torch.tensor([i]))) == self.pinned_slots[i], f"pinned page {i} moved"


StoreMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestTieredStore = StoreMachine.TestCase
