"""Prioritized DCI: exact search with a full visit budget, sensible recall as a page index."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig
from icecache.index.dci.index import PrioritizedDCIIndex
from icecache.index.dci.search import dci_search
from icecache.metrics.fidelity import attention_recall, oracle_mask
from icecache.testing.synthetic import make_clustered_kv, query_for_cluster


def recall(keys, query, tokens):
    B, H, G, D = query.shape
    p = torch.einsum("bhgd,bhnd->bhgn", query, keys).mul(D ** -0.5).softmax(-1).reshape(B, H * G, -1)
    mask = torch.zeros(B, H, keys.shape[2] + 1, dtype=torch.bool)
    mask.scatter_(2, torch.where(tokens >= 0, tokens, keys.shape[2]), True)
    return float(attention_recall(p, mask[..., :-1]).mean())


def oracle(keys, query, budget):
    B, H, G, D = query.shape
    N = keys.shape[2]
    p = torch.einsum("bhgd,bhnd->bhgn", query, keys).mul(D ** -0.5).softmax(-1).reshape(B, H * G, N)
    none, every = torch.zeros(B, H, N, dtype=torch.bool), torch.ones(B, H, N, dtype=torch.bool)
    return float(attention_recall(p, oracle_mask(p, none, every, budget)).mean())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 6), m=st.integers(1, 3), L=st.integers(1, 3),
       k=st.integers(1, 10), seed=st.integers(0, 999))
def test_dci_search_with_unlimited_visits_is_exact(n, d, m, L, k, seed):
    rng = np.random.default_rng(seed)
    pts, q = rng.standard_normal((n, d)), rng.standard_normal(d)
    dirs = rng.standard_normal((d, m * L))
    idx, dist = dci_search(pts, pts @ dirs, q, q @ dirs, k=k, num_simple=m, max_visits=10**6,
                           max_candidates=10**6)
    true = ((pts - q) ** 2).sum(1)
    want = np.sort(true)[:min(k, n)]
    np.testing.assert_allclose(np.sort(dist), want)
    np.testing.assert_allclose(true[idx], dist)


def test_dci_index_recall_is_reasonable():
    kv = make_clustered_kv(1, 2, 512, 16, num_clusters=12, spread=0.3, norm_range=(2.0, 6.0), seed=2)
    index = PrioritizedDCIIndex(CacheConfig())
    index.build(kv.keys[:, :, :448], torch.arange(448))
    index.insert(kv.keys[:, :, 448:], torch.arange(448, 512))
    got, best = [], []
    for c in range(4):
        q = query_for_cluster(kv, c, group_size=2, seed=c).view(1, 2, 2, 16)
        hits = index.query(q, 64)
        assert bool((hits.num_tokens <= 64).all())
        got.append(recall(kv.keys, q, hits.token_ids))
        best.append(oracle(kv.keys, q, 64))
    assert sum(got) / 4 >= sum(best) / 4 - 0.08
