"""Fidelity metrics against direct computations, and their defining properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.errors import TensorSpecError
from icecache.metrics import (
    attention_logits,
    attention_probs,
    attention_recall,
    masked_attention_output,
    oracle_mask,
    oracle_recall,
    output_rel_error,
)
from icecache.testing.assertions import assert_close

FAST = settings(max_examples=40, deadline=None, database=None)


@st.composite
def problems(draw):
    B, H, G = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    N, D = draw(st.integers(1, 40)), draw(st.sampled_from([4, 8]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**20)))
    q = torch.randn(B, H * G, D, generator=g) * 2
    k = torch.randn(B, H, N, D, generator=g)
    v = torch.randn(B, H, N, D, generator=g)
    start = (
        torch.randint(0, N, (B,), generator=g) if draw(st.booleans()) else torch.zeros(B, dtype=torch.int64)
    )
    mask = torch.rand(B, H, N, generator=g) < draw(st.sampled_from([0.1, 0.5, 0.9]))
    return q, k, v, start, mask


def test_probs_match_a_per_head_softmax_with_gqa_and_padding():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 8, generator=g), torch.randn(2, 3, 10, 8, generator=g)
    start = torch.tensor([0, 4])
    p = attention_probs(q, k, start=start)
    for b in range(2):
        for h in range(6):
            logits = k[b, h // 2, start[b] :] @ q[b, h] / 8**0.5
            assert_close(p[b, h, start[b] :], torch.softmax(logits, -1))
            assert float(p[b, h, : start[b]].abs().sum()) == 0.0
    assert attention_logits(q, k, scale=1.0).shape == (2, 6, 10)


@FAST
@given(problem=problems())
def test_recall_is_mass_on_the_mask_and_grows_with_it(problem):
    q, k, _, start, mask = problem
    p = attention_probs(q, k, start=start)
    r = attention_recall(p, mask)
    B, H, N = mask.shape
    G = q.shape[1] // H
    direct = (p.view(B, H, G, N) * mask[:, :, None]).sum(-1).mean(-1)
    assert_close(r, direct)
    assert_close(attention_recall(p, torch.ones_like(mask)), torch.ones(B, H))
    assert bool((attention_recall(p, mask | (torch.rand(mask.shape) < 0.5)) >= r - 1e-6).all())
    assert attention_recall(p, mask, per_query_head=True).shape == (B, q.shape[1])


@FAST
@given(problem=problems())
def test_output_error_is_zero_for_the_whole_context_and_matches_the_definition(problem):
    q, k, v, start, mask = problem
    B, H, N = mask.shape
    everything = torch.ones_like(mask)
    assert_close(output_rel_error(q, k, v, everything, start=start), torch.zeros(B, H), atol=1e-5)
    mask = mask.clone()
    mask[torch.arange(B), :, start] = True  # at least one real token
    dense = masked_attention_output(q, k, v, start=start)
    sparse = masked_attention_output(q, k, v, mask, start=start)
    per_head = (sparse - dense).norm(dim=-1) / dense.norm(dim=-1)
    assert_close(output_rel_error(q, k, v, mask, start=start, per_query_head=True), per_head)


@FAST
@given(problem=problems(), k=st.integers(0, 12))
def test_oracle_mask_is_the_best_set_of_its_size(problem, k):
    q, keys, _, start, forced = problem
    p = attention_probs(q, keys, start=start)
    B, H, N = forced.shape
    candidates = ~forced & (torch.arange(N)[None, None] >= start[:, None, None])
    best = oracle_mask(p, forced, candidates, k)
    assert bool((best | ~forced).all())
    chosen = best & ~forced
    assert bool((chosen.sum(-1) == torch.minimum(torch.tensor(k), candidates.sum(-1))).all())
    # any swap of a chosen token for an unchosen candidate loses attention mass
    merged = p.view(B, H, -1, N).sum(2)
    worst_in = torch.where(chosen, merged, float("inf")).amin(-1)
    best_out = torch.where(candidates & ~chosen, merged, float("-inf")).amax(-1)
    assert bool((best_out <= worst_in + 1e-7).all())
    assert_close(oracle_recall(best, best), torch.ones(B, H))


def test_oracle_recall_counts_the_oracle_tokens_found():
    oracle = torch.tensor([[[True, True, False, True]]])
    mask = torch.tensor([[[True, False, True, True]]])
    assert_close(oracle_recall(mask, oracle), torch.tensor([[2 / 3]]))
    assert_close(oracle_recall(mask, torch.zeros_like(oracle)), torch.tensor([[1.0]]))


def test_shape_errors_name_the_shapes():
    with pytest.raises(TensorSpecError, match=r"\(1, 4, 8\) does not match keys \(1, 3, 5, 8\)"):
        attention_probs(torch.randn(1, 4, 8), torch.randn(1, 3, 5, 8))
    with pytest.raises(TensorSpecError, match="mask"):
        attention_recall(torch.rand(1, 4, 5), torch.ones(1, 2, 6, dtype=torch.bool))
    with pytest.raises(TensorSpecError, match="differ in shape"):
        oracle_recall(torch.ones(1, 2, 3, dtype=torch.bool), torch.ones(1, 2, 4, dtype=torch.bool))
