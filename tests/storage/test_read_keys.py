"""``TieredStore.read_keys``: whole key halves of written pages, ``-1`` entries zeroed or left as filler."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, TierConfig
from icecache.storage.store import TieredStore

S, D = 4, 8


def _store(n_pages: int, *, host_pages: int | None = None, disk_dir=None):
    config = CacheConfig(page_size=S, budget=64, tiers=TierConfig(device_pages=4, host_pages=host_pages,
                                                                  disk_dir=disk_dir))
    tiers = ("device", "host", "disk") if disk_dir is not None else ("device", "host")
    store = TieredStore.build(config, tiers=tiers, head_dim=D)
    ids = store.allocate(n_pages)
    gen = torch.Generator().manual_seed(n_pages)
    k = torch.randn(n_pages, S, D, generator=gen)
    v = torch.randn(n_pages, S, D, generator=gen)
    store.write_pages(ids, k, v)
    return store, ids, k


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.lists(st.integers(-1, 11), min_size=1, max_size=20))
def test_read_keys_matches_written_pages(n_pages, picks):
    store, ids, k = _store(n_pages)
    want = torch.tensor([p if p < n_pages else -1 for p in picks])
    asked = torch.where(want >= 0, ids[want.clamp_min(0)], -1)
    got = store.read_keys(asked)
    expect = torch.where((want >= 0)[:, None, None], k[want.clamp_min(0)], 0.0)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
    # without zeroing only the written pages' rows are promised
    loose = store.read_keys(asked, zero_missing=False)
    torch.testing.assert_close(loose[want >= 0], expect[want >= 0], rtol=0, atol=0)
    assert bool(torch.isfinite(loose).all())
    store.close()


def test_read_keys_across_host_and_disk(tmp_path):
    store, ids, k = _store(10, host_pages=3, disk_dir=tmp_path)
    on_disk = [occ["pages"] for occ in store.occupancy() if occ["memory"] == "file"]
    assert on_disk and on_disk[0] > 0, "the pages must span host and disk"
    asked = torch.tensor([int(ids[9]), -1, int(ids[0]), int(ids[0]), int(ids[5])])
    got = store.read_keys(asked)
    torch.testing.assert_close(got[0], k[9], rtol=0, atol=0)
    assert bool((got[1] == 0).all())
    torch.testing.assert_close(got[2], k[0], rtol=0, atol=0)
    torch.testing.assert_close(got[3], k[0], rtol=0, atol=0)
    torch.testing.assert_close(got[4], k[5], rtol=0, atol=0)
    store.close()
