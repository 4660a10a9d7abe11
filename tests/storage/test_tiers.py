import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.errors import ConfigError, PageError, StorageError
from icecache.storage.device import DeviceTier
from icecache.storage.disk import DiskTier
from icecache.storage.host import HostTier
from icecache.storage.layout import PageSpec
from icecache.testing.conformance.tier import make_tier_machine
from icecache.testing.strategies.tiers import bits, random_records

SPEC = PageSpec(page_size=4, head_dim=8, dtype=torch.float16)
CONFORMANCE = settings(max_examples=15, stateful_step_count=25, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow])


def _device(config):
    return DeviceTier.from_config(config)


def _host(config):
    return HostTier.from_config(config)


def _disk(config):
    return DiskTier.from_config(config)  # a private temporary directory, removed on close


for _factory, _dtype in ((_device, torch.float32), (_host, torch.bfloat16), (_disk, torch.float16)):
    _machine = make_tier_machine(_factory, dtype=_dtype, capacities=st.one_of(st.none(), st.integers(1, 6)))
    _machine.TestCase.settings = CONFORMANCE
    globals()[f"TestConformance{_factory.__name__.title().replace('_', '')}"] = _machine.TestCase


@pytest.fixture(params=["device", "host", "disk"])
def make(request, tmp_path):
    made = []

    def build(capacity=None, eviction="lru", spec=SPEC):
        if request.param == "device":
            tier = DeviceTier(name="device", spec=spec, capacity=capacity, eviction=eviction)
        elif request.param == "host":
            tier = HostTier(name="host", spec=spec, capacity=capacity, eviction=eviction)
        else:
            tier = DiskTier(name="disk", spec=spec, capacity=capacity, eviction=eviction, directory=tmp_path)
        made.append(tier)
        return tier

    yield build
    for tier in made:
        tier.close()


def _store(tier, ids, records):
    ids = torch.as_tensor(ids)
    slots = tier.prepare_store(ids)
    tier.write(slots, records)
    tier.complete_store(ids)
    return slots


def _read(tier, ids):
    ids = torch.as_tensor(ids)
    slots = tier.prepare_load(ids)
    try:
        return tier.read(slots)
    finally:
        tier.complete_load(ids)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_is_bit_identical(make, dtype):
    spec = PageSpec(page_size=4, head_dim=3, dtype=dtype)  # 3: records not a multiple of 8 bytes
    tier = make(spec=spec)
    records = random_records(spec, 70, seed=1)  # NaN payloads, -0.0, infinities included
    ids = torch.randperm(200)[:70]
    _store(tier, ids, records)  # grows past the first allocation of slots
    order = torch.randperm(70)
    assert torch.equal(bits(_read(tier, ids[order])), bits(records[order]))


def test_in_flight_pages_are_never_victims_and_cannot_be_freed(make):
    tier = make(capacity=4)
    _store(tier, [0, 1, 2], random_records(SPEC, 3, 0))
    tier.prepare_load(torch.tensor([0]))  # pinned
    tier.prepare_store(torch.tensor([3]))  # being stored
    assert not tier.lookup(torch.tensor([3])).item()
    assert set(tier.victims(4).tolist()) == {1, 2}
    assert tier.in_flight().tolist() == [0, 3]
    with pytest.raises(PageError, match="page 0 is in flight"):
        tier.free(torch.tensor([1, 0]))
    assert tier.lookup(torch.tensor([1])).item()  # nothing freed
    with pytest.raises(PageError, match="page 3 is still being stored"):
        tier.prepare_load(torch.tensor([3]))
    assert sorted(tier.evict(4).tolist()) == [1, 2]
    tier.complete_load(torch.tensor([0]))
    tier.complete_store(torch.tensor([3]), success=False)  # a new page: dropped
    assert tier.resident_ids().tolist() == [0]
    assert tier.free_slots == 3


def test_lru_order_follows_touch_and_fifo_ignores_it(make):
    lru, fifo = make(eviction="lru"), make(eviction="fifo")
    for tier in (lru, fifo):
        _store(tier, [5, 6, 7], random_records(SPEC, 3, 0))
        tier.touch(torch.tensor([5]))
    assert lru.victims(3).tolist() == [6, 7, 5]
    assert fifo.victims(3).tolist() == [5, 6, 7]


def test_capacity_is_enforced_and_a_failed_store_changes_nothing(make):
    tier = make(capacity=2)
    _store(tier, [0, 1], random_records(SPEC, 2, 0))
    with pytest.raises(StorageError, match="room for 0 more pages, not 1"):
        tier.prepare_store(torch.tensor([2]))
    assert tier.resident_ids().tolist() == [0, 1] and tier.stats().in_flight_pages == 0
    slots = _store(tier, [1], random_records(SPEC, 1, 5))  # a rewrite keeps its slot
    assert slots.tolist() == tier.slot_of(torch.tensor([1])).tolist()


def test_new_pages_get_one_contiguous_run_when_there_is_one(make):
    tier = make(capacity=16)
    _store(tier, list(range(8)), random_records(SPEC, 8, 0))
    tier.free(torch.tensor([1, 3, 4, 5, 6]))  # free slots 1, 3..6, 8..15
    slots = tier.prepare_store(torch.tensor([20, 21, 22]))
    assert slots.tolist() == [3, 4, 5]


def test_bad_ids_are_named(make):
    tier = make()
    _store(tier, [4], random_records(SPEC, 1, 0))
    with pytest.raises(PageError, match="page 9 is not in tier"):
        tier.prepare_load(torch.tensor([4, 9]))
    with pytest.raises(PageError, match="page id 4 is listed twice"):
        tier.prepare_store(torch.tensor([4, 4]))
    with pytest.raises(PageError, match="page 4 is not being loaded"):
        tier.complete_load(torch.tensor([4]))
    with pytest.raises(PageError, match="-2"):
        tier.lookup(torch.tensor([-2]))


def test_stats_say_what_backs_each_tier(tmp_path):
    device = DeviceTier(name="device", spec=SPEC, capacity=2)
    host = HostTier(name="host", spec=SPEC)
    disk = DiskTier(name="disk", spec=SPEC, directory=tmp_path)
    _store(host, [0, 1, 2], random_records(SPEC, 3, 0))
    want_device = "cuda" if device.device.type == "cuda" else "cpu-standin"
    assert device.stats().memory == want_device and device.stats().details["cpu_standin"] == (
        want_device == "cpu-standin")
    assert host.stats().memory == ("pinned" if torch.cuda.is_available() else "pageable")
    assert host.stats().resident_bytes == 3 * SPEC.page_nbytes
    assert disk.stats().memory == "file" and disk.stats().details["directory"] == str(tmp_path)
    for t in (device, host, disk):
        t.close()


def test_device_tier_views_are_k_and_v_of_each_slot():
    tier = DeviceTier(name="device", spec=SPEC, capacity=4)
    records = random_records(SPEC, 2, 3)
    slots = _store(tier, [7, 8], records)
    assert torch.equal(bits(tier.k[slots]), bits(records[:, 0]))
    assert torch.equal(bits(tier.v[slots]), bits(records[:, 1]))
    assert tier.k.shape == (4, SPEC.page_size, SPEC.head_dim)


def test_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="'random'"):
        HostTier(name="host", spec=SPEC, eviction="random")
    with pytest.raises(ConfigError, match="head_dim is unknown"):
        HostTier.from_config(CacheConfig())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="pin_memory=True needs CUDA"):
            HostTier(name="host", spec=SPEC, pin_memory=True)
        with pytest.raises(ConfigError, match="'cuda'"):
            DeviceTier.from_config(CacheConfig(geometry=ModelGeometry(num_layers=2, num_q_heads=1,
                                                                      num_kv_heads=1, head_dim=8)),
                                   device="cuda")


def test_from_config_reads_tier_capacities(tmp_path):
    config = CacheConfig(page_size=4, dtype="bf16", tiers=TierConfig(device_pages=3, host_pages=5,
                                                                     disk_dir=tmp_path, disk_pages=7))
    tiers = [cls.from_config(config, head_dim=8) for cls in (DeviceTier, HostTier, DiskTier)]
    assert [t.capacity for t in tiers] == [3, 5, 7]
    assert {t.spec for t in tiers} == {PageSpec(page_size=4, head_dim=8, dtype=torch.bfloat16)}
    assert tiers[2].path.parent == tmp_path
    for t in tiers:
        t.close()
