"""The public strategies generate what they promise."""

import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig
from icecache.testing import make_clustered_kv, query_for_cluster, random_page_table
from icecache.testing.strategies import (
    apply_tier_ops,
    cache_configs,
    cluster_queries,
    clustered_kv,
    gqa_shapes,
    left_paddings,
    model_geometries,
    page_tables,
    tier_operations,
)


def test_importing_icecache_testing_does_not_need_hypothesis():
    import subprocess

    code = ("import sys; sys.modules['hypothesis'] = None; import icecache.testing as t; "
            "t.assert_close(t.make_clustered_kv(1, 1, 4, 8).keys, t.make_clustered_kv(1, 1, 4, 8).keys)")
    subprocess.run([sys.executable, "-c", code], check=True)


@given(cache_configs(geometry=model_geometries()))
def test_cache_configs_are_valid_and_reconstructible(config):
    assert config.sink_tokens + config.window_tokens <= config.budget
    assert config.dense_layers <= config.geometry.num_layers
    assert config.geometry.num_q_heads % config.geometry.num_kv_heads == 0
    # NOTE: the constructor re-validates; a strategy that bypassed it would fail here
    assert CacheConfig(page_size=config.page_size, budget=config.budget, sink_tokens=config.sink_tokens,
                       window_tokens=config.window_tokens) is not None


@given(cache_configs(page_size=16, budget=st.integers(64, 64), sink_tokens=4))
def test_cache_configs_take_plain_values_or_strategies(config):
    assert (config.page_size, config.budget, config.sink_tokens) == (16, 64, 4)


@given(page_tables(partial=st.sampled_from(["any", "last", "none"])), st.data())
def test_page_tables_keep_csr_invariants(table, data):
    num_pages = int(table.indices.max()) + 1 if table.nnz else 1
    table.validate(num_pages)
    assert len(set(table.indices.tolist())) == table.nnz  # each pool page listed once
    counts = table.indptr[1:] - table.indptr[:-1]
    assert torch.equal(table.last_page_len[counts == 0], torch.zeros_like(table.last_page_len[counts == 0]))


@given(page_tables(partial="last"))
def test_flashinfer_tables_have_only_last_pages_partial(table):
    assert table.page_lens is None
    last_entries = set((table.indptr[1:][table.indptr[1:] > table.indptr[:-1]] - 1).tolist())
    lens = table.lens()
    for i in range(table.nnz):
        if i not in last_entries:
            assert int(lens[i]) == table.page_size


@given(page_tables(rows=4, allow_empty_rows=False))
def test_page_tables_without_empty_rows(table):
    assert bool((table.indptr[1:] > table.indptr[:-1]).all())


@given(gqa_shapes())
def test_gqa_shapes(shape):
    assert shape.num_q_heads == shape.num_kv_heads * shape.group_size
    assert shape.query_shape() == (shape.batch, shape.num_q_heads, shape.head_dim)


@settings(max_examples=30)
@given(clustered_kv(outlier_fraction=0.0))
def test_clustered_keys_sit_nearest_their_own_centroid_when_tight(kv):
    B, H, N, D = kv.keys.shape
    assert kv.assignments.shape == (B, H, N) and kv.centroids.shape[:2] == (B, H)
    assert int(kv.assignments.min()) >= 0 and int(kv.assignments.max()) < kv.num_clusters
    own = torch.gather(kv.centroids, 2, kv.assignments[..., None].expand(B, H, N, D))
    assert torch.isfinite(kv.keys).all()
    # relative distance to the own centroid is bounded by the spread (noise has norm ~ spread * |c|)
    rel = (kv.keys - own).norm(dim=-1) / own.norm(dim=-1)
    assert float(rel.max()) < 4.0 * 1.0 + 1e-6


def test_spread_zero_puts_every_key_on_its_centroid():
    kv = make_clustered_kv(2, 3, 50, 16, num_clusters=5, spread=0.0, seed=3)
    own = torch.gather(kv.centroids, 2, kv.assignments[..., None].expand(2, 3, 50, 16))
    torch.testing.assert_close(kv.keys, own)


def test_outliers_are_marked_and_large():
    kv = make_clustered_kv(1, 2, 400, 8, num_clusters=3, outlier_fraction=0.1, outlier_scale=10.0,
                           norm_range=(1.0, 1.0), spread=0.0, seed=1)
    out = kv.assignments < 0
    assert 10 < int(out.sum()) < 150
    assert float(kv.keys[out].norm(dim=-1).min()) > 9.0
    assert float(kv.keys[~out].norm(dim=-1).max()) < 1.01


def test_contiguous_clusters_are_runs_of_positions():
    kv = make_clustered_kv(1, 1, 40, 8, num_clusters=4, contiguous=True, seed=0)
    a = kv.assignments[0, 0]
    assert bool((a[1:] >= a[:-1]).all()) and a.unique().numel() == 4


@settings(max_examples=30)
@given(clustered_kv(spread=0.05, outlier_fraction=0.0, num_clusters=st.integers(2, 6), norm_range=(1.0, 1.0))
       .flatmap(lambda kv: st.tuples(st.just(kv), cluster_queries(kv, noise=0.0))))
def test_cluster_queries_favour_their_cluster(pair):
    kv, cq = pair
    B, H, C, D = kv.centroids.shape
    G = cq.query.shape[1] // H
    q = cq.query.reshape(B, H, G, D)
    scores = torch.einsum("bhgd,bhcd->bhgc", q, kv.centroids)  # [B, H, G, C]
    best = scores.argmax(-1)
    target = cq.cluster[..., None].expand(B, H, G)
    # NOTE: two random centroids can be almost parallel; then the argmax may tie
    tied = (scores.gather(-1, target[..., None]).squeeze(-1) - scores.amax(-1)).abs() < 1e-4
    assert bool(((best == target) | tied).all())


def test_query_for_cluster_rejects_bad_cluster_ids():
    import pytest

    from icecache.core.errors import ConfigError

    kv = make_clustered_kv(1, 2, 8, 4, num_clusters=3)
    with pytest.raises(ConfigError, match=r"cluster ids must lie in \[0, 3\)"):
        query_for_cluster(kv, 5)
    with pytest.raises(ConfigError, match=r"cluster must be an int"):
        query_for_cluster(kv, torch.zeros(3, 3, dtype=torch.int64))


@given(st.integers(1, 4), st.integers(1, 50), st.data())
def test_left_paddings_leave_a_real_token(batch, n, data):
    start = data.draw(left_paddings(batch, n))
    assert start.shape == (batch,) and int(start.min()) >= 0 and int(start.max()) <= n - 1


def test_generators_are_reproducible_from_their_seed():
    a = make_clustered_kv(2, 2, 30, 8, outlier_fraction=0.1, seed=7)
    b = make_clustered_kv(2, 2, 30, 8, outlier_fraction=0.1, seed=7)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.assignments, b.assignments)
    t1, t2 = random_page_table(5, 4, 40, seed=9), random_page_table(5, 4, 40, seed=9)
    assert torch.equal(t1.indices, t2.indices) and torch.equal(t1.page_lens, t2.page_lens)


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.none(), st.integers(1, 6)).flatmap(
    lambda cap: st.tuples(st.just(cap), tier_operations(capacity=cap))))
def test_tier_operations_are_protocol_valid_and_round_trip(case):
    from icecache.storage.host import HostTier
    from icecache.storage.layout import PageSpec
    from icecache.testing.strategies import bits

    capacity, ops = case
    tier = HostTier(name="host", spec=PageSpec(page_size=2, head_dim=4), capacity=capacity)
    held = apply_tier_ops(tier, ops)  # raises if a generated op breaks the protocol or the capacity
    assert set(held) <= set(tier.resident_ids().tolist())
    if held:
        ids = torch.tensor(sorted(held))
        got = tier.read(tier.prepare_load(ids))
        for k, i in enumerate(ids.tolist()):
            assert torch.equal(bits(got[k]), bits(held[i]))
    tier.close()
