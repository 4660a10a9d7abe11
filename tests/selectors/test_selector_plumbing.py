"""The vectorized plumbing against obviously correct Python references."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.keys import KeyCopy
from icecache.selectors.plumbing.fill import compact, greedy_fill, topk_tokens
from icecache.selectors.plumbing.layout import (
    append_pages,
    contiguous_layout,
    layout_from_groups,
    summarize_pages,
    token_to_page,
)
from icecache.selectors.plumbing.merge import merge_heads
from icecache.selectors.plumbing.positions import Positions
from icecache.testing.assertions import assert_close
from icecache.testing.strategies.selectors import FillProblem, fill_problems, token_groups

FAST = settings(max_examples=60, deadline=None, database=None)


def _takeable(x: float) -> bool:
    """+inf: take first; -inf and NaN: never take."""
    return not math.isnan(x) and x > -math.inf


def greedy_reference(scores: list[float], lens: list[int], budget: int) -> list[int]:
    candidates = [i for i in range(len(scores)) if _takeable(scores[i])]
    order = sorted(candidates, key=lambda i: (-scores[i], i))  # stable, best (+inf) first
    taken, left = [], budget
    for i in order:
        if 0 < lens[i] <= left:
            taken.append(i)
            left -= lens[i]
    return taken


@FAST
@given(problem=fill_problems())
def test_greedy_fill_matches_the_sequential_greedy(problem: FillProblem):
    ids, count = greedy_fill(problem.scores, problem.lens, problem.max_tokens)
    for r in range(problem.scores.shape[0]):
        want = greedy_reference(
            problem.scores[r].tolist(), problem.lens[r].tolist(), int(problem.max_tokens[r])
        )
        got = [i for i in ids[r].tolist() if i >= 0]
        assert got == want
        assert int(count[r]) == sum(problem.lens[r, want].tolist()) <= int(problem.max_tokens[r])
        assert all(i < 0 for i in ids[r, len(got) :].tolist())


def test_greedy_fill_skips_a_page_that_would_overflow_and_takes_a_smaller_one():
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    lens = torch.tensor([[10, 16, 6]])
    ids, count = greedy_fill(scores, lens, torch.tensor([20]))
    assert ids.tolist() == [[0, 2]] and count.tolist() == [16]


@FAST
@given(problem=fill_problems(pages=st.integers(0, 40)))
def test_topk_tokens_takes_the_best_finite_scores_up_to_each_budget(problem: FillProblem):
    ids, count = topk_tokens(problem.scores, problem.max_tokens)
    for r in range(problem.scores.shape[0]):
        finite = [i for i in range(problem.scores.shape[1]) if _takeable(float(problem.scores[r, i]))]
        got = [i for i in ids[r].tolist() if i >= 0]
        assert len(got) == int(count[r]) == min(len(finite), int(problem.max_tokens[r]))
        if got:
            worst_taken = min(float(problem.scores[r, i]) for i in got)
            assert all(float(problem.scores[r, i]) <= worst_taken for i in finite if i not in got)


def test_a_plus_inf_score_means_take_first_and_nan_never():
    scores = torch.tensor([[1.0, float("inf"), 5.0, float("nan"), float("-inf")]])
    lens = torch.full((1, 5), 4)
    ids, count = greedy_fill(scores, lens, torch.tensor([8]))
    assert ids.tolist() == [[1, 2]] and count.tolist() == [8]  # +inf before the best finite score
    ids, count = greedy_fill(scores, lens, torch.tensor([100]))
    assert ids.tolist() == [[1, 2, 0]]  # NaN and -inf never, however large the budget
    ids, count = topk_tokens(scores, torch.tensor([5]))
    assert ids.tolist() == [[1, 2, 0, -1, -1]] and count.tolist() == [3]


def test_compact_moves_padding_to_the_end_and_trims():
    ids = torch.tensor([[-1, 4, -1, 2], [5, -1, -1, -1]])
    assert compact(ids).tolist() == [[4, 2], [5, -1]]


@FAST
@given(groups=token_groups(), page_size=st.sampled_from([1, 2, 4, 16]))
def test_layout_from_groups_partitions_tokens_into_pages_of_one_group(groups, page_size):
    pages = layout_from_groups(groups, page_size)
    B, H, N = groups.shape
    assert pages.shape[:2] == (B, H) and pages.shape[-1] == page_size
    for b in range(B):
        for h in range(H):
            listed = [t for t in pages[b, h].flatten().tolist() if t >= 0]
            assert sorted(listed) == [n for n in range(N) if groups[b, h, n] >= 0]
            for page in pages[b, h].tolist():
                valid = [t for t in page if t >= 0]
                assert page[: len(valid)] == valid  # valid slots first
                assert len({int(groups[b, h, t]) for t in valid}) <= 1
    if N:
        back = token_to_page(pages, N)
        for b, h, n in torch.nonzero(groups >= 0).tolist():
            assert n in pages[b, h, back[b, h, n]].tolist()


def test_contiguous_layout_and_append_pages():
    lo = torch.tensor([2, 5])
    pages = contiguous_layout(lo, 12, num_heads=1, page_size=4)
    assert pages[0, 0].tolist() == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11, -1, -1]]
    assert pages[1, 0].tolist() == [[5, 6, 7, 8], [9, 10, 11, -1], [-1, -1, -1, -1]]
    more = append_pages(pages, torch.tensor([[[12, 13]], [[-1, 13]]]), page_size=4)
    assert more[:, 0, 3].tolist() == [[12, 13, -1, -1], [13, -1, -1, -1]]


def test_page_summaries_of_partial_and_empty_pages():
    keys = torch.tensor([[[[1.0, -2.0], [3.0, 0.0], [5.0, 5.0]]]])  # [1, 1, 3, 2]
    pages = torch.tensor([[[[0, 1], [2, -1], [-1, -1]]]])
    s = summarize_pages(keys, pages)
    assert_close(s.centroids[0, 0], torch.tensor([[2.0, -1.0], [5.0, 5.0], [0.0, 0.0]]))
    assert_close(s.key_min[0, 0], torch.tensor([[1.0, -2.0], [5.0, 5.0], [0.0, 0.0]]))
    assert_close(s.key_max[0, 0], torch.tensor([[3.0, 0.0], [5.0, 5.0], [0.0, 0.0]]))
    assert_close(s.radius[0, 0], torch.tensor([2.0**0.5, 0.0, 0.0]))
    assert s.lens.tolist() == [[[2, 1, 0]]]


def test_mass_merge_ranks_by_the_group_summed_softmax_weight():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, 10, generator=g)  # [B, H_kv, G, P]
    resident = torch.randn(2, 3, 4, 5, generator=g)
    merged = merge_heads(scores, "mass", scale=0.5, resident_logits=resident)
    probs = torch.softmax(torch.cat([scores * 0.5, resident], -1), -1)[..., :10].sum(2)
    assert_close(merged.exp(), probs, rtol=1e-5, atol=1e-6)
    assert_close(merge_heads(scores, "max"), scores.amax(2))
    assert_close(merge_heads(scores, "mean"), scores.mean(2))


def test_positions_window_grows_then_flushes_a_page():
    pos = Positions.after_prefill(torch.tensor([0, 3]), 20, sink_tokens=2, window_tokens=4, flush_tokens=4)
    assert pos.paged_end == 16 and pos.sink_ids().tolist() == [[0, 1], [3, 4]]
    assert pos.window_count().tolist() == [4, 4]
    moves = [pos.advance(1) for _ in range(4)]
    assert moves[:3] == [(16, 16)] * 3 and moves[3] == (16, 20)  # the 4th token flushes 4 tokens
    assert pos.window_count().tolist() == [4, 4]
    short = Positions.after_prefill(torch.tensor([7]), 9, sink_tokens=4, window_tokens=4, flush_tokens=4)
    assert short.sink_count().tolist() == [2] and short.window_count().tolist() == [0]
    assert not bool(short.paged_mask().any())


def test_key_copy_appends_amortized_and_reads_by_position():
    buf = KeyCopy.from_keys(torch.zeros(1, 2, 3, 4))
    for i in range(100):
        buf.append(torch.full((1, 2, 1, 4), float(i)))
    assert buf.all.shape == (1, 2, 103, 4) and float(buf.all[0, 1, -1, 0]) == 99.0
    got = buf.keys(torch.tensor([[[102, -1, 3], [4, 4, 0]]]))
    assert got[0, 0, :, 0].tolist() == [99.0, 0.0, 0.0] and got[0, 1, :, 0].tolist() == [1.0, 1.0, 0.0]
    assert buf.nbytes() >= 103 * 2 * 4 * 4 and buf.num_tokens == 103
