"""StreamingLLM picks its window in O(budget): the same tokens as ranking every position by recency."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig
from icecache.selectors.bases.token_score import TokenScoreSelector
from icecache.selectors.plumbing.fill import compact
from icecache.selectors.policies.streamingllm import StreamingLLMSelector


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), budget=st.sampled_from([16, 64, 128]), starts=st.lists(st.integers(0, 80),
       min_size=1, max_size=3), steps=st.integers(0, 12))
def test_recent_window_equals_the_ranking(n, budget, starts, steps):
    B, H, D = len(starts), 2, 8
    config = CacheConfig(budget=budget, page_size=8, sink_tokens=4, window_tokens=4)
    selector = StreamingLLMSelector(config=config)
    gen = torch.Generator().manual_seed(n)
    start = torch.tensor([min(s, n) for s in starts])
    selector.prefill(torch.randn(B, H, n, D, generator=gen), start=start)
    for _ in range(steps + 1):
        pos = selector.positions
        max_tokens = (budget - pos.sink_count() - pos.window_count())[:, None].expand(B, H).contiguous()
        query = torch.randn(B, H, 2, D, generator=gen)
        fast = selector._choose(query, max_tokens)
        ranked = TokenScoreSelector._choose(selector, query, max_tokens)
        assert torch.equal(fast[2], ranked[2])
        assert torch.equal(compact(fast[0]), compact(ranked[0]))
        assert bool((fast[2] <= max_tokens).all())
        selector.append(torch.randn(B, H, 1, D, generator=gen))
