"""IceCache(r): followers attend exactly their leader's pages, in the same budget."""

from __future__ import annotations

import pytest
import torch
from default_selectors import make_selector

from icecache.core.config import CacheConfig
from icecache.selectors.bases.selector import SelectorStateError
from icecache.selectors.policies.icecache_reuse import ReuseGroup


def test_followers_reuse_the_leader_selection_of_the_same_step():
    config = CacheConfig(budget=64, page_size=8)
    group = ReuseGroup()
    layers = {i: make_selector("icecache-reuse", config, layer_idx=i, shared=group) for i in range(2, 8)}
    assert {i for i, s in layers.items() if s.is_leader} == {2, 3, 5, 7}
    assert layers[4].leader_layer == 3 and layers[6].leader_layer == 5
    g = torch.Generator().manual_seed(0)
    for s in layers.values():
        s.prefill(torch.randn(1, 2, 150, 16, generator=g))
    for _ in range(3):
        for s in layers.values():
            s.append(torch.randn(1, 2, 1, 16, generator=g))
        picks = {i: s.select(torch.randn(1, 4, 16, generator=g)) for i, s in layers.items()}
        for follower, leader in ((4, 3), (6, 5)):
            assert torch.equal(picks[follower].token_ids, picks[leader].token_ids)
            assert torch.equal(picks[follower].page_ids, picks[leader].page_ids)
            assert torch.equal(layers[follower].layout.token_ids, layers[leader].layout.token_ids)
        assert all(int(p.ledger.total.max()) <= 64 for p in picks.values())
    # a new step: the follower may not run before its leader selected again
    for s in layers.values():
        s.append(torch.randn(1, 2, 1, 16, generator=g))
    with pytest.raises(SelectorStateError, match="layer 4 reuses layer 3's pages, which has not selected"):
        layers[4].select(torch.randn(1, 4, 16))


def test_without_a_group_every_layer_searches():
    sel = make_selector("icecache-reuse", CacheConfig(budget=64), layer_idx=6)
    assert sel.is_leader and sel.page_index is not None
