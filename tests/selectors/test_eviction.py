"""Evicting for good (:mod:`icecache.selectors.plumbing.eviction`): the invariants of the built-in
evicting policies over many decode steps, and the errors for evictions that break a promise."""

from __future__ import annotations

import pytest
import torch
from default_selectors import make_selector
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, EvictionError, TensorSpecError
from icecache.core.policy import compose_policy
from icecache.selectors.plumbing.eviction import evicts
from icecache.selectors.plumbing.feedback import attention_feedback, wants_feedback
from icecache.selectors.policies.quest import QuestSelector
from icecache.testing.conformance import selector_cases

G = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=G)


@pytest.mark.parametrize("name", ["h2o-evict", "snapkv-press"])
@settings(max_examples=30, deadline=None, database=None)
@given(case=selector_cases(max_steps=12), data=st.data())
def test_kept_within_budget_no_row_empty_evicted_set_only_grows(name, case, data):
    keys, start, queries = case.tensors()
    try:
        sel = make_selector(name, case.config)
    except ConfigError:
        assume(False)
    assert evicts(sel)
    N = case.prompt_len
    sel.prefill(keys[:, :, :N], start=start, queries=case.prompt_queries(sel.prompt_query_window))
    sel.evictions()  # a runner drains after prefill
    before = sel.evicted.clone()
    context = N
    for n, q in zip(case.steps, queries, strict=True):
        sel.append(keys[:, :, context: context + n])
        context += n
        selection = sel.select(q)
        gone = sel.evicted
        assert bool(gone[..., : before.shape[2]].ge(before).all()), "the evicted set only grows"
        assert not bool(selection.token_mask(context)[gone].any()), "an evicted token was selected"
        pos = sel.positions
        assert not bool((gone & ~pos.paged_mask()[:, None]).any()), "a sink, window or padding evicted"
        kept = selection.ledger.kept
        real = (context - start).clamp(min=0)[:, None]
        assert bool((kept <= case.config.budget).all())  # the budget bounds what is kept
        assert bool((kept == torch.minimum(real, torch.full_like(real, case.config.budget))).all())
        assert bool((selection.ledger.total == kept).all()), "the selection is everything kept"
        assert bool((kept >= 1).all() | (real == 0).all())
        ids = selection.token_ids
        idx = ids.clamp(min=0)[..., None].expand(*ids.shape, keys.shape[-1])
        picked = keys[:, :, :context].gather(2, idx)
        if wants_feedback(sel):
            sel.observe(attention_feedback(q, picked, ids, sel.attention_scale(keys.shape[-1])))
        drained = sel.evictions()
        if drained is not None:  # what a runner hands storage: exactly the new evictions
            fresh = gone & ~torch.nn.functional.pad(before, (0, gone.shape[2] - before.shape[2]))
            B, H = fresh.shape[:2]
            back = torch.zeros(B, H, context + 1, dtype=torch.bool)
            back.scatter_(2, torch.where(drained >= 0, drained, context), True)
            assert torch.equal(back[..., :context], fresh)
        before = sel.evicted.clone()


def test_h2o_evict_drops_the_lowest_accumulated_attention():
    N, D = 40, 8
    config = CacheConfig(budget=12, page_size=4, sink_tokens=1, window_tokens=4)
    sel = make_selector("h2o-evict", config, window=0)
    sel.prefill(_randn(1, 1, N, D))
    # no prompt queries: every score ties, so the oldest paged tokens go first
    kept = (~sel.evicted[0, 0] & sel.positions.paged_mask()[0]).nonzero()[:, 0]
    assert kept.tolist() == list(range(N - 4 - 7, N - 4))
    hot = kept[:2][None, None]
    fb = attention_feedback(_randn(1, 1, D), sel.keys_at(hot), hot, 1.0)
    sel.observe(fb)
    for _ in range(3):
        sel.append(_randn(1, 1, 1, D))
    kept = (~sel.evicted[0, 0] & sel.positions.paged_mask()[0]).nonzero()[:, 0]
    assert set(hot[0, 0].tolist()) <= set(kept.tolist())  # heavy hitters survive the older ones


def test_evicting_a_sink_window_or_padding_token_is_refused():
    config = CacheConfig(budget=64, page_size=4, sink_tokens=2, window_tokens=4)
    sel = make_selector("h2o-evict", config)
    sel.prefill(_randn(2, 1, 30, 8), start=torch.tensor([0, 5]))
    with pytest.raises(EvictionError, match=r"position 1 of row \[b=0, h=0\]: it is a sink token"):
        sel.evict(torch.tensor([[[1]], [[-1]]]))
    with pytest.raises(EvictionError, match=r"position 28 of row \[b=0, h=0\]: it is a window token"):
        sel.evict(torch.tensor([[[28]], [[-1]]]))
    with pytest.raises(EvictionError, match=r"position 3 of row \[b=1, h=0\]: it is a padding token"):
        sel.evict(torch.tensor([[[-1]], [[3]]]))
    with pytest.raises(TensorSpecError, match="cannot evict position 30"):
        sel.evict(torch.tensor([[[30]], [[-1]]]))
    with pytest.raises(TensorSpecError, match=r"integer tensor \[B=2, H_kv=1, E\]"):
        sel.evict(torch.tensor([3, 4]))
    assert not bool(sel.evicted.any())  # nothing changed


def test_an_eviction_that_would_empty_a_row_is_refused():
    config = CacheConfig(budget=64, page_size=1, sink_tokens=0, window_tokens=0)
    sel = make_selector("h2o-evict", config)
    sel.prefill(_randn(1, 2, 3, 8))
    sel.evict(torch.tensor([[[0, 1], [0, -1]]]))
    with pytest.raises(EvictionError, match=r"would leave row \[b=0, h=0\] with nothing to attend"):
        sel.evict(torch.tensor([[[2], [-1]]]))
    assert int(sel.evicted.sum()) == 3


def test_a_page_selector_evicts_whole_pages_only():
    config = CacheConfig(budget=32, page_size=4, sink_tokens=1, window_tokens=4)
    sel = QuestSelector(config=config)
    sel.prefill(_randn(1, 1, 40, 8))
    page = sel.layout.token_ids[0, 0, 2]
    with pytest.raises(EvictionError, match=r"selects whole pages: evicting part of page 2"):
        sel.evict(page[None, None, :2])
    sel.evict(page[None, None])
    for _ in range(5):
        sel.append(_randn(1, 1, 1, 8))
        selection = sel.select(_randn(1, 1, 8))
        assert 2 not in selection.page_ids.tolist()[0][0]
        assert not bool(selection.token_mask(sel.num_tokens)[0, 0, page].any())


def test_bad_press_options_fail_when_the_policy_is_composed():
    config = CacheConfig(budget=64)  # its window is 12 tokens
    with pytest.raises(ConfigError, match=r"window=32 must be at most the recent window window_tokens=12"):
        compose_policy(selector="snapkv-press", config=config)
    with pytest.raises(ConfigError, match="refresh_every=2"):
        compose_policy(selector="snapkv-press", options={"selector": {"refresh_every": 2}})
    with pytest.raises(ConfigError, match="slots_per_page must be a power of two, got 3"):
        compose_policy(selector="h2o-evict", options={"selector": {"slots_per_page": 3}})
    compose_policy(selector="snapkv-press", config=config, options={"selector": {"window": 8}})


def test_a_selector_that_does_not_evict_has_nothing_to_drain():
    sel = make_selector("h2o", CacheConfig(budget=32, page_size=4, sink_tokens=1, window_tokens=4))
    assert not evicts(sel)
    sel.prefill(_randn(1, 1, 40, 8))
    assert sel.evictions() is None and sel._evicted is None
