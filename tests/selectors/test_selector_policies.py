"""Behaviour of individual selection policies and the errors they raise."""

from __future__ import annotations

import pytest
import torch
from default_selectors import make_selector
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry
from icecache.core.errors import ConfigError, TensorSpecError
from icecache.metrics import attention_probs, attention_recall
from icecache.selectors.bases.selector import SelectorStateError
from icecache.selectors.plumbing.layout import gather_page_keys
from icecache.testing.synthetic import make_clustered_kv, query_for_cluster

FAST = settings(max_examples=30, deadline=None, database=None)


@pytest.mark.parametrize("name", ["quest", "arkvale"])
@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(8, 80), spread=st.sampled_from([0.1, 1.0]))
def test_bound_scores_are_upper_bounds_of_every_key_in_the_page(name, seed, n, spread):
    kv = make_clustered_kv(1, 2, n, 16, num_clusters=3, spread=spread, seed=seed)
    sel = make_selector(name, CacheConfig(budget=32, page_size=4, window_tokens=4))
    sel.prefill(kv.keys)
    q = torch.randn(1, 2, 3, 16, generator=torch.Generator().manual_seed(seed))  # [B, H_kv, G, D]
    bound = sel.score(q, sel.summaries)  # [B, H_kv, G, P]
    k, valid = gather_page_keys(sel.keys, sel.layout.token_ids)  # [B, H_kv, P, S, D]
    exact = torch.einsum("bhgd,bhpsd->bhgps", q, k).masked_fill(~valid[:, :, None], float("-inf")).amax(-1)
    has = valid.any(-1)[:, :, None].expand_as(exact)
    assert bool((bound[has] >= exact[has] - 1e-4).all())


# NOTE: ArkVale is left out on purpose: with |q| large, the sphere bound q.c + r|q| favours pages
# that straddle two clusters (large radius) over the pages inside the queried one.
@pytest.mark.parametrize("name", ["clusterkv", "quest", "infllm", "oracle"])
def test_query_aware_selectors_find_the_queried_cluster(name):
    """Keys in 8 well separated clusters (contiguous runs of positions): a query aimed at one cluster
    must get most of its attention mass at a budget that holds that cluster."""
    kv = make_clustered_kv(
        2, 2, 512, 32, num_clusters=8, spread=0.05, norm_range=(1.0, 1.0), contiguous=True, seed=3
    )
    config = CacheConfig(budget=96, page_size=16, sink_tokens=4, window_tokens=12)
    sel = make_selector(name, config)
    sel.prefill(kv.keys)
    q = query_for_cluster(kv, 2, group_size=3, noise=0.05, scale=40.0, seed=1)
    mask = sel.select(q).token_mask(512)
    recall = attention_recall(attention_probs(q, kv.keys), mask)
    streaming = make_selector("streamingllm", config)
    streaming.prefill(kv.keys)
    floor = attention_recall(attention_probs(q, kv.keys), streaming.select(q).token_mask(512))
    assert bool((recall > 0.8).all()) and bool((recall > floor + 0.3).all()), (recall, floor)


def test_clusterkv_groups_interleaved_clusters_that_contiguous_pages_cannot():
    kv = make_clustered_kv(
        1, 2, 512, 32, num_clusters=16, spread=0.05, norm_range=(1.0, 1.0), contiguous=False, seed=5
    )
    config = CacheConfig(budget=96, page_size=16, sink_tokens=4, window_tokens=12)
    q = query_for_cluster(kv, 4, group_size=2, noise=0.05, scale=40.0, seed=2)
    probs = attention_probs(q, kv.keys)
    recall = {}
    for name in ("clusterkv", "quest"):
        sel = make_selector(name, config)
        sel.prefill(kv.keys)
        recall[name] = attention_recall(probs, sel.select(q).token_mask(512))
    assert bool((recall["clusterkv"] > recall["quest"] + 0.2).all()), recall


def test_infllm_uses_prompt_queries_to_pick_representatives():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 1, 64, 8, generator=g)
    sel = make_selector(
        "infllm",
        CacheConfig(budget=48, page_size=16, sink_tokens=0, window_tokens=16),
        block_size=32,
        representatives=1,
        local_window=4,
    )
    queries = torch.zeros(1, 2, 64, 8)
    queries[..., 0] = 1.0  # every prompt query looks along dimension 0
    sel.prefill(keys, queries=queries)
    reps = sel.summaries.rep_keys[0, 0, :, 0]  # [nb, D], each block's representative
    paged = keys[0, 0, :48]
    for block in range(2):
        lo = block * 32
        hi = min(lo + 32, 48)
        ahead = torch.tensor([min(m + 4, 63) - m for m in range(lo, hi)], dtype=torch.float32)
        best = int((paged[lo:hi, 0] * ahead).argmax()) + lo
        assert torch.equal(reps[block], keys[0, 0, best])


def test_streamingllm_spends_the_budget_on_the_newest_tokens():
    sel = make_selector("streamingllm", CacheConfig(budget=40, sink_tokens=4, window_tokens=8))
    sel.prefill(torch.randn(1, 2, 100, 8))
    ids = sel.select(torch.randn(1, 2, 8)).token_ids[0, 0]
    assert sorted(ids.tolist()) == [0, 1, 2, 3, *range(64, 100)]


def test_random_is_seeded_by_config_and_layer():
    keys = torch.randn(1, 1, 400, 8)
    q = torch.randn(1, 1, 8)

    def pick(seed, layer):
        sel = make_selector("random", CacheConfig(budget=64, seed=seed), layer_idx=layer)
        sel.prefill(keys)
        return sel.select(q).page_ids.tolist()

    assert pick(1, 2) == pick(1, 2)
    assert len({str(pick(s, layer)) for s in (1, 2) for layer in (2, 3)}) > 1


def test_full_selector_is_dense_with_the_context_as_budget():
    sel = make_selector("full", CacheConfig(budget=16))
    sel.prefill(torch.randn(2, 1, 50, 8), start=torch.tensor([0, 10]))
    s = sel.select(torch.randn(2, 1, 8))
    assert s.ledger.dense and s.ledger.budget == 50
    assert s.token_mask(50).sum(-1).tolist() == [[50], [40]]


def test_input_errors_name_the_bad_value():
    config = CacheConfig(
        budget=64, geometry=ModelGeometry(num_layers=4, num_q_heads=6, num_kv_heads=2, head_dim=8)
    )
    sel = make_selector("quest", config)
    with pytest.raises(SelectorStateError, match="select\\(\\) before prefill"):
        sel.select(torch.randn(1, 6, 8))
    with pytest.raises(TensorSpecError, match="3 KV heads"):
        sel.prefill(torch.randn(1, 3, 10, 8))
    with pytest.raises(TensorSpecError, match="float tensor"):
        sel.prefill(torch.zeros(1, 2, 10, 8, dtype=torch.int64))
    with pytest.raises(TensorSpecError, match="start values must lie in \\[0, N=10\\], got \\[11\\]"):
        sel.prefill(torch.randn(1, 2, 10, 8), start=torch.tensor([11]))
    sel.prefill(torch.randn(1, 2, 10, 8))
    with pytest.raises(TensorSpecError, match="a multiple of H_kv=2"):
        sel.select(torch.randn(1, 5, 8))
    with pytest.raises(TensorSpecError, match="appended keys must be \\[B=1"):
        sel.append(torch.randn(2, 2, 1, 8))
    with pytest.raises(ConfigError, match="merge must be one of"):
        make_selector("quest", config, merge="median")
    with pytest.raises(ConfigError, match="flush_tokens=100"):
        make_selector("quest", config, flush_tokens=100)
    with pytest.raises(ConfigError, match="budget=8 is below page_size=16"):
        make_selector("quest", CacheConfig(budget=8, sink_tokens=0, window_tokens=0))
    with pytest.raises(ConfigError, match="block_size=24"):
        make_selector("infllm", config, block_size=24)


def test_decode_appends_flush_whole_pages_and_keep_the_window():
    config = CacheConfig(budget=64, page_size=8, sink_tokens=2, window_tokens=10)
    sel = make_selector("quest", config)
    sel.prefill(torch.randn(1, 1, 30, 8))
    assert sel.positions.paged_end == 20
    windows = []
    for _ in range(17):
        sel.append(torch.randn(1, 1, 1, 8))
        windows.append(int(sel.select(torch.randn(1, 1, 8)).ledger.window))
    assert windows == [11, 12, 13, 14, 15, 16, 17, 10] * 2 + [11]
    assert sel.layout.page_lens.sum().item() == 47 - 2 - 11
