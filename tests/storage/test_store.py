import os

import pytest
import torch

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.errors import ConfigError, PageError, StorageError, TensorSpecError
from icecache.core.hookspecs import hookimpl
from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.core.policy import compose_policy
from icecache.storage.device import DeviceTier
from icecache.storage.host import HostTier
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore
from icecache.testing.strategies.tiers import bits, random_records

SPEC = PageSpec(page_size=4, head_dim=8, dtype=torch.float16)


def _kv(n, seed, spec=SPEC):
    r = random_records(spec, n, seed)
    return r[:, 0], r[:, 1]


def _config(tmp_path, **tiers):
    return CacheConfig(page_size=4, dtype="fp16", tiers=TierConfig(disk_dir=tmp_path, **tiers))


class Recorder:
    def __init__(self):
        self.loaded, self.evicted = [], []

    @hookimpl
    def icecache_pages_loaded(self, tier, page_ids, nbytes, copies):
        self.loaded.append((tier, sorted(page_ids.tolist()), nbytes, copies))

    @hookimpl
    def icecache_pages_evicted(self, tier, page_ids):
        self.evicted.append((tier, sorted(page_ids.tolist())))


@pytest.fixture
def stack(tmp_path):
    recorder = Recorder()
    pm = get_plugin_manager(load_entrypoints=False, extra=(recorder,))
    # NOTE: the staged transfer on every machine (CUDA picks "uva" by default; it has its own test)
    store = TieredStore.build(_config(tmp_path, device_pages=4, host_pages=6, disk_pages=20), head_dim=8,
                              plugin_manager=pm, transfer="staged")
    yield store, recorder
    store.close()


def test_builtin_tiers_are_registered_with_descriptions():
    registry = build_registry(get_plugin_manager(load_entrypoints=False))
    assert {"device", "host", "disk"} <= set(registry.names("tier"))
    for name in ("device", "host", "disk"):
        assert registry.get("tier", name).description


def test_write_then_load_round_trips_partial_pages(stack):
    store, _ = stack
    ids = store.allocate(5, layer=1, head=torch.tensor([0, 0, 1, 1, 2]))
    k, v = _kv(5, 0)
    lens = torch.tensor([4, 1, 3, 4, 2])
    store.write_pages(ids, k, v, lens)
    slots = store.load(ids[[3, 0, 2]])
    pool = store.device_pool
    assert torch.equal(bits(pool.k[slots]), bits(k[[3, 0, 2]]))
    assert torch.equal(bits(pool.v[slots]), bits(v[[3, 0, 2]]))
    got_k, got_v, got_lens = store.read_pages(ids)
    assert torch.equal(bits(got_k), bits(k)) and torch.equal(bits(got_v), bits(v))
    assert got_lens.tolist() == lens.tolist()
    assert store.pool.pages_of(head=1).tolist() == ids[2:4].tolist()


def test_host_overflow_spills_least_recently_used_pages_to_disk(stack):
    store, recorder = stack
    ids = store.allocate(9)
    k, v = _kv(9, 1)
    store.write_pages(ids[:6], k[:6], v[:6])
    store.load(ids[:2])  # touches pages 0 and 1 in the host tier
    store.write_pages(ids[6:], k[6:], v[6:])
    assert store.where(ids) == ["host", "host", "disk", "disk", "disk", "host", "host", "host", "host"]
    assert ("host", ids[2:5].tolist()) in recorder.evicted
    stats = store.stats()
    assert stats.tier("host").resident_pages == 6 and stats.tier("disk").resident_pages == 3
    assert stats.moves["spill"]["pages"] == 3
    got_k, _, _ = store.read_pages(ids)
    assert torch.equal(bits(got_k), bits(k))


def test_a_write_larger_than_the_host_goes_partly_straight_to_disk(stack):
    store, _ = stack
    ids = store.allocate(10)
    k, v = _kv(10, 2)
    store.write_pages(ids, k, v)
    assert store.where(ids) == ["disk"] * 4 + ["host"] * 6
    assert torch.equal(bits(store.read_pages(ids)[1]), bits(v))


def test_the_last_tier_full_raises_and_changes_nothing(tmp_path):
    store = TieredStore.build(_config(tmp_path, device_pages=2, host_pages=2, disk_pages=3), head_dim=8)
    ids = store.allocate(6)
    k, v = _kv(6, 3)
    store.write_pages(ids[:5], k[:5], v[:5])
    before = store.where(ids[:5])
    with pytest.raises(StorageError, match="tier 'disk' is full"):
        store.write_pages(ids[5:], k[5:], v[5:])
    assert store.where(ids[:5]) == before
    assert torch.equal(bits(store.read_pages(ids[:5])[0]), bits(k[:5]))
    store.close()


def test_load_is_one_copy_and_lru_eviction_spares_pinned_pages(stack):
    store, recorder = stack
    ids = store.allocate(8)
    k, v = _kv(8, 4)
    store.write_pages(ids, k, v)  # 2 on disk, 6 on host
    recorder.loaded.clear()
    slots = store.load(ids[[0, 1, 6, 7]], pin=True)  # from disk and host in one move
    last = store.stats().last["load"]
    assert last.copies == 1 and last.sources == {"disk": 2, "host": 2} and last.pages == 4
    assert recorder.loaded == [("device", sorted(ids[[0, 1, 6, 7]].tolist()), 4 * SPEC.page_nbytes, 1)]
    with pytest.raises(StorageError, match="cannot load 2 pages into tier 'device'"):
        store.load(ids[2:4])  # the device is full of pinned pages
    store.release(ids[[0, 6]])
    store.load(ids[[1, 7]])  # touch: 0 and 6 are now the least recently used
    new = store.load(ids[2:4])
    assert set(recorder.evicted[-1][1]) == set(ids[[0, 6]].tolist())
    assert sorted(new.tolist()) == sorted(slots[[0, 2]].tolist())  # their slots were reused
    assert torch.equal(bits(store.device_pool.k[slots[[1, 3]]]), bits(k[[1, 7]]))
    with pytest.raises(PageError, match="in flight"):
        store.free(ids[[1]])
    store.release(ids[[1, 7]])
    store.free(ids[[1]])


def test_load_with_repeats_and_already_resident_pages(stack):
    store, _ = stack
    ids = store.allocate(3)
    k, v = _kv(3, 5)
    store.write_pages(ids, k, v)
    first = store.load(ids[:2])
    slots = store.load(torch.stack([ids[2], ids[0], ids[2], ids[1]]))
    assert slots[0] == slots[2] and slots[1] == first[0] and slots[3] == first[1]
    assert store.stats().last["load"].pages == 1
    assert torch.equal(bits(store.device_pool.v[slots]), bits(v[[2, 0, 2, 1]]))


def test_scattered_device_slots_take_the_staging_path(stack):
    store, _ = stack
    ids = store.allocate(6)
    k, v = _kv(6, 6)
    store.write_pages(ids, k, v)
    store.load(ids[:4])
    store.evict(ids[[0, 2]])  # free slots 0 and 2: not one run
    slots = store.load(ids[4:])
    assert sorted(slots.tolist()) == [0, 2] and store.stats().last["load"].via == "staged"
    assert torch.equal(bits(store.device_pool.k[slots]), bits(k[4:]))
    store.evict(ids)
    slots = store.load(ids[:3])
    assert slots.tolist() == [0, 1, 2]
    assert store.stats().last["load"].via == ("direct" if store.tiers[0].device.type == "cpu" else "staged")


def test_rewriting_a_resident_page_updates_its_device_copy(stack):
    store, _ = stack
    ids = store.allocate(2)
    store.write_pages(ids, *_kv(2, 7))
    slots = store.load(ids)
    k, v = _kv(2, 8)
    store.write_pages(ids[1:], k[1:], v[1:], torch.tensor([2]))
    assert torch.equal(bits(store.device_pool.k[slots[1]]), bits(k[1]))
    assert store.read_pages(ids[1:])[2].tolist() == [2]
    assert store.stats().moves["writethrough"]["pages"] == 1


def test_bad_writes_raise_naming_the_value_and_change_nothing(stack):
    store, _ = stack
    ids = store.allocate(2)
    k, v = _kv(2, 9)
    with pytest.raises(TensorSpecError, match="float32"):
        store.write_pages(ids, k.float(), v.float())
    with pytest.raises(TensorSpecError, match=r"\(2, 4, 4\)"):
        store.write_pages(ids, k[..., :4], v[..., :4])
    with pytest.raises(TensorSpecError, match="meta"):
        store.write_pages(ids, k, torch.empty_like(v, device="meta"))
    with pytest.raises(TensorSpecError, match=r"\[1, 4\]"):
        store.write_pages(ids, k, v, torch.tensor([0, 4]))
    with pytest.raises(PageError, match="page id 9 is out of range"):
        store.write_pages(torch.tensor([0, 9]), k, v)
    assert store.where(ids) == [None, None]
    with pytest.raises(PageError, match="has no data"):
        store.load(ids)


def test_freed_pages_are_gone_from_every_tier(stack):
    store, _ = stack
    ids = store.allocate(8)
    store.write_pages(ids, *_kv(8, 10))
    store.load(ids[:3])
    store.free(ids[[0, 1, 7]])
    for tier in store.tiers:
        assert not tier.lookup(ids[[0, 1, 7]]).any()
    with pytest.raises(PageError, match=f"page id {int(ids[0])} is not allocated"):
        store.load(ids[:1])
    with pytest.raises(PageError, match="not allocated"):
        store.read_pages(ids[7:])
    assert store.allocate(1).item() in ids[[0, 1, 7]].tolist()


def test_page_table_lists_device_slots_and_lengths(stack):
    store, _ = stack
    ids = store.allocate(3)
    store.write_pages(ids, *_kv(3, 11), torch.tensor([4, 2, 3]))
    table = store.page_table(torch.tensor([[ids[0], ids[2]], [ids[1], -1]]))
    table.validate(num_pages=store.device_pool.kv.shape[0])
    slots = store.load(ids)
    assert table.indices.tolist() == slots[[0, 2, 1]].tolist()
    assert table.page_lens.tolist() == [4, 3, 2] and table.indptr.tolist() == [0, 2, 3]


@pytest.mark.parametrize("names", [("device",), ("host", "disk"), ("device", "disk")])
def test_other_stacks(tmp_path, names):
    store = TieredStore.build(_config(tmp_path, device_pages=3, host_pages=3, disk_pages=10), names,
                              head_dim=8)
    ids = store.allocate(3)
    k, v = _kv(3, 12)
    store.write_pages(ids, k, v)
    slots = store.load(ids[[2, 0]])
    assert torch.equal(bits(store.device_pool.k[slots]), bits(k[[2, 0]]))
    assert torch.equal(bits(store.read_pages(ids)[1]), bits(v))
    store.close()


def test_store_from_a_composed_policy(tmp_path):
    pm = get_plugin_manager(load_entrypoints=False)
    registry = build_registry(pm)
    selector = registry.names("selector")[0] if registry.names("selector") else None
    if selector is None:
        pytest.skip("no selector registered yet")
    config = _config(tmp_path, device_pages=2).__class__(
        page_size=4, dtype="fp16", tiers=TierConfig(device_pages=2, disk_dir=tmp_path),
        geometry=ModelGeometry(num_layers=2, num_q_heads=2, num_kv_heads=1, head_dim=8))
    policy = compose_policy(selector=selector, config=config, tiers=("device", "host", "disk"),
                            plugin_manager=pm)
    store = TieredStore.from_policy(policy)
    assert [t.name for t in store.tiers] == ["device", "host", "disk"]
    assert store.spec == SPEC and store.tiers[0].capacity == 2
    store.close()


def test_store_rejects_mismatched_or_duplicate_tiers():
    a = HostTier(name="host", spec=SPEC)
    b = HostTier(name="host", spec=SPEC)
    c = DeviceTier(name="device", spec=PageSpec(page_size=4, head_dim=16, dtype=torch.float16))
    with pytest.raises(ConfigError, match="distinct"):
        TieredStore([a, b])
    with pytest.raises(ConfigError, match="disagree"):
        TieredStore([c, a])
    with pytest.raises(ConfigError, match=r"\(\)"):
        TieredStore([])


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the UVA kernel needs CUDA or the Triton interpreter")
def test_uva_transfer_moves_host_pages_with_one_kernel_and_disk_pages_staged(tmp_path):
    spec = PageSpec(page_size=2, head_dim=4, dtype=torch.bfloat16)
    config = CacheConfig(page_size=2, dtype="bf16", tiers=TierConfig(device_pages=6, host_pages=3,
                                                                     disk_dir=tmp_path, disk_pages=8))
    pm = get_plugin_manager(load_entrypoints=False)
    registry = build_registry(pm)
    tiers = [registry.create("tier", n, config, head_dim=4) for n in ("device", "host", "disk")]
    store = TieredStore(tiers, transfer="uva")
    ids = store.allocate(5)
    k, v = _kv(5, 13, spec)
    store.write_pages(ids, k, v)  # 2 on disk, 3 on host
    slots = store.load(ids[[4, 0, 3, 1]])
    last = store.stats().last["load"]
    assert last.via == "staged+uva" and last.sources == {"host": 2, "disk": 2} and last.copies == 2
    assert torch.equal(bits(store.device_pool.k[slots]), bits(k[[4, 0, 3, 1]]))
    assert torch.equal(bits(store.device_pool.v[slots]), bits(v[[4, 0, 3, 1]]))
    store.close()


def test_transfer_mode_is_checked_and_auto_picks_by_device():
    with pytest.raises(ConfigError, match="'fast'"):
        TieredStore([HostTier(name="host", spec=SPEC)], transfer="fast")
    assert TieredStore([DeviceTier(name="device", spec=SPEC, capacity=2)]).transfer == "staged"  # CPU
    if torch.cuda.is_available():
        cuda = TieredStore([DeviceTier(name="device", spec=SPEC, capacity=2, device="cuda")])
        assert cuda.transfer == "uva"


def test_a_closed_store_refuses_every_call_instead_of_handing_out_freed_memory():
    store = TieredStore.build(CacheConfig(page_size=4), ("device", "host"), head_dim=8)
    ids = store.allocate(2)
    store.write_pages(ids, torch.randn(2, 4, 8), torch.randn(2, 4, 8))
    store.close()
    store.close()  # idempotent
    for call in (lambda: store.load(ids), lambda: store.read_pages(ids), lambda: store.allocate(1),
                 lambda: store.read_tokens(ids, torch.zeros(2, dtype=torch.int64)),
                 lambda: store.write_pages(ids, torch.randn(2, 4, 8), torch.randn(2, 4, 8))):
        with pytest.raises(StorageError, match="the store is closed"):
            call()


def test_numpy_page_ids_are_validated_like_tensors():
    import numpy as np

    from icecache.storage.layout import PageSpec

    tier = HostTier(name="host", spec=PageSpec(page_size=4, head_dim=8), capacity=8)
    with pytest.raises(PageError, match="page id 7 is listed twice"):
        tier.prepare_store(np.array([7, 7], dtype=np.int64))
    with pytest.raises(PageError, match="page id -1 is out of range"):
        tier.prepare_store(np.array([-1, 3], dtype=np.int64))
    assert tier.stats().in_flight_pages == 0  # nothing reserved by the refused calls
    slots = tier.prepare_store(np.array([5, 2], dtype=np.int64))  # distinct, unsorted: fine
    assert slots.numel() == 2
