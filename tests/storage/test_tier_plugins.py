"""Tiers written as plugins (tests/storage/plugin_tiers.py): an LFU device tier by subclassing, the
built-in lfu and mru policies, a policy registered by name, a lossy bfloat16 host tier. Each failed
before the tier base class had public hooks and the fused load checked what it may skip."""

import pytest
import torch
from plugin_tiers import BF16HostTier, CountingLFUDeviceTier, Plugin

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.errors import ConfigError, UnknownComponentError
from icecache.core.plugins import get_plugin_manager
from icecache.storage.device import DeviceTier
from icecache.storage.host import HostTier
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore
from icecache.testing.conformance import ContractViolation, check_tier
from icecache.testing.strategies.tiers import bits, random_records

SPEC = PageSpec(page_size=4, head_dim=8, dtype=torch.float32)
N = 12


def _store(cache, host=None):
    store = TieredStore([cache, host or HostTier(name="host", spec=SPEC)])
    ids = store.allocate(N)
    r = torch.randn(N, *SPEC.record_shape, generator=torch.Generator().manual_seed(0))
    store.write_pages(ids, r[:, 0], r[:, 1])
    return store, ids, r


def _hot_page_survives(cache, rounds=12, fused=True):
    """Each round loads page 0 twice, then two cold pages one call each, through 2 device slots: LFU
    must keep page 0 (main lost it every round: the fused load skipped the subclass's ``touch``)."""
    store, ids, _ = _store(cache)
    store.fused_load = fused
    for r in range(rounds):
        store.load(ids[[0]])
        store.load(ids[[0]])
        store.load(ids[[1 + (2 * r) % (N - 1)]])
        store.load(ids[[1 + (2 * r + 1) % (N - 1)]])
        assert bool(cache.lookup(ids[[0]])[0]), f"hot page evicted in round {r}"
    # NOTE: the hot page moved once; every other load brought one cold page
    assert store.stats().moves["load"]["pages"] == 1 + 2 * rounds


def test_an_lfu_device_tier_by_subclassing_keeps_its_hot_page():
    cache = CountingLFUDeviceTier(name="device", spec=SPEC, capacity=2, device="cpu")
    assert not cache.fused_moves()  # it overrides touch/victims/free: the protocol path runs them
    _hot_page_survives(cache)


@pytest.mark.parametrize("fused", [True, False])
def test_the_builtin_lfu_keeps_the_hot_page_on_either_path(fused):
    cache = DeviceTier(name="device", spec=SPEC, capacity=2, device="cpu", eviction="lfu")
    assert cache.fused_moves()  # the policy is consulted through its hooks: the fast path stays
    _hot_page_survives(cache, fused=fused)


def test_lru_loses_the_hot_page_in_the_same_pattern():
    cache = DeviceTier(name="device", spec=SPEC, capacity=2, device="cpu", eviction="lru")
    with pytest.raises(AssertionError, match="hot page evicted"):
        _hot_page_survives(cache)


@pytest.mark.parametrize("fused", [True, False])
def test_mru_beats_lru_on_a_cyclic_scan_larger_than_the_tier(fused):
    loaded = {}
    for eviction in ("lru", "mru"):
        cache = DeviceTier(name="device", spec=SPEC, capacity=4, device="cpu", eviction=eviction)
        store, ids, _ = _store(cache)
        store.fused_load = fused
        for step in range(40):
            store.load(ids[[step % 5]])  # a scan over 5 pages through 4 slots
        loaded[eviction] = store.stats().moves["load"]["pages"]
    assert loaded["lru"] == 40  # LRU always evicts the page needed next
    assert loaded["mru"] <= 15


def test_mru_victims_are_the_most_recently_used():
    tier = HostTier(name="host", spec=SPEC, eviction="mru")
    ids = torch.arange(4)
    tier.write(tier.prepare_store(ids), random_records(SPEC, 4, 0))
    tier.complete_store(ids)
    tier.touch(torch.tensor([1]))
    tier.touch(torch.tensor([3]))
    assert tier.victims(2).tolist() == [3, 1]
    assert tier.stats().details["eviction"] == "mru"


def test_a_bf16_host_subclass_works_in_a_store_within_bf16_rounding():
    host = BF16HostTier(name="host", spec=SPEC)
    assert host.raw_records() is None and not host.fused_moves()
    cache = DeviceTier(name="device", spec=SPEC, capacity=6, device="cpu")
    store, ids, r = _store(cache, host)
    want = r.to(torch.bfloat16).float()
    slots = store.load(ids[[5, 1, 9]])  # crashed in index_select before
    torch.testing.assert_close(store.device_pool.kv[slots], want[[5, 1, 9]], rtol=0, atol=0)
    torch.testing.assert_close(store.read_keys(ids[[2, 7]]), want[[2, 7], 0], rtol=0, atol=0)
    toks = store.read_tokens(ids[[3, 3]], torch.tensor([0, 2]), values=True)
    torch.testing.assert_close(toks, want[[3, 3], :, [0, 2]], rtol=0, atol=0)
    k, v, _ = store.read_pages(ids)
    torch.testing.assert_close(k, want[:, 0], rtol=0, atol=0)
    assert host.stats().details["stored_dtype"] == "bfloat16"


def test_the_tier_suite_takes_a_lossy_tier_with_a_tolerance_and_refuses_it_without():
    factory = lambda config: BF16HostTier.from_config(config)  # noqa: E731
    check_tier(factory, max_examples=8, tolerance=(2 ** -7, 1e-6))
    with pytest.raises(ContractViolation) as info:
        check_tier(factory, max_examples=20, shrink=False)
    assert info.value.prop == "round-trip"


@pytest.mark.parametrize("eviction", ["lru", "fifo", "lfu", "mru"])
def test_each_builtin_eviction_passes_the_tier_suite_with_its_order_checked(eviction):
    check_tier(lambda config: HostTier.from_config(config, eviction=eviction), max_examples=15)


def _config():
    return CacheConfig(page_size=4, dtype="fp32", tiers=TierConfig(device_pages=2),
                       geometry=ModelGeometry(num_layers=2, num_q_heads=1, num_kv_heads=1, head_dim=8))


def test_plugin_tiers_and_a_plugin_eviction_compose_by_name():
    pm = get_plugin_manager(load_entrypoints=False, extra=(Plugin,))
    store = TieredStore.build(_config(), ("lfu-device", "bf16-host"), plugin_manager=pm,
                              options={"bf16-host": {"eviction": "scan-mru"}})
    assert isinstance(store.cache, CountingLFUDeviceTier) and isinstance(store.backing[0], BF16HostTier)
    assert store.backing[0].stats().details["eviction"] == "scan-mru"
    with pytest.raises(UnknownComponentError, match="'nope'.*fifo, lfu, lru, mru, scan-mru"):
        TieredStore.build(_config(), ("device", "host"), plugin_manager=pm,
                          options={"host": {"eviction": "nope"}})
    store.close()


def test_an_unknown_eviction_name_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="unknown eviction policy 'random'.*lfu, lru, mru"):
        HostTier(name="host", spec=SPEC, eviction="random")


def test_fused_and_protocol_paths_give_the_same_bytes_for_a_bf16_source():
    outs = []
    for fused in (True, False):
        cache = DeviceTier(name="device", spec=SPEC, capacity=3, device="cpu", eviction="lfu")
        store, ids, _ = _store(cache, BF16HostTier(name="host", spec=SPEC))
        store.fused_load = fused
        slots = store.load(ids[[4, 0, 8]])
        outs.append(bits(store.device_pool.kv[slots]))
    assert torch.equal(*outs)
