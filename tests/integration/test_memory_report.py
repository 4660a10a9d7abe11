"""One copy of the KV: a sparse layer's keys and values live once, in the store's pages (plus sinks and
window on the device); ``memory_report()`` itemizes everything the cache holds, checked against a walk
of every array reachable from it. No model needed (random keys through the real cache and store)."""

import pytest
import torch

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.memory import reachable_bytes
from icecache.core.policy import compose_policy
from icecache.integrations.hf import IceCache

D, H, G, N, LAYERS = 16, 2, 2, 300, 3


def _cache(selector, tiers=None, names=("device", "host"), steps=3, seed=0, options=None):
    tiers = tiers or TierConfig()
    geometry = ModelGeometry(num_layers=LAYERS, num_q_heads=H * G, num_kv_heads=H, head_dim=D)
    config = CacheConfig(budget=64, window_tokens=8, dense_layers=1, geometry=geometry, tiers=tiers)
    cache = IceCache(compose_policy(selector=selector, config=config, tiers=names,
                                    options={"selector": options or {}}), LAYERS)
    gen = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(2, LAYERS, 2, H, N, D, generator=gen)
    start = torch.tensor([0, 17])
    for layer in cache.layers:
        layer.load_prefill(keys[layer.layer_idx], values[layer.layer_idx], start)
    for _ in range(steps):
        k, v = torch.randn(2, 2, H, 1, D, generator=gen)
        q = torch.randn(2, H * G, 1, D, generator=gen)
        for layer in cache.layers:
            layer.update(k, v)
            layer.decode_attention(q, D**-0.5)
    return cache


SELECTORS = ["icecache", "icecache-reuse", "quest", "arkvale", "clusterkv:balanced", "infllm", "oracle",
             "streamingllm"]


@pytest.mark.parametrize("selector", SELECTORS)
def test_the_kv_lives_once_and_the_report_counts_everything(selector):
    name, _, variant = selector.partition(":")
    cache = _cache(name, options={"balanced": True} if variant else None)
    report = cache.memory_report()
    token = 2 * D * 4  # fp32 K and V of one position of one KV head
    full = token * 2 * H * (N + 3) * LAYERS
    assert report["full_kv_bytes"] == full
    paged = 0
    for layer in cache.layers[1:]:
        layout = layer.selector.layout.token_ids
        paged += int((layout >= 0).sum())
        # nobody keeps a second copy: no key copy in the selector, none in the index
        assert layer.selector.nbytes()["keys"] == 0
        state = getattr(getattr(layer.selector, "page_index", None), "_state", None)
        assert state is None or state.keys is None
    host = report["host"]
    assert host["kv_payload"] == paged * token  # every paged token once, and nothing else
    # the walk of every reachable array finds (almost) nothing beyond the itemized parts
    assert 0 <= host["other"] <= 0.01 * full, host
    assert host["bookkeeping"] > 0 and host["tables"] > 0
    total = sum(reachable_bytes(cache).values())
    assert report["device_kv_bytes"] - report["device"].get("working_set", 0) + report["host_bytes"] == total
    assert report["page_fill"] > 0.9  # pages are (nearly) full: no half-empty pages
    cache.close()


def test_free_clusterkv_clusters_leave_pages_part_empty_and_the_report_says_so():
    free, balanced = _cache("clusterkv"), _cache("clusterkv", options={"balanced": True})
    f, b = free.memory_report(), balanced.memory_report()
    assert f["page_fill"] < 0.9 < b["page_fill"]
    assert f["host"]["page_padding"] > b["host"]["page_padding"]
    assert f["host"]["kv_payload"] == b["host"]["kv_payload"]  # the same tokens, in emptier pages


def test_a_disk_tier_is_counted_as_disk_and_the_host_cap_holds(tmp_path):
    capped = _cache("icecache", TierConfig(host_pages=20, disk_dir=tmp_path), ("device", "host", "disk"))
    free = _cache("icecache")
    report = capped.memory_report()
    tiers = {t["name"]: t for t in report["tiers"]}
    assert tiers["host"]["allocated_slots"] <= 20 and tiers["disk"]["pages"] > 0
    assert report["disk"]["kv_payload"] > 0
    stored = report["disk"]["kv_payload"] + report["host"]["kv_payload"]
    assert stored == free.memory_report()["host"]["kv_payload"]
    # the same selections from the same keys: the tiers change where pages live, not what is attended
    for a, b in zip(capped.layers[1:], free.layers[1:], strict=True):
        assert torch.equal(a.last_selection.token_ids, b.last_selection.token_ids)
    capped.close()
    free.close()


def test_page_dtype_stores_pages_in_half_the_bytes():
    geometry = ModelGeometry(num_layers=2, num_q_heads=H * G, num_kv_heads=H, head_dim=D)
    reports = []
    for page_dtype in (None, "bfloat16"):
        config = CacheConfig(budget=64, window_tokens=8, dense_layers=1, geometry=geometry,
                             page_dtype=page_dtype)
        cache = IceCache(compose_policy(selector="quest", config=config), 2)
        keys = torch.randn(2, 1, H, N, D, generator=torch.Generator().manual_seed(0))
        for layer in cache.layers:
            layer.load_prefill(keys[0], keys[1], torch.zeros(1, dtype=torch.int64))
        reports.append(cache.memory_report())
        assert cache.store.spec.dtype == (torch.float32 if page_dtype is None else torch.bfloat16)
    assert reports[1]["host"]["kv_payload"] * 2 == reports[0]["host"]["kv_payload"]


@pytest.mark.parametrize("selector", ["h2o-evict", "snapkv-press"])
def test_evicted_tokens_leave_the_report_and_the_walk_agrees(selector):
    options = {"window": 4}
    kept, dropped = _cache(selector.split("-")[0], options=options), _cache(selector, options=options)
    token = 2 * D * 4
    before, after = kept.memory_report(), dropped.memory_report()
    # every sparse layer keeps at most the budget per row: sinks + window + heavy hitters
    assert after["host"]["kv_payload"] <= (LAYERS - 1) * 2 * H * (64 - 4 - 8) * token
    assert after["host"]["kv_payload"] < 0.25 * before["host"]["kv_payload"]
    # NOTE: the position tables still grow with every position seen (a few bytes each, 1-slot pages)
    assert after["host_bytes"] < 0.6 * before["host_bytes"]
    assert after["evicted_tokens"] > 0 and after["page_fill"] == 1.0
    assert 0 <= after["host"]["other"] <= 0.01 * after["full_kv_bytes"], after["host"]
    total = sum(reachable_bytes(dropped).values())
    assert after["device_kv_bytes"] - after["device"].get("working_set", 0) + after["host_bytes"] == total


@pytest.mark.parametrize("selector", ["icecache", "quest", "streamingllm"])
def test_the_first_window_flushes_fit_the_host_room_reserved_at_prefill(selector):
    """A tier grows by copying everything it holds into a larger block: sized to the prompt alone, the
    first window flush grew it (a multi-second stall in one step at 4k x 4). The prefill reserves room
    for the first decode flushes too, at most an eighth of the prompt's pages."""
    def host(cache):
        return next(t for t in cache.store.occupancy() if t["name"] == "host")

    prefilled = _cache(selector, steps=0)
    reserved, stored = host(prefilled)["allocated_slots"], host(prefilled)["pages"]
    assert stored < reserved <= stored + stored // 8 + 1
    decoded = _cache(selector, steps=24)  # NOTE: with a window of 8, a flush every page of tokens
    assert host(decoded)["pages"] > stored  # the flushes wrote pages
    assert host(decoded)["allocated_slots"] == reserved  # and the tier did not grow for them
    prefilled.close()
    decoded.close()
