"""The fused load path makes the same state changes as the two-phase protocol: same slots, same
evictions, same bytes, same errors, for any sequence of loads (with repeats, pins and overflow)."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.errors import StorageError
from icecache.storage.device import DeviceTier
from icecache.storage.host import HostTier
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore
from icecache.testing.strategies.tiers import bits, random_records

SPEC = PageSpec(page_size=4, head_dim=8, dtype=torch.float16)
N_PAGES = 24


def _store(fused: bool, device_pages: int, eviction: str) -> tuple[TieredStore, torch.Tensor]:
    store = TieredStore([DeviceTier(name="device", spec=SPEC, capacity=device_pages, device="cpu",
                                    eviction=eviction),
                         HostTier(name="host", spec=SPEC, capacity=N_PAGES)])
    store.fused_load = fused
    ids = store.allocate(N_PAGES)
    r = random_records(SPEC, N_PAGES, seed=1)
    store.write_pages(ids, r[:, 0], r[:, 1])
    return store, ids


def _run(store: TieredStore, ids: torch.Tensor, steps) -> list:
    trace = []
    for picks, pin, release in steps:
        try:
            slots = store.load(ids[picks], pin=pin)
            trace.append(("slots", slots.tolist()))
            if pin and release:
                store.release(ids[sorted(set(picks))])
        except StorageError as e:
            trace.append(("error", str(e)))
        st_ = store.stats()
        trace.append(("moves", st_.moves["load"], st_.moves["evict"], st_.tiers[0].resident_pages))
    resident = store.cache.resident_ids()
    trace.append(("resident", resident.tolist(), store.cache.slot_of(resident).tolist()))
    # NOTE: resident slots only: free slots hold whatever was there
    trace.append(("device", store.device_pool.kv[store.cache.slot_of(resident)].clone()))
    trace.append(("in_flight", store.cache.in_flight().tolist()))
    return trace


steps = st.lists(st.tuples(st.lists(st.integers(0, N_PAGES - 1), min_size=1, max_size=10),
                           st.booleans(), st.booleans()), min_size=1, max_size=12)


@settings(max_examples=60)
@given(steps=steps, device_pages=st.integers(1, 12), eviction=st.sampled_from(["lru", "fifo", "lfu", "mru"]))
def test_fused_and_protocol_paths_agree(steps, device_pages, eviction):
    fused, ids = _store(True, device_pages, eviction)
    protocol, _ = _store(False, device_pages, eviction)
    a, b = _run(fused, ids, steps), _run(protocol, ids, steps)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if x[0] == "device":
            assert torch.equal(x[1].view(torch.uint8), y[1].view(torch.uint8))
        else:
            assert x == y


def test_fused_load_moves_once_into_a_run_of_slots():
    store, ids = _store(True, 8, "lru")
    slots = store.load(ids[[5, 1, 9, 3]])
    record = store.stats().last["load"]
    assert record.via == "direct" and record.copies == 1 and record.sources == {"host": 4}
    k, v, _ = store.read_pages(ids[[5, 1, 9, 3]])
    assert torch.equal(bits(store.device_pool.k[slots]), bits(k))
    assert torch.equal(bits(store.device_pool.v[slots]), bits(v))


def test_fused_load_falls_back_for_pages_on_disk(tmp_path):
    from icecache.storage.disk import DiskTier

    store = TieredStore([DeviceTier(name="device", spec=SPEC, capacity=4, device="cpu"),
                         DiskTier(name="disk", spec=SPEC, capacity=8, directory=tmp_path)])
    ids = store.allocate(3)
    r = random_records(SPEC, 3, seed=2)
    store.write_pages(ids, r[:, 0], r[:, 1])
    slots = store.load(ids)
    assert store.stats().last["load"].sources == {"disk": 3}
    assert torch.equal(bits(store.device_pool.k[slots]), bits(r[:, 0]))
    store.close()


def test_fused_load_names_the_shortfall_like_the_protocol():
    store, ids = _store(True, 2, "lru")
    store.load(ids[:2], pin=True)
    with pytest.raises(StorageError, match="cannot load 1 pages into tier 'device'"):
        store.load(ids[2:3])
    assert store.cache.resident_ids().tolist() == ids[:2].tolist()  # nothing changed


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the UVA kernel needs CUDA or the Triton interpreter")
def test_fused_load_takes_the_uva_kernel_for_host_pages():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    store = TieredStore([DeviceTier(name="device", spec=SPEC, capacity=6, device=device),
                         HostTier(name="host", spec=SPEC, capacity=8)], transfer="uva")
    ids = store.allocate(5)
    r = random_records(SPEC, 5, seed=3)
    store.write_pages(ids, r[:, 0], r[:, 1])
    slots = store.load(ids[[4, 0, 3]])
    last = store.stats().last["load"]
    assert last.via == "uva" and last.copies == 1 and last.sources == {"host": 3}
    assert torch.equal(bits(store.device_pool.kv[slots]), bits(r[[4, 0, 3]]))
    store.close()
