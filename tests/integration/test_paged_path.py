"""The paged decode path (pages in the tiered store, sinks + window ring on the device, the kernels'
sparse paged attention, merge) gives the attention the token path gives, on random keys, for any
batch / left padding / GQA shape / budget / tier capacity / number of decode steps. No model needed."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.policy import compose_policy
from icecache.integrations.hf import IceCache
from icecache.testing.assertions import assert_close

D = 16


def _cache(selector, config, paged, tiers=("device", "host")):
    policy = compose_policy(selector=selector, config=config, tiers=tiers)
    return IceCache(policy, config.geometry.num_layers, paged=paged)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), selector=st.sampled_from(["quest", "icecache", "arkvale"]),
       batch=st.integers(1, 2), kv_heads=st.integers(1, 2), group=st.sampled_from([1, 3]),
       budget=st.sampled_from([48, 64, 96]), tight=st.booleans(), steps=st.integers(0, 20))
def test_paged_attention_equals_token_gather(data, selector, batch, kv_heads, group, budget, tight, steps):
    n = data.draw(st.integers(60, 160), label="prompt positions")
    rows = st.lists(st.integers(0, 30), min_size=batch, max_size=batch)
    start = torch.tensor(data.draw(rows, label="start"))
    geometry = ModelGeometry(num_layers=3, num_q_heads=kv_heads * group, num_kv_heads=kv_heads, head_dim=D)
    base = CacheConfig(page_size=8, budget=budget, window_tokens=8, geometry=geometry)
    # a device pool of one layer's worst case (one token per page) forces eviction between steps
    tiers = TierConfig(device_pages=batch * kv_heads * base.selected_budget) if tight else TierConfig()
    config = CacheConfig(page_size=8, budget=budget, window_tokens=8, geometry=geometry, tiers=tiers)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    keys = torch.randn(3, batch, kv_heads, n, D, generator=gen)
    values = torch.randn(3, batch, kv_heads, n, D, generator=gen)
    token_path, paged_path = _cache(selector, config, paged=False), _cache(selector, config, paged=True)
    for cache in (token_path, paged_path):
        for layer in cache.layers:
            layer.load_prefill(keys[layer.layer_idx], values[layer.layer_idx], start)
    sparse = [c.layers[2] for c in (token_path, paged_path)]
    # both keep their KV in pages (the one home); only the paged path attends through the page pool
    assert all(s.sparse is not None and s.kv is None for s in sparse)
    assert not token_path.paged and paged_path.paged
    appended = []
    for _ in range(steps + 1):
        k, v = torch.randn(2, batch, kv_heads, 1, D, generator=gen)
        appended.append(k)
        query = torch.randn(batch, kv_heads * group, 1, D, generator=gen)
        outs = []
        for layer in sparse:
            layer.update(k, v)
            outs.append(layer.decode_attention(query, D**-0.5))
        assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
        sel = sparse[1].last_selection
        assert int(sel.ledger.total.max()) <= budget
    # every page of the layout was written with the K/V of its tokens
    layer = sparse[1]
    layout = layer.selector.layout.token_ids
    pages = layer.sparse.phys[layout.ge(0).any(-1)]
    k_store, _, lens = paged_path.store.read_pages(pages)
    tokens = layout[layout.ge(0).any(-1)]  # [n, S]
    host_k = torch.cat([keys[2], *appended], dim=2)
    b, h = torch.nonzero(layout.ge(0).any(-1), as_tuple=True)[:2]
    expect = host_k[b[:, None], h[:, None], tokens.clamp_min(0)]
    mask = (tokens >= 0)[..., None]
    assert_close(k_store * mask, expect * mask)
    assert lens.tolist() == (tokens >= 0).sum(-1).tolist()


def test_paged_path_refuses_extra_tokens_it_cannot_place():
    from icecache.core.budget import BudgetLedger
    from icecache.core.errors import BudgetError
    from icecache.selectors.types import Selection

    geometry = ModelGeometry(num_layers=3, num_q_heads=2, num_kv_heads=1, head_dim=D)
    config = CacheConfig(page_size=8, budget=64, window_tokens=8, geometry=geometry)
    cache = _cache("quest", config, paged=True)
    start = torch.zeros(1, dtype=torch.int64)
    for layer in cache.layers:
        layer.load_prefill(torch.randn(1, 1, 80, D), torch.randn(1, 1, 80, D), start)
    layer = cache.layers[2]
    ledger = BudgetLedger(budget=64, sink=4, window=8, selected=8, extra=torch.tensor([[3]]))
    zeros = torch.zeros(1, 1, 1, dtype=torch.int64)
    sel = Selection(token_ids=zeros, page_ids=zeros, ledger=ledger)
    with pytest.raises(BudgetError, match="cannot place 3 extra tokens"):
        layer.sparse.attend(torch.randn(1, 2, D), sel, D**-0.5, cache.timings)
