"""A sparse layer's one copy of its KV (``SparseLayerKV``): whatever the tiers (a device pool too small for
two steps, a host tier spilling to a real disk file), every position reads back exactly the key and value
it was given, at every step, through the reader the selector and index use. No model needed."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.errors import ConfigError
from icecache.core.policy import compose_policy
from icecache.integrations.hf import IceCache

D = 8


def _dense_reference(query, keys, values, mask, scale):
    """Attention of ``query`` [B, H_q, D] over ``keys``/``values`` [B, H_kv, n, D] where ``mask``."""
    B, H, n, d = keys.shape
    q = query.reshape(B, H, -1, d)
    logits = torch.einsum("bhgd,bhnd->bhgn", q, keys) * scale
    logits = logits.masked_fill(~mask[:, :, None], float("-inf"))
    return torch.einsum("bhgn,bhnd->bhgd", torch.softmax(logits, -1), values).reshape(B, -1, d)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(selector=st.sampled_from(["icecache", "quest", "oracle", "clusterkv", "streamingllm"]),
       batch=st.integers(1, 2), heads=st.integers(1, 2), n=st.integers(20, 120), steps=st.integers(0, 30),
       spill=st.booleans(),
       seed=st.integers(0, 2**16), data=st.data())
def test_every_position_reads_back_what_was_written(tmp_path_factory, selector, batch, heads, n, steps, spill,
                                                    seed, data):
    geometry = ModelGeometry(num_layers=2, num_q_heads=heads * 2, num_kv_heads=heads, head_dim=D)
    tiers = (TierConfig(device_pages=batch * heads * 40, host_pages=3, disk_dir=tmp_path_factory.mktemp("d"))
             if spill else TierConfig())
    names = ("device", "host", "disk") if spill else ("device", "host")
    config = CacheConfig(page_size=8, budget=48, window_tokens=8, dense_layers=1, geometry=geometry,
                         tiers=tiers)
    cache = IceCache(compose_policy(selector=selector, config=config, tiers=names), 2)
    gen = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(2, batch, heads, n, D, generator=gen)
    start = torch.tensor(data.draw(st.lists(st.integers(0, n // 2), min_size=batch, max_size=batch)))
    for layer in cache.layers:
        layer.load_prefill(keys, values, start)
    layer = cache.layers[1]
    for step in range(steps + 1):
        total = keys.shape[2]
        pos = torch.arange(total).expand(batch, heads, total)
        real = pos >= start[:, None, None]
        got_k, got_v = layer.sparse.gather(torch.where(real, pos, -1))
        assert torch.equal(got_k[real], keys[real]) and torch.equal(got_v[real], values[real]), step
        assert torch.equal(layer.sparse.keys(pos)[real], keys[real])
        layout = layer.selector.layout.token_ids  # whole pages as stored, in layout slot order
        if layout.shape[2]:
            ids = torch.arange(layout.shape[2]).expand(batch, heads, -1)
            stored = layer.sparse.page_keys(ids)
            want = layer.sparse.keys(layout)
            assert torch.equal(stored[layout >= 0], want[layout >= 0])
        assert bool((got_k[~real] == 0).all())  # padding reads as zeros
        resident = layer.selector.resident_ids()  # [B, R] sinks + window
        pos_ = layer.selector.positions
        bk, bv, held = layer.sparse.resident_block(pos_.sink_count(), pos_.window_count())
        for b in range(batch):  # the block holds exactly the resident positions, each one's K/V
            want_ids = sorted(resident[b][resident[b] >= 0].tolist())
            for h in range(heads):
                assert sorted(held[b, h][held[b, h] >= 0].tolist()) == want_ids, step
        ok = held >= 0
        want_k, want_v = layer.sparse.gather(torch.where(ok, held, -1))
        assert torch.equal(bk[ok], want_k[ok]) and torch.equal(bv[ok], want_v[ok]), step
        # the selector's resident logits (read from that block) are those of the resident positions
        q = torch.randn(batch, heads, 2, D, generator=gen)
        got = layer.selector.resident_logits(q)  # [B, H, 2, R'] in the block's order
        ref_k = layer.sparse.keys(resident[:, None].expand(batch, heads, -1))
        ref = q @ ref_k.transpose(-1, -2) * D**-0.5
        ref = torch.where((resident >= 0)[:, None, None], ref, float("-inf"))
        for b in range(batch):
            for h in range(heads):
                for g in range(2):
                    a, r = got[b, h, g], ref[b, h, g]
                    a, r = a[a > float("-inf")].sort().values, r[r > float("-inf")].sort().values
                    assert torch.allclose(a, r, atol=1e-5), step
        k, v = torch.randn(2, batch, heads, 1, D, generator=gen)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        for each in cache.layers:
            each.update(k, v)
            query = torch.randn(batch, heads * 2, 1, D, generator=gen)
            out = each.decode_attention(query, D**-0.5)
            if each is layer:  # what the step attended is dense attention over exactly its selection
                mask = each.last_selection.token_mask(keys.shape[2])
                ref = _dense_reference(query[:, :, 0], keys, values, mask, D**-0.5)
                assert torch.allclose(out[:, 0], ref, atol=1e-5), step
    if spill and int((layer.sparse.phys >= 0).sum()) > 3:  # more pages than the host tier holds
        assert cache.store.stats().moves["spill"]["pages"] > 0
    cache.close()


def test_a_layout_that_moves_tokens_is_refused():
    geometry = ModelGeometry(num_layers=2, num_q_heads=2, num_kv_heads=1, head_dim=D)
    config = CacheConfig(page_size=8, budget=48, window_tokens=8, dense_layers=1, geometry=geometry)
    cache = IceCache(compose_policy(selector="quest", config=config), 2)
    keys = torch.randn(1, 1, 64, D)
    for layer in cache.layers:
        layer.load_prefill(keys, keys, torch.zeros(1, dtype=torch.int64))
    layout = cache.layers[1].selector.layout.token_ids.clone()
    layout[0, 0, 0, :2] = layout[0, 0, 0, :2].flip(0)  # page 0's first two tokens swap slots
    layout[0, 0, 0, -1] = -1  # and it loses its last one
    with pytest.raises(ConfigError, match="page 0 of row \\[b=0, h=0\\] lost or reordered tokens"):
        cache.layers[1].sparse.sync(layout)


@pytest.mark.parametrize("selector", ["quest", "oracle", "streamingllm"])
def test_sinks_longer_than_the_prompt_hold_the_decoded_tokens(selector):
    """--sink above the prompt's length: decoded positions among the first sink_tokens are sinks, and
    read back as what was decoded (they once held copies of the prompt's last token: wrong answers)."""
    geometry = ModelGeometry(num_layers=2, num_q_heads=2, num_kv_heads=1, head_dim=D)
    config = CacheConfig(page_size=8, budget=64, sink_tokens=20, window_tokens=4, dense_layers=1,
                         geometry=geometry)
    cache = IceCache(compose_policy(selector=selector, config=config), 2)
    gen = torch.Generator().manual_seed(0)
    keys, values = torch.randn(2, 2, 1, 6, D, generator=gen)  # 6 prompt positions, row 1 starts at 2
    start = torch.tensor([0, 2])
    for layer in cache.layers:
        layer.load_prefill(keys, values, start)
    layer = cache.layers[1]
    for _ in range(30):
        k, v = torch.randn(2, 2, 1, 1, D, generator=gen)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        for each in cache.layers:
            each.update(k, v)
    pos = torch.arange(keys.shape[2]).expand(2, 1, -1)
    real = pos >= start[:, None, None]
    got_k, got_v = layer.sparse.gather(torch.where(real, pos, -1))
    assert torch.equal(got_k[real], keys[real]) and torch.equal(got_v[real], values[real])
    cache.close()


@pytest.mark.parametrize("policy", ["snapkv@256", None, {"selector": "quest"}])
def test_a_cache_refuses_a_policy_that_is_not_a_composed_one(policy):
    """A name or a dict where a composed policy belongs is a clear error, not an AttributeError later."""
    with pytest.raises(ConfigError, match="policy must be a CachePolicy.*got") as err:
        IceCache(policy, 2)
    assert repr(policy) in str(err.value)

