"""The torch references against dense SDPA and against their definitions (always run, CPU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.errors import TensorSpecError
from icecache.core.page_table import PageTable
from icecache.kernels import get_backend, merge_attention_states
from icecache.kernels.paged_attention.synthetic import dense_masked_attention, split_table
from icecache.testing.assertions import assert_close
from icecache.testing.strategies.kernels import paged_attention_cases, scoring_cases

REF = get_backend("reference")


@settings(max_examples=60, deadline=None)
@given(case=paged_attention_cases())
def test_paged_attention_matches_dense_sdpa(case):
    out, lse = REF.paged_decode_attention(case.query, case.k_pool, case.v_pool, case.table)
    exp_out, exp_lse = dense_masked_attention(case.query, case.keys, case.values, case.token_mask)
    assert out.dtype == case.query.dtype and lse.dtype == torch.float32
    assert_close(out, exp_out.float(), msg="out")
    empty = torch.isinf(exp_lse)
    assert bool((torch.isinf(lse) == empty).all())
    assert_close(lse[~empty], exp_lse[~empty], msg="lse")
    assert bool((out[empty] == 0).all())


@settings(max_examples=30, deadline=None)
@given(case=paged_attention_cases(), softcap=st.sampled_from([0.5, 2.0, 50.0]))
def test_softcap_matches_dense_capped_attention(case, softcap):
    out, lse = REF.paged_decode_attention(case.query, case.k_pool, case.v_pool, case.table, softcap=softcap)
    exp_out, exp_lse = dense_masked_attention(case.query, case.keys, case.values, case.token_mask,
                                              softcap=softcap)
    assert_close(out, exp_out.float(), msg="out")
    empty = torch.isinf(exp_lse)
    assert bool((torch.isinf(lse) == empty).all())
    assert_close(lse[~empty], exp_lse[~empty], msg="lse")


@pytest.mark.parametrize("softcap", [0, -1.0, float("inf"), True, "1"])
def test_bad_softcap_is_refused(softcap):
    q = torch.randn(1, 2, 8)
    pool = torch.randn(2, 4, 8)
    table = PageTable.from_page_lists(torch.tensor([[0], [1]]), torch.tensor([[4], [4]]), page_size=4)
    with pytest.raises(TensorSpecError, match="softcap"):
        REF.paged_decode_attention(q, pool, pool, table, softcap=softcap)


@settings(max_examples=30, deadline=None)
@given(case=paged_attention_cases(), scale=st.sampled_from([0.05, 0.3, 1.0]))
def test_explicit_scale(case, scale):
    out, lse = REF.paged_decode_attention(case.query, case.k_pool, case.v_pool, case.table, scale=scale)
    exp_out, exp_lse = dense_masked_attention(case.query, case.keys, case.values, case.token_mask,
                                              scale=scale)
    assert_close(out, exp_out.float())
    assert_close(torch.nan_to_num(lse, neginf=-1e30), torch.nan_to_num(exp_lse, neginf=-1e30))


@settings(max_examples=40, deadline=None)
@given(case=paged_attention_cases(), seed=st.integers(0, 1000))
def test_merge_of_two_page_subsets_equals_whole(case, seed):
    keep = torch.rand(case.table.nnz, generator=torch.Generator().manual_seed(seed)) < 0.5
    t1, t2 = split_table(case.table, keep), split_table(case.table, ~keep)
    o1, l1 = REF.paged_decode_attention(case.query, case.k_pool, case.v_pool, t1)
    o2, l2 = REF.paged_decode_attention(case.query, case.k_pool, case.v_pool, t2)
    o, lse = merge_attention_states(o1, l1, o2, l2)
    whole_o, whole_lse = REF.paged_decode_attention(case.query, case.k_pool, case.v_pool, case.table)
    assert_close(o, whole_o)
    assert_close(torch.nan_to_num(lse, neginf=-1e30), torch.nan_to_num(whole_lse, neginf=-1e30))


def test_merge_with_empty_sides():
    o = torch.randn(3, 8)
    lse = torch.tensor([0.5, -1.0, float("-inf")])
    empty_o, empty_lse = torch.zeros(3, 8), torch.full((3,), float("-inf"))
    m_o, m_lse = merge_attention_states(o, lse, empty_o, empty_lse)
    assert_close(m_o[:2], o[:2])
    assert bool((m_o[2] == 0).all()) and torch.isinf(m_lse[2])
    assert_close(m_lse[:2], lse[:2])
    with pytest.raises(TensorSpecError, match="cannot merge"):
        merge_attention_states(o, lse, o[:2], lse[:2])


def test_fp16_reference_close_to_fp64_truth():
    g = torch.Generator().manual_seed(3)
    from icecache.kernels.paged_attention.synthetic import pages_from_dense

    k, v = torch.randn(1, 2, 100, 64, generator=g), torch.randn(1, 2, 100, 64, generator=g)
    q = torch.randn(1, 8, 64, generator=g)
    mask = torch.rand(1, 2, 100, generator=g) < 0.7
    kp, vp, table = pages_from_dense(k.half(), v.half(), mask, 16, generator=g)
    out, _ = REF.paged_decode_attention(q.half(), kp, vp, table)
    exp, _ = dense_masked_attention(q.half(), k.half(), v.half(), mask)
    assert out.dtype == torch.float16
    assert_close(out, exp.half())


def test_bad_inputs_name_the_value():
    q = torch.randn(1, 4, 8)
    pool = torch.randn(4, 2, 8)
    table = PageTable(indptr=torch.tensor([0, 1, 2]), indices=torch.tensor([0, 1]),
                      last_page_len=torch.tensor([2, 2]), page_size=2)
    with pytest.raises(TensorSpecError, match=r"\[B, H_q, D\]"):
        REF.paged_decode_attention(q[0], pool, pool, table)
    with pytest.raises(TensorSpecError, match="D=8"):
        REF.paged_decode_attention(q, pool[..., :4], pool[..., :4], table)
    with pytest.raises(TensorSpecError, match="H_q=3 query heads is not a multiple of H_kv=2"):
        REF.paged_decode_attention(torch.randn(1, 3, 8), pool, pool, table)
    with pytest.raises(TensorSpecError, match="page size 2 != table.page_size 4"):
        REF.paged_decode_attention(q, pool, pool, PageTable(indptr=table.indptr, indices=table.indices,
                                                            last_page_len=table.last_page_len, page_size=4))
    with pytest.raises(TensorSpecError, match="dtype"):
        REF.paged_decode_attention(q, pool.half(), pool.half(), table)
    with pytest.raises(TensorSpecError, match="scale"):
        REF.paged_decode_attention(q, pool, pool, table, scale=-1.0)


@settings(max_examples=30, deadline=None)
@given(n_slots=st.integers(1, 20), page=st.sampled_from([(2, 3), (4,), (1, 2, 5)]), seed=st.integers(0, 99))
def test_gather_scatter_round_trip(n_slots, page, seed):
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(n_slots, *page, generator=g)
    n = int(torch.randint(1, n_slots + 1, (1,), generator=g))
    ids = torch.randperm(n_slots, generator=g)[:n]
    staging = torch.full((n, *page), float("nan"))
    got = REF.gather_pages(pool, ids, out=staging)
    assert got is staging
    assert_close(staging, torch.stack([pool[i] for i in ids.tolist()]))
    target = torch.full_like(pool, float("nan"))
    REF.scatter_pages(target, ids, staging)
    assert_close(target[ids], pool[ids])
    untouched = torch.ones(n_slots, dtype=torch.bool)
    untouched[ids] = False
    assert bool(torch.isnan(target[untouched]).all())


def test_gather_scatter_bad_ids():
    pool = torch.randn(4, 2)
    with pytest.raises(TensorSpecError, match=r"out of range \[0, 4\): min 0, max 4"):
        REF.gather_pages(pool, torch.tensor([0, 4]))
    with pytest.raises(TensorSpecError, match="1-D integer"):
        REF.gather_pages(pool, torch.tensor([0.0]))
    with pytest.raises(TensorSpecError, match=r"shape \(2, 2\)"):
        REF.scatter_pages(pool, torch.tensor([0, 1]), torch.randn(3, 2))


@settings(max_examples=40, deadline=None)
@given(case=scoring_cases())
def test_centroid_scores_are_inner_products(case):
    q, c = case.query, case.centroids
    L, B, H, P, D = c.shape
    G = q.shape[2] // H
    per_head = REF.score_pages(q, c, group_reduce="none")  # [L, B, H_q, P]
    expected = torch.einsum("lbhgd,lbhpd->lbhgp", q.reshape(L, B, H, G, D).double(), c.double())
    assert_close(per_head, expected.reshape(L, B, H * G, P).float())
    assert_close(REF.score_pages(q, c, group_reduce="max"), expected.amax(3).float())
    assert_close(REF.score_pages(q, c, group_reduce="sum"), expected.sum(3).float(), atol=1e-4)
    masked = REF.score_pages(q, c, page_mask=case.page_mask)
    assert bool(torch.isinf(masked[~case.page_mask]).all())
    assert_close(masked[case.page_mask], expected.amax(3).float()[case.page_mask])


@settings(max_examples=40, deadline=None)
@given(case=scoring_cases(), seed=st.integers(0, 99))
def test_quest_bound_bounds_every_key_in_the_box(case, seed):
    q = case.query
    bound = REF.score_pages(q, (case.mins, case.maxs), kind="bounds", group_reduce="none")  # [L, B, H_q, P]
    L, B, H, P, D = case.mins.shape
    G = q.shape[2] // H
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(4, L, B, H, P, D, generator=g)
    keys = case.mins + u * (case.maxs - case.mins)  # [4, L, B, H, P, D] keys inside each page's box
    dots = torch.einsum("lbhgd,klbhpd->klbhgp", q.reshape(L, B, H, G, D), keys).reshape(4, L, B, H * G, P)
    assert bool((dots <= bound + 1e-4).all())
    # the bound is attained at a corner of the box
    corner = torch.where(q.reshape(L, B, H, G, 1, D) >= 0, case.maxs.unsqueeze(3), case.mins.unsqueeze(3))
    exact = (q.reshape(L, B, H, G, 1, D) * corner).sum(-1).reshape(L, B, H * G, P)
    assert_close(bound, exact, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(case=scoring_cases(), k=st.integers(1, 5))
def test_topk_pages(case, k):
    P = case.centroids.shape[-2]
    k = min(k, P)
    scores = REF.score_pages(case.query, case.centroids, page_mask=case.page_mask)
    values, ids = REF.topk_pages(case.query, case.centroids, k, page_mask=case.page_mask)
    assert values.shape == ids.shape == (*scores.shape[:-1], k)
    assert bool((values[..., :-1] >= values[..., 1:]).all())
    masked_pick = ids == -1
    assert bool(torch.isinf(values[masked_pick]).all())
    picked = torch.gather(scores, -1, ids.clamp_min(0))
    assert_close(picked[~masked_pick], values[~masked_pick])
    assert bool(case.page_mask.gather(-1, ids.clamp_min(0))[~masked_pick].all())
    kth = values[..., -1:]
    assert bool((scores <= kth + 1e-6).sum(-1).ge(P - k).all())


def test_scoring_bad_inputs():
    q, c = torch.randn(2, 6, 8), torch.randn(2, 4, 5, 8)
    with pytest.raises(TensorSpecError, match="H_q=6 is not a multiple of H_kv=4"):
        REF.score_pages(q, c)
    with pytest.raises(TensorSpecError, match="summary=\\(min, max\\)"):
        REF.score_pages(q, c[:, :3], kind="bounds")
    with pytest.raises(TensorSpecError, match="kind must be"):
        REF.score_pages(q, c[:, :3], kind="sphere")
    with pytest.raises(TensorSpecError, match=r"k must be an int in \[1, 5\]"):
        REF.topk_pages(q, c[:, :3], 6)
