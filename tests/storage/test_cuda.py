"""The CUDA path: pinned host tier, staged one-copy loads, the UVA kernel, asynchronous reuse."""

import pytest
import torch

from icecache.core.config import CacheConfig, TierConfig
from icecache.storage.store import TieredStore
from icecache.testing.strategies.tiers import bits, random_records

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _store(tmp_path, transfer="staged", dtype="fp16"):
    config = CacheConfig(page_size=16, dtype=dtype, tiers=TierConfig(device_pages=64, host_pages=96,
                                                                     disk_dir=tmp_path, disk_pages=512))
    return TieredStore.build(config, head_dim=128, transfer=transfer)


@pytest.mark.parametrize("transfer", ["staged", "uva"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_loads_from_host_and_disk_are_bit_identical_on_the_device(tmp_path, transfer, dtype):
    store = _store(tmp_path, transfer, dtype)
    assert [t.stats().memory for t in store.tiers] == ["cuda", "pinned", "file"]
    spec = store.spec
    ids = store.allocate(160)
    records = random_records(spec, 160, 0)
    store.write_pages(ids, records[:, 0].cuda(), records[:, 1].cuda())  # from device tensors
    assert store.where(ids).count("disk") == 64
    chosen = torch.randperm(160)[:48]
    slots = store.load(ids[chosen])
    kv = store.device_pool.kv
    assert kv.is_cuda and torch.equal(bits(kv[slots.cuda()]), bits(records[chosen]))
    assert store.stats().last["load"].copies in (1, 2)
    store.evict(ids[chosen[::2]])  # scattered free slots: device staging + index_copy_ (or UVA)
    again = torch.randperm(160)[:40]
    slots = store.load(ids[again])
    torch.cuda.synchronize()
    assert torch.equal(bits(store.device_pool.kv[slots.cuda()]), bits(records[again]))
    store.close()


@pytest.mark.parametrize("transfer", ["staged", "uva"])
def test_back_to_back_loads_and_rewrites_do_not_race(tmp_path, transfer):
    store = _store(tmp_path, transfer)
    spec = store.spec
    ids = store.allocate(96)
    records = random_records(spec, 96, 1)
    store.write_pages(ids, records[:, 0], records[:, 1])
    for step in range(20):  # each load is queued asynchronously; the host slots and buffers get reused
        chosen = torch.randperm(96)[:32]
        slots = store.load(ids[chosen])
        fresh = random_records(spec, 8, 100 + step)
        store.write_pages(ids[chosen[:8]], fresh[:, 0], fresh[:, 1])
        records[chosen[:8]] = fresh
        assert torch.equal(bits(store.device_pool.kv[slots.cuda()]), bits(records[chosen]))
    store.close()


def test_transfer_bench_runs_on_cuda(tmp_path):
    import json

    from icecache.cli.main import main

    out = tmp_path / "t.json"
    assert main(["bench", "transfer", "--json", str(out), "--pages", "64", "--host-pages", "512",
                 "--disk-pages", "512", "--repeats", "3", "--disk-dir", str(tmp_path)]) == 0
    payload = json.loads(out.read_text())
    assert payload["device_is_cpu_standin"] is False and payload["loaded_pages_match"] is True
    assert payload["bulk_uva_vs_memcpy"] > 0
