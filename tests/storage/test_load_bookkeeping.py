"""The shortcuts of the cheap load bookkeeping keep the store's state: a tier's "settled" count of pages
being stored, ready-slot lookups, the numpy page table, and a copy that fails after the bookkeeping."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import icecache.storage.fused_load as fused_module
from icecache.core.page_table import PageTable
from icecache.storage.device import DeviceTier
from icecache.storage.host import HostTier
from icecache.storage.layout import PageSpec
from icecache.storage.slots import READY, STORING
from icecache.storage.store import TieredStore
from icecache.testing.strategies.tier_ops import TierOp, tier_operations
from icecache.testing.strategies.tiers import bits, random_records

SPEC = PageSpec(page_size=4, head_dim=8, dtype=torch.float16)
N_PAGES = 24


def _store(fused: bool = True, device_pages: int = 8) -> tuple[TieredStore, torch.Tensor]:
    store = TieredStore([DeviceTier(name="device", spec=SPEC, capacity=device_pages, device="cpu"),
                         HostTier(name="host", spec=SPEC, capacity=N_PAGES)])
    store.fused_load = fused
    ids = store.allocate(N_PAGES)
    r = random_records(SPEC, N_PAGES, seed=1)
    store.write_pages(ids, r[:, 0], r[:, 1], torch.arange(N_PAGES) % SPEC.page_size + 1)
    return store, ids


def _apply(tier: HostTier, op: TierOp, seed: int) -> None:
    """One protocol call of ``op`` (as :func:`~icecache.testing.strategies.tier_ops.apply_tier_ops` does)."""
    ids = torch.tensor(op.ids, dtype=torch.int64)
    if op.kind == "store":
        tier.write(tier.prepare_store(ids), random_records(tier.spec, len(op.ids), seed))
    elif op.kind == "complete_store":
        tier.complete_store(ids, op.success)
    elif op.kind == "load":
        tier.prepare_load(ids)
    elif op.kind == "evict":
        tier.evict(op.count)
    else:
        getattr(tier, op.kind)(ids)  # complete_load, touch, free


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.none(), st.integers(1, 6)).flatmap(
    lambda cap: st.tuples(st.just(cap), tier_operations(capacity=cap))))
def test_settled_and_ready_slots_agree_with_the_slot_states_after_every_call(case):
    capacity, ops = case
    tier = HostTier(name="host", spec=PageSpec(page_size=2, head_dim=4), capacity=capacity)
    probe = np.arange(12, dtype=np.int64)
    for n in range(len(ops) + 1):
        if n:
            _apply(tier, ops[n - 1], seed=n)
        states = tier.state_at(np.arange(tier.num_slots))
        assert tier.settled() == (not np.count_nonzero(states == STORING))
        slots = tier.slot_of(torch.from_numpy(probe)).numpy()
        ready = np.where((slots >= 0) & (tier.state_at(np.maximum(slots, 0)) == READY), slots, -1)
        assert tier.ready_slots(probe).tolist() == ready.tolist()
        assert tier.ready_slots(probe, top=11).tolist() == ready.tolist()
    tier.close()


padded_lists = st.lists(st.lists(st.integers(-1, N_PAGES - 1), min_size=0, max_size=6), min_size=0,
                        max_size=4).map(lambda rows: [r + [-1] * (6 - len(r)) for r in rows])


@settings(max_examples=40, deadline=None)
@given(rows=padded_lists, fused=st.booleans())
def test_page_table_matches_the_reference_build_over_the_same_load(rows, fused):
    store, ids = _store(fused, device_pages=N_PAGES)
    logical = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 6)
    pages = torch.where(logical >= 0, ids[logical.clamp_min(0)], -1)
    table = store.page_table(pages)
    # reference: the same pages are resident now, so their slots are a plain lookup
    valid = pages >= 0
    slot_lists = torch.full_like(pages, -1)
    lens = torch.zeros_like(pages)
    if bool(valid.any()):
        slot_lists[valid] = store.cache.slot_of(pages[valid])
        lens[valid] = store.pool.lens(torch.unique(pages[valid]))[
            torch.searchsorted(torch.unique(pages[valid]), pages[valid])].long()
    want = PageTable.from_page_lists(slot_lists, lens, SPEC.page_size)
    for name in ("indptr", "indices", "last_page_len", "page_lens"):
        assert getattr(table, name).tolist() == getattr(want, name).tolist(), name
    table.validate(num_pages=store.device_pool.kv.shape[0])
    store.close()


def test_page_table_pins_each_distinct_page_once():
    store, ids = _store()
    store.page_table(torch.stack([ids[[3, 5, 3]], ids[[5, 7, 3]]]), pin=True)
    assert store.cache.in_flight().tolist() == ids[[3, 5, 7]].tolist()
    store.release(ids[[3, 5, 7]])  # once per distinct page: nothing left pinned
    assert store.cache.in_flight().tolist() == []


def test_page_table_names_a_bad_shape():
    store, ids = _store()
    with pytest.raises(Exception, match=r"padded lists \[R, K\], got shape \(3,\)"):
        store.page_table(ids[:3])


@pytest.mark.parametrize("pin", [False, True])
def test_a_copy_that_fails_after_the_bookkeeping_leaves_no_page_half_loaded(monkeypatch, pin):
    store, ids = _store(device_pages=6)
    store.load(ids[[0, 1]])  # resident before the failing load
    real = fused_module._move

    def broken(*args, **kwargs):
        raise RuntimeError("copy failed")

    monkeypatch.setattr(fused_module, "_move", broken)
    with pytest.raises(RuntimeError, match="copy failed"):
        store.load(ids[[4, 1, 2, 3]], pin=pin)
    assert store.cache.resident_ids().tolist() == ids[[0, 1]].tolist()  # the new pages are not resident
    assert store.cache.in_flight().tolist() == []
    assert store.stats().moves["load"]["calls"] == 1  # the failed move is not counted
    monkeypatch.setattr(fused_module, "_move", real)
    slots = store.load(ids[[4, 1, 2, 3]])
    k, v, _ = store.read_pages(ids[[4, 1, 2, 3]])
    assert torch.equal(bits(store.device_pool.k[slots]), bits(k))
    assert torch.equal(bits(store.device_pool.v[slots]), bits(v))
    store.close()
