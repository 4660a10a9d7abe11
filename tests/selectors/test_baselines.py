"""The paper's baselines do what their papers describe: each mechanism against an obvious reference
(the conformance matrix checks their contracts)."""

from __future__ import annotations

import pytest
import torch
from default_selectors import make_selector

from icecache.core.config import CacheConfig
from icecache.selectors.bases.selector import SelectorStateError
from icecache.selectors.policies.magicpig import simhash
from icecache.selectors.policies.omnikv import FilterGroup
from icecache.selectors.policies.snapkv import window_votes

G = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=G)


def _chosen(selection, n):
    return selection.token_mask(n)  # [B, H_kv, n]


def test_snapkv_votes_match_a_per_query_loop():
    B, H, Gq, Q, N, D = 2, 2, 3, 4, 20, 8
    q, k = _randn(B, H, Gq, Q, D), _randn(B, H, N, D)
    start = torch.tensor([0, 5])
    pos = torch.arange(N - Q, N)
    votes = window_votes(q, pos, k, start, scale=0.5, kernel_size=1)
    want = torch.zeros(B, H, N)
    for b in range(B):
        for i in range(Q):
            keys = k[b, :, start[b]: pos[i] + 1]  # what query i sees
            p = torch.softmax(torch.einsum("hgd,hnd->hgn", q[b, :, :, i], keys) * 0.5, -1)
            want[b, :, start[b]: pos[i] + 1] += p.sum(1)
    torch.testing.assert_close(votes, want)


def test_snapkv_keeps_what_the_window_attended_and_every_decoded_token():
    N, D = 200, 16
    keys = _randn(1, 1, N, D)
    hot = torch.tensor([40, 90, 130])
    queries = (keys[0, 0, hot].sum(0) * 3)[None, None, None].expand(1, 2, 8, D)  # [1, H_q=2, Q=8, D]
    config = CacheConfig(budget=32, page_size=8, sink_tokens=2, window_tokens=8)
    sel = make_selector("snapkv", config, window=8, kernel_size=1)
    sel.prefill(keys, queries=queries)
    sel.append(_randn(1, 1, 1, D))
    mask = _chosen(sel.select(_randn(1, 2, D)), N + 1)[0, 0]
    assert bool(mask[hot].all())
    # tokens decoded after the vote rank above every voted one once they leave the window
    for _ in range(12):
        sel.append(_randn(1, 1, 1, D))
    n = sel.num_tokens
    mask = _chosen(sel.select(_randn(1, 2, D)), n)[0, 0]
    assert bool(mask[N:n].all())


def test_pqcache_with_a_centroid_per_key_selects_what_the_oracle_selects():
    N, D = 48, 8
    keys, q = _randn(2, 2, N, D), _randn(2, 4, D)
    config = CacheConfig(budget=24, page_size=4, sink_tokens=2, window_tokens=4)
    pq = make_selector("pqcache", config, subspaces=2, centroids=N, iters=2)
    oracle = make_selector("oracle", config)
    for s in (pq, oracle):
        s.prefill(keys)
    assert torch.equal(_chosen(pq.select(q), N), _chosen(oracle.select(q), N))
    assert pq.nbytes()["codes"] < keys.nbytes


def test_magicpig_hashes_collide_for_parallel_vectors_and_pick_the_query_direction():
    planes = _randn(8, 16, 6)
    x = _randn(5, 8)
    assert torch.equal(simhash(x, planes), simhash(3 * x, planes))
    assert bool((simhash(x, planes) != simhash(-x, planes)).all())
    N, D = 120, 8
    keys = _randn(1, 1, N, D)
    q = 5 * keys[0, 0, 70][None, None]  # [1, H_q=1, D]: the direction of key 70
    config = CacheConfig(budget=16, page_size=4, sink_tokens=1, window_tokens=4)
    sel = make_selector("magicpig", config, bits=6, tables=32)
    sel.prefill(keys)
    assert bool(_chosen(sel.select(q), N)[0, 0, 70])


def test_shadowkv_attends_its_outlier_chunks_every_step():
    N, D, S = 128, 8, 8
    keys = torch.nn.functional.normalize(torch.ones(1, 1, N, D) + 0.01 * _randn(1, 1, N, D), dim=-1)
    keys[0, 0, 48:56] = _randn(8, D)  # page 6 (after 0 sinks): keys pointing every way
    config = CacheConfig(budget=32, page_size=S, sink_tokens=0, window_tokens=8)
    sel = make_selector("shadowkv", config, outliers=1)
    sel.prefill(keys)
    for _ in range(3):
        sel.append(keys[:, :, :1])
        mask = _chosen(sel.select(torch.ones(1, 1, D)), sel.num_tokens)[0, 0]
        assert bool(mask[48:56].all())


def test_omnikv_followers_take_the_filter_layers_best_tokens():
    config = CacheConfig(budget=24, page_size=4, sink_tokens=2, window_tokens=4, dense_layers=2)
    group = FilterGroup()
    layers = {i: make_selector("omnikv", config, layer_idx=i, shared=group, filter_every=3)
              for i in range(2, 7)}
    assert {i for i, s in layers.items() if s.is_filter} == {2, 5}
    N, D = 80, 8
    per_layer = {i: _randn(1, 2, N, D) for i in layers}
    for i, s in layers.items():
        s.prefill(per_layer[i])
    q = _randn(1, 4, D)
    picks = {i: s.select(q) for i, s in layers.items()}
    assert picks[2].ledger.dense and not picks[3].ledger.dense
    # the filter layer's attention, summed over its heads: the followers' ranking
    k = per_layer[2]
    logits = torch.einsum("bhgd,bhnd->bhgn", q.view(1, 2, 2, D), k) * D**-0.5
    score = torch.softmax(logits, -1).sum((1, 2))[0]  # [N]
    paged = layers[3].positions.paged_mask()[0]
    best = torch.where(paged, score, float("-inf")).topk(24 - 2 - 4).indices
    for follower in (3, 4):
        mask = _chosen(picks[follower], N)[0]
        assert bool(mask[:, best].all()) and int(picks[follower].ledger.total.max()) <= 24
    for s in layers.values():
        s.append(_randn(1, 2, 1, D))
    with pytest.raises(SelectorStateError, match="filter layer 2"):
        layers[3].select(q)


def test_feedback_weights_are_the_softmax_over_the_selected_keys():
    from icecache.selectors.plumbing.feedback import attention_feedback

    B, H, Gq, T, D = 2, 2, 3, 7, 8
    q, k = _randn(B, H * Gq, D), _randn(B, H, T, D)
    ids = torch.tensor([[0, 3, 5, 9, -1, -1, -1], [1, 2, 4, 6, 8, 10, 12]])[:, None].expand(B, H, T)
    fb = attention_feedback(q, k, ids, 0.3)
    for b in range(B):
        real = ids[b, 0] >= 0
        want = torch.softmax(torch.einsum("hgd,htd->hgt", q[b].view(H, Gq, D), k[b, :, real]) * 0.3, -1)
        torch.testing.assert_close(fb.weights[b][..., real], want)
        assert bool((fb.weights[b][..., ~real] == 0).all())
    by_pos = fb.mass_by_position(13)
    torch.testing.assert_close(by_pos.sum(-1), torch.full((B, H), float(Gq)))
    pages = torch.arange(16).view(1, 1, 4, 4).expand(B, H, 4, 4).clone()
    torch.testing.assert_close(fb.page_mass(pages).sum(-1), torch.full((B, H), float(Gq)))
    torch.testing.assert_close(fb.page_mass(pages)[..., 0], by_pos[..., :4].sum(-1))


def test_h2o_accumulates_the_attention_it_is_fed():
    from icecache.selectors.plumbing.feedback import AttentionFeedback

    N, D = 60, 8
    config = CacheConfig(budget=16, page_size=4, sink_tokens=1, window_tokens=4)
    sel = make_selector("h2o", config, window=0)
    sel.prefill(_randn(1, 1, N, D))
    hot = torch.tensor([[[10, 20, 30]]])
    fb = AttentionFeedback(token_ids=hot, weights=torch.tensor([[[[0.5, 0.3, 0.2]]]]))
    for _ in range(2):
        sel.observe(fb)
    assert sel.wants_feedback
    mask = _chosen(sel.select(_randn(1, 1, D)), N)[0, 0]
    assert bool(mask[hot[0, 0]].all())
    torch.testing.assert_close(sel._mass[0, 0, hot[0, 0]], torch.tensor([1.0, 0.6, 0.4]))
