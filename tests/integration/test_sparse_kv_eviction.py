"""True eviction through the transformers integration (no model): a selector that evicts for good frees
its pages in the store, never attends an evicted token again, and its output is dense attention over
exactly the tokens it kept."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.hookspecs import hookimpl
from icecache.core.plugins import get_plugin_manager
from icecache.core.policy import compose_policy
from icecache.integrations.hf import IceCache
from icecache.selectors.policies.quest import QuestSelector

D = 8


def _cache(selector, *, batch=2, heads=2, budget=24, slots=1, tiers=None, names=("device", "host"), **opts):
    geometry = ModelGeometry(num_layers=2, num_q_heads=heads * 2, num_kv_heads=heads, head_dim=D)
    config = CacheConfig(page_size=4, budget=budget, sink_tokens=2, window_tokens=6, dense_layers=1,
                         geometry=geometry, tiers=tiers or TierConfig())
    options = {"selector": {"window": 4, "slots_per_page": slots, **opts}}
    return IceCache(compose_policy(selector=selector, config=config, tiers=names, options=options), 2)


def _prefill(cache, n, *, batch=2, heads=2, seed=0, start=None):
    gen = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(2, batch, heads, n, D, generator=gen)
    queries = torch.randn(batch, heads * 2, 4, D, generator=gen)
    start = torch.zeros(batch, dtype=torch.int64) if start is None else start
    for layer in cache.layers:
        layer.load_prefill(keys, values, start, queries)
    return keys, values, start, gen


def _reference(query, keys, values, mask, scale):
    """Dense attention of ``query`` [B, H_q, D] over ``keys``/``values`` [B, H_kv, n, D] where ``mask``."""
    B, H, n, d = keys.shape
    q = query.reshape(B, H, -1, d)
    logits = torch.einsum("bhgd,bhnd->bhgn", q, keys) * scale
    logits = logits.masked_fill(~mask[:, :, None], float("-inf"))
    return torch.einsum("bhgn,bhnd->bhgd", torch.softmax(logits, -1), values).reshape(B, -1, d)


@pytest.mark.parametrize("selector", ["h2o-evict", "snapkv-press"])
@pytest.mark.parametrize("slots", [1, 4])
def test_evicted_tokens_are_freed_never_attended_and_outputs_match_dense(selector, slots):
    batch, heads, n = 2, 2, 80
    cache = _cache(selector, slots=slots)
    keys, values, start, gen = _prefill(cache, n, start=torch.tensor([0, 5]))
    layer = cache.layers[1]
    before = cache.memory_report()
    assert before["evicted_tokens"] > 0
    occ = {t["name"]: t for t in before["tiers"]}
    held = occ["host"]["tokens"]
    # what the layer keeps is at most the budget per row; with 1-slot pages exactly that is stored
    assert held <= batch * heads * 24 if slots == 1 else held < batch * heads * n
    evicted_so_far = layer.selector.evicted.clone()
    scale = D**-0.5
    for step in range(40):
        k, v = torch.randn(2, batch, heads, 1, D, generator=gen)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        q = torch.randn(batch, heads * 2, 1, D, generator=gen)
        for each in cache.layers:
            each.update(k, v)
        out = layer.decode_attention(q, scale)[:, 0]  # [B, H_q, D]
        sel = layer.last_selection
        total = keys.shape[2]
        gone = layer.selector.evicted
        assert bool(gone[..., : evicted_so_far.shape[2]].ge(evicted_so_far).all()), "evicted set shrank"
        evicted_so_far = gone.clone()
        assert not bool(sel.token_mask(total)[gone].any()), f"step {step}: an evicted token was selected"
        kept = sel.ledger.kept
        assert bool((kept <= 24).all()) and bool((sel.ledger.total == kept).all())
        real = torch.arange(total) >= start[:, None, None]
        mask = real & ~gone
        torch.testing.assert_close(out, _reference(q[:, :, 0], keys, values, mask, scale))
        # evicted positions read as zeros through the layer's key reader; the others as written
        pos = torch.arange(total).expand(batch, heads, total)
        got = layer.sparse.keys(torch.where(real, pos, -1))
        assert bool((got[gone] == 0).all()) and torch.equal(got[mask], keys[mask])
    after = cache.memory_report()
    host = {t["name"]: t for t in after["tiers"]}["host"]
    assert host["tokens"] <= held + (slots - 1) * batch * heads * 12
    stored = int((layer.sparse.phys >= 0).sum())
    assert stored == host["pages"]  # one sparse layer: every page it references is in the store
    if slots == 1:
        assert host["tokens"] <= batch * heads * 24
        assert after["host"]["kv_payload"] < 0.5 * batch * heads * total * 2 * D * 4


def test_eviction_frees_pages_on_every_tier(tmp_path):
    tiers = TierConfig(host_pages=8, disk_dir=tmp_path)
    cache = _cache("h2o-evict", tiers=tiers, names=("device", "host", "disk"), slots=4)
    _, _, _, gen = _prefill(cache, 120)
    store = cache.store
    resident = {t["name"]: t["pages"] for t in store.occupancy()}
    written = cache.layers[1].sparse.phys
    assert resident["host"] + resident["disk"] == int((written >= 0).sum())
    assert resident["host"] + resident["disk"] < 2 * 2 * 120 // 4
    for _ in range(10):
        k, v = torch.randn(2, 2, 2, 1, D, generator=gen)
        for each in cache.layers:
            each.update(k, v)
        cache.layers[1].decode_attention(torch.randn(2, 4, 1, D, generator=gen), D**-0.5)
    ids = cache.layers[1].sparse.phys
    ids = ids[ids >= 0]
    assert store.pool.num_allocated == ids.numel()  # freed ids went back to the pool


def test_a_selector_that_does_not_evict_keeps_everything():
    geometry = ModelGeometry(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=D)
    config = CacheConfig(page_size=4, budget=24, sink_tokens=2, window_tokens=6, dense_layers=1,
                         geometry=geometry)
    cache = IceCache(compose_policy(selector="h2o", config=config, options={"selector": {"window": 4}}), 2)
    _prefill(cache, 60)
    report = cache.memory_report()
    assert report["evicted_tokens"] == 0 and cache.layers[1].sparse.gone is None
    assert {t["name"]: t for t in report["tiers"]}["host"]["tokens"] == 2 * 2 * (60 - 2 - 6)


class _OldestPagesPress(QuestSelector):
    """Test press: a Quest selector that keeps at most ``keep`` pages per row, evicting the oldest whole
    pages for good (page-level eviction through the paged attention path)."""

    evicts = True
    keep = 3

    def _after_update(self):
        lens = self.page_lens()  # [B, H_kv, P], 0 once evicted
        alive = lens > 0
        rank = alive.flip(-1).cumsum(-1).flip(-1)  # alive pages from here to the last
        drop = alive & (rank > self.keep)
        if bool(drop.any()):
            pages = torch.where(drop[..., None], self._pages, -1)
            B, H, P, S = pages.shape
            self.evict(pages.reshape(B, H, P * S))


class _Plugin:
    @hookimpl
    def icecache_register_selectors(self, register):
        register("oldest-pages-press", lambda config, *, layer_idx=0, policy=None, **o:
                 _OldestPagesPress(config=config, layer_idx=layer_idx, policy=policy, **o))


def test_page_level_eviction_through_the_paged_path_matches_dense():
    geometry = ModelGeometry(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=D)
    config = CacheConfig(page_size=4, budget=40, sink_tokens=2, window_tokens=6, dense_layers=1,
                         geometry=geometry)
    pm = get_plugin_manager(load_entrypoints=False, extra=(_Plugin(),))
    cache = IceCache(compose_policy(selector="oldest-pages-press", config=config, plugin_manager=pm), 2)
    keys, values, start, gen = _prefill(cache, 60)
    layer = cache.layers[1]
    assert int((layer.sparse.phys >= 0).sum()) == 2 * 2 * 3  # only the kept pages were ever stored
    for step in range(12):
        k, v = torch.randn(2, 2, 2, 1, D, generator=gen)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        q = torch.randn(2, 4, 1, D, generator=gen)
        for each in cache.layers:
            each.update(k, v)
        out = layer.decode_attention(q, D**-0.5)[:, 0]
        assert layer.last_selection.page_ids.shape[-1] > 0  # the paged kernel path ran
        mask = ~layer.selector.evicted & (torch.arange(keys.shape[2]) >= start[:, None, None])
        torch.testing.assert_close(out, _reference(q[:, :, 0], keys, values, mask, D**-0.5))
        assert cache.store.pool.num_allocated <= 2 * 2 * 4, step
    assert cache.memory_report()["freed_pages"] > 0


def test_the_embedded_model_generates_with_h2o_evict_and_holds_only_its_budget(model_and_tokenizer,
                                                                                passkey_prompts):
    model, _ = model_and_tokenizer
    ids = passkey_prompts[0][1][:300]
    budget = 64
    cache = IceCache.for_model(model, selector="h2o-evict", budget=budget)
    seen = {}
    for layer in cache.layers:
        if not layer.dense:
            def record(query, scale, *args, _layer=layer, _inner=layer.decode_attention, **kwargs):
                out = _inner(query, scale, *args, **kwargs)
                seen[_layer.layer_idx] = (query, scale, out)
                return out
            layer.decode_attention = record
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, past_key_values=cache)
    assert out.shape[1] == len(ids) + 4
    report = cache.memory_report()
    sparse = [layer for layer in cache.layers if not layer.dense]
    geo = cache.policy.config.geometry
    rows = geo.num_kv_heads
    token = {t["name"]: t for t in report["tiers"]}["host"]["token_nbytes"]
    # the store holds at most the budget less sinks and window per row and layer: the rest is gone
    assert report["host"]["kv_payload"] <= len(sparse) * rows * (budget - 4 - 12) * token
    assert report["evicted_tokens"] >= len(sparse) * rows * (len(ids) - budget)
    for layer in sparse:
        gone = layer.selector.evicted
        assert not bool(layer.last_selection.token_mask(layer.n)[gone].any())
        assert int(layer.last_selection.ledger.kept.max()) <= budget
        # the step's output is dense attention over exactly what was kept (the layer's own K/V)
        query, scale, got = seen[layer.layer_idx]
        n = layer.n
        k, v = layer.sparse.gather(torch.arange(n).expand(1, rows, n))
        mask = ~gone & (torch.arange(n) >= layer.start[:, None, None])
        want = _reference(query[:, :, 0].float(), k.float(), v.float(), mask, scale)
        torch.testing.assert_close(got[:, 0].float(), want, atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(selector=st.sampled_from(["h2o-evict", "snapkv-press"]), batch=st.integers(1, 2),
       heads=st.integers(1, 2), n=st.integers(10, 90), steps=st.integers(0, 20),
       slots=st.sampled_from([1, 2, 8]), spill=st.booleans(), seed=st.integers(0, 2**16))
def test_what_is_kept_reads_back_and_only_it_is_stored(tmp_path_factory, selector, batch, heads, n, steps,
                                                       slots, spill, seed):
    tiers = TierConfig(host_pages=4, disk_dir=tmp_path_factory.mktemp("d")) if spill else None
    names = ("device", "host", "disk") if spill else ("device", "host")
    cache = _cache(selector, batch=batch, heads=heads, slots=slots, tiers=tiers, names=names)
    keys, values, start, gen = _prefill(cache, n, batch=batch, heads=heads, seed=seed)
    layer = cache.layers[1]
    for step in range(steps + 1):
        total = keys.shape[2]
        pos = torch.arange(total).expand(batch, heads, total)
        kept = ~layer.selector.evicted
        got_k, got_v = layer.sparse.gather(pos)
        assert torch.equal(got_k[kept], keys[kept]) and torch.equal(got_v[kept], values[kept]), step
        assert bool((got_k[~kept] == 0).all())
        # the store holds exactly the pages the layer references, and no page whose tokens are all gone
        phys = layer.sparse.phys
        assert cache.store.pool.num_allocated == int((phys >= 0).sum())
        alive = kept & layer.selector.positions.paged_mask()[:, None]
        assert int((phys >= 0).sum()) <= int(alive.sum())
        if slots == 1:
            assert int((phys >= 0).sum()) == int(alive.sum())
        k, v = torch.randn(2, batch, heads, 1, D, generator=gen)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        for each in cache.layers:
            each.update(k, v)
        layer.decode_attention(torch.randn(batch, heads * 2, 1, D, generator=gen), D**-0.5)
