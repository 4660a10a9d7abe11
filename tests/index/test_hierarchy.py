"""The hierarchy index: stateful invariants over build/insert/query, and recall on clustered keys."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, TensorSpecError
from icecache.core.keys import gather_positions
from icecache.index.hierarchy.index import (
    CANDIDATE_ORDERS,
    INSERT_MODES,
    PAGE_ESTIMATES,
    HierarchyIndex,
    fast_bfloat16_products,
)
from icecache.index.hierarchy.state import round_to
from icecache.metrics.fidelity import attention_recall, oracle_mask
from icecache.testing.strategies.kv import index_histories
from icecache.testing.synthetic import make_clustered_kv, query_for_cluster


class PositionReader:
    """A key reader over a history's keys addressed by their token ids (as a store-backed one is)."""

    def __init__(self, keys: Tensor, token_ids: Tensor):
        B, H, N, D = keys.shape
        span = int(token_ids.max()) + 1 if token_ids.numel() else 1
        self.by_pos = torch.zeros(B, H, span, D)
        b, h, n = torch.nonzero(token_ids >= 0, as_tuple=True)
        self.by_pos[b, h, token_ids[b, h, n]] = keys[b, h, n]
        self.num_tokens, self.device = span, keys.device

    def keys(self, token_ids: Tensor) -> Tensor:
        return gather_positions(self.by_pos, token_ids)

    def nbytes(self) -> int:
        return 0


class HierarchyMachine(RuleBasedStateMachine):
    """Build from a prompt, then interleave inserts and queries; the layout stays a partition."""

    @initialize(history=index_histories(page_size=8), mode=st.sampled_from(["assign", "new-leaf"]),
                whiten=st.booleans(), leaf=st.sampled_from([2, 4, 8]),
                estimate=st.sampled_from(PAGE_ESTIMATES), order=st.sampled_from(CANDIDATE_ORDERS),
                candidates=st.sampled_from([1.0, 4.0]), slots=st.sampled_from([None, 8]),
                reader=st.booleans())
    def build(self, history, mode, whiten, leaf, estimate, order, candidates, slots, reader):
        self.h = history
        extra = {} if slots is None else {"page_slots": slots}
        self.index = HierarchyIndex(CacheConfig(page_size=8, budget=64), leaf_tokens=leaf, cell_tokens=16,
                                    insert_mode=mode, page_estimate=estimate, candidate_order=order,
                                    candidates=candidates, **extra)
        B, H, _, D = history.keys.shape
        queries = torch.randn(B, H, 6, D) if whiten else None
        n = history.prompt
        # NOTE: with a reader the index holds no keys and reads them back by position (as in an IceCache)
        positions = PositionReader(history.keys, history.token_ids) if reader else None
        self.index.build(history.keys[:, :, :n], history.token_ids[:, :, :n], queries=queries,
                         reader=positions)
        assert (self.index._state.keys is None) == reader
        self.context, self.todo = n, list(history.inserts)
        self.pages = self.index.layout.token_ids.clone()

    @precondition(lambda self: self.todo)
    @rule()
    def insert(self):
        n = self.todo.pop(0)
        sl = slice(self.context, self.context + n)
        before = self.pages
        changed = self.index.insert(self.h.keys[:, :, sl], self.h.token_ids[:, :, sl])
        self.context += n
        after = self.index.layout.token_ids
        assert changed.shape == after.shape[:3] and changed.dtype == torch.bool
        P0 = before.shape[2]
        # page contents only grow; every page whose tokens changed is flagged
        for b, h, p in torch.nonzero(torch.ones(after.shape[:3], dtype=torch.bool)).tolist():
            old = set(before[b, h, p][before[b, h, p] >= 0].tolist()) if p < P0 else set()
            new = set(after[b, h, p][after[b, h, p] >= 0].tolist())
            assert old <= new, f"page {p} lost tokens"
            assert old == new or bool(changed[b, h, p]), f"page {p} changed unflagged"
        self.pages = after.clone()

    @rule(budget=st.integers(0, 70), group=st.integers(1, 3), seed=st.integers(0, 99))
    def query(self, budget, group, seed):
        B, H, _, D = self.h.keys.shape
        q = torch.randn(B, H, group, D, generator=torch.Generator().manual_seed(seed))
        hits = self.index.query(q, budget)
        lay = self.index.layout.token_ids
        assert bool((hits.num_tokens <= budget).all())
        for b in range(B):
            for h in range(H):
                pids = hits.page_ids[b, h][hits.page_ids[b, h] >= 0]
                assert pids.unique().numel() == pids.numel()
                want = lay[b, h, pids].flatten()
                want = set(want[want >= 0].tolist())
                got = hits.token_ids[b, h][hits.token_ids[b, h] >= 0].tolist()
                assert len(got) == len(set(got)) and set(got) == want
                assert int(hits.num_tokens[b, h]) == len(want)

    @invariant()
    def every_token_exactly_once_and_pages_within_capacity(self):
        lay = self.index.layout.token_ids
        assert lay.shape[-1] == self.index.page_slots <= 8
        assert lay.numel() == 0 or int((lay >= 0).sum(-1).max()) <= self.index.page_slots
        ids = self.h.token_ids[:, :, :self.context]
        for b in range(lay.shape[0]):
            for h in range(lay.shape[1]):
                got = lay[b, h][lay[b, h] >= 0].sort().values
                want = ids[b, h][ids[b, h] >= 0].sort().values
                assert torch.equal(got, want)
        assert torch.equal(self.index.num_tokens, (ids >= 0).sum(-1))

    @invariant()
    def page_bounds_are_the_members_extremes_rounded_outward(self):
        st_ = self.index._state
        P = st_.num_pages
        exact = self.index.page_summaries()  # recomputed from the pages' keys
        G, D = st_.page_min.shape[0], st_.page_min.shape[-1]
        kmin, kmax = exact.key_min.reshape(G, P, D), exact.key_max.reshape(G, P, D)
        sd = self.index.sdtype
        assert torch.equal(st_.page_min[:, :P], round_to(kmin, sd, up=False))
        assert torch.equal(st_.page_max[:, :P], round_to(kmax, sd, up=True))
        assert bool((st_.page_min[:, :P].float() <= kmin).all())
        assert bool((st_.page_max[:, :P].float() >= kmax).all())

    @invariant()
    def cell_summaries_follow_the_cells_after_every_insert(self):
        st_ = self.index._state
        n = st_.cell_count.clamp_min(1)[..., None]
        mean = st_.cell_sum / n
        var = (st_.cell_sqsum / n - mean * mean).clamp_min(0)
        empty = (st_.cell_count == 0)[..., None]
        hi, lo = st_.cell_max.masked_fill(empty, 0.0), st_.cell_min.masked_fill(empty, 0.0)
        summary = st_.cell_summary
        dt = summary.dtype
        assert summary.shape == (*st_.cell_sum.shape[:2], 4, st_.cell_sum.shape[-1])
        assert torch.equal(summary[:, :, 0], mean.to(dt)) and torch.equal(summary[:, :, 1], var.to(dt))
        assert bool((summary[:, :, 2].float() >= hi).all()) and bool((summary[:, :, 3].float() <= lo).all())
        assert torch.equal(summary[:, :, 2], round_to(hi, dt, up=True))


TestHierarchyMachine = HierarchyMachine.TestCase
TestHierarchyMachine.settings = settings(max_examples=25, stateful_step_count=6, deadline=None)


def recall(keys, query, tokens):
    """Group-mean softmax mass of ``query`` [B, H, G, D] over ``keys`` [B, H, N, D] on ``tokens``."""
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


@pytest.mark.parametrize(("scoring", "estimate", "order"),
                         [("exact", "centroid", "merged"), ("centroid", "centroid", "merged"),
                          ("exact", "gaussian", "merged"), ("exact", "centroid", "per-head"),
                          ("exact", "gaussian", "per-head")])
def test_recall_close_to_oracle_on_clustered_keys(scoring, estimate, order):
    kv = make_clustered_kv(2, 2, 1024, 32, num_clusters=24, spread=0.3, norm_range=(2.0, 6.0), seed=5)
    index = HierarchyIndex(CacheConfig(), scoring=scoring, page_estimate=estimate, candidate_order=order)
    index.build(kv.keys[:, :, :896], torch.arange(896))
    index.insert(kv.keys[:, :, 896:], torch.arange(896, 1024))
    got, best = [], []
    for c in range(6):
        q = query_for_cluster(kv, c, group_size=3, seed=c).view(2, 2, 3, 32)
        hits = index.query(q, 96)
        got.append(recall(kv.keys, q, hits.token_ids))
        best.append(oracle(kv.keys, q, 96))
    got, best = sum(got) / 6, sum(best) / 6
    assert got >= best - 0.06, (got, best)


def test_bad_inputs_name_the_value():
    index = HierarchyIndex(CacheConfig())
    with pytest.raises(ConfigError, match="call build"):
        index.query(torch.zeros(1, 1, 1, 4), 8)
    with pytest.raises(TensorSpecError, match=r"\[B, H_kv, N, D\]"):
        index.build(torch.zeros(3, 4))
    with pytest.raises(TensorSpecError, match=r"token_ids must have shape"):
        index.build(torch.zeros(1, 1, 5, 4), torch.arange(4))
    index.build(torch.randn(1, 1, 20, 4))
    with pytest.raises(TensorSpecError, match=r"query must be \[1, 1, G, 4\]"):
        index.query(torch.zeros(1, 2, 1, 4), 8)
    with pytest.raises(ConfigError, match="leaf_tokens=32 exceeds page_size=16"):
        HierarchyIndex(CacheConfig(), leaf_tokens=32)
    with pytest.raises(ValueError, match="scoring"):
        HierarchyIndex(CacheConfig(), scoring="nope")


def test_empty_prompt_then_inserts_and_per_row_budgets():
    index = HierarchyIndex(CacheConfig(page_size=4))
    keys = torch.randn(2, 1, 10, 8)
    index.build(keys[:, :, :0])
    assert index.layout.token_ids.shape == (2, 1, 0, index.page_slots) and index.page_slots == 2
    index.insert(keys, torch.arange(10))
    hits = index.query(torch.randn(2, 1, 2, 8), torch.tensor([[3], [10]]))
    assert hits.num_tokens[0, 0] <= 3 and hits.num_tokens[1, 0] == 10


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 90), group=st.integers(1, 3), budget=st.integers(1, 100), seed=st.integers(0, 999),
       inserted=st.integers(0, 20))
def test_exact_scores_are_each_pages_share_of_dense_attention(n, group, budget, seed, inserted):
    """With every page a candidate, a taken page's score is its tokens' dense softmax mass (summed
    over the group's query heads) per token: the exact rescoring reads every filled slot, no other."""
    gen = torch.Generator().manual_seed(seed)
    B, H, D = 1, 2, 8
    keys = torch.randn(B, H, n + inserted, D, generator=gen)
    q = torch.randn(B, H, group, D, generator=gen)
    index = HierarchyIndex(CacheConfig(page_size=8, budget=64, seed=seed), cell_tokens=16,
                           candidates=1000.0, cell_candidates=1000.0)
    index.build(keys[:, :, :n])
    if inserted:
        index.insert(keys[:, :, n:], torch.arange(n, n + inserted).expand(B, H, inserted))
    hits = index.query(q, budget)
    probs = torch.softmax(torch.einsum("bhgd,bhnd->bhgn", q, keys) * D ** -0.5, dim=-1).sum(2)  # [B, H, N]
    lay = index.layout.token_ids
    for h in range(H):
        for pid, score in zip(hits.page_ids[0, h].tolist(), hits.scores[0, h].tolist(), strict=True):
            if pid < 0:
                continue
            tok = lay[0, h, pid][lay[0, h, pid] >= 0]
            assert score == pytest.approx(float(probs[0, h, tok].sum()) / tok.numel(), rel=1e-4, abs=1e-7)


def _pages_and_hits(index: HierarchyIndex, q: Tensor, budget: int, row: int) -> tuple[set, list]:
    lay = index.layout.token_ids[row]  # [H, P, S]
    pages = {(h, frozenset(p[p >= 0].tolist()))
             for h in range(lay.shape[0]) for p in lay[h] if (p >= 0).any()}
    hits = index.query(q, budget).token_ids[row]
    return pages, [sorted(t[t >= 0].tolist()) for t in hits]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(20, 300), shorter=st.integers(0, 19), inserted=st.integers(0, 12),
       seed=st.integers(0, 999), mode=st.sampled_from(INSERT_MODES), first=st.booleans())
def test_a_sequence_gets_the_same_pages_whatever_it_is_batched_with(n, shorter, inserted, seed, mode, first):
    """Batched beside another, left-padded sequence (no longer than it), a sequence gets the same
    pages, inserts and selections as alone: its random numbers are keyed by KV head, not by row."""
    gen = torch.Generator().manual_seed(seed)
    H, D = 2, 8
    mine = torch.randn(1, H, n + inserted, D, generator=gen)
    other = torch.randn(1, H, n + inserted, D, generator=gen)
    q = torch.randn(1, H, 2, D, generator=gen)
    make = lambda: HierarchyIndex(CacheConfig(page_size=8, budget=64, seed=seed), cell_tokens=16,  # noqa: E731
                                  insert_mode=mode)
    alone = make()
    alone.build(mine[:, :, :n])
    pad = torch.where(torch.arange(n) < shorter, -1, torch.arange(n) - shorter)  # the other's left padding
    pair = make()
    rows = [mine, other] if first else [other, mine]
    ids = [torch.arange(n).expand(1, H, n), pad.expand(1, H, n)]
    ids = ids if first else ids[::-1]
    pair.build(torch.cat([r[:, :, :n] for r in rows]), torch.cat(ids))
    me = 0 if first else 1
    if inserted:
        alone.insert(mine[:, :, n:], torch.arange(n, n + inserted).expand(1, H, inserted))
        new = torch.arange(inserted)
        tokens = [n + new, n - shorter + new] if first else [n - shorter + new, n + new]
        pair.insert(torch.cat([r[:, :, n:] for r in rows]),
                    torch.stack(tokens)[:, None].expand(2, H, inserted))
    qq = torch.cat([q, torch.randn(1, H, 2, D, generator=gen)] if first else [torch.randn(1, H, 2, D), q])
    assert _pages_and_hits(alone, q, 40, 0) == _pages_and_hits(pair, qq, 40, me)


def test_bound_candidates_find_needles_the_centroids_hide():
    """One key aligned with one query head, clustered among unrelated keys: its page's centroid
    often ranks low, but the page's q.k bound ranks first, so the head gets its needle."""
    found = {0: [], 4: []}
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        N, D = 3000, 16
        keys = torch.randn(1, 1, N, D, generator=gen)
        q = torch.randn(1, 1, 2, D, generator=gen)  # head 0 copies the needle, head 1 reads the rest
        needle = int(torch.randint(100, N - 100, (1,), generator=gen))
        keys[0, 0, needle] = 2.0 * q[0, 0, 0]
        for bound in found:
            index = HierarchyIndex(CacheConfig(page_size=16, budget=64, seed=seed), candidates=1.0,
                                   cell_candidates=2.0, bound_candidates=bound)
            index.build(keys)
            found[bound].append(bool((index.query(q, 48).token_ids[0, 0] == needle).any()))
    assert all(found[4]), found
    assert not all(found[0]), f"the centroids found every needle: the test shows nothing ({found})"


@settings(max_examples=25, deadline=None)
@given(G=st.integers(1, 4), Gq=st.integers(1, 3), K0=st.integers(1, 40), D=st.sampled_from([4, 8, 16]),
       gaussian=st.booleans(), bounded=st.booleans(), stored=st.booleans(), seed=st.integers(0, 999))
def test_summary_scores_are_the_estimate_and_the_bound(G, Gq, K0, D, gaussian, bounded, stored, seed):
    """One product gives the centroid (or Gaussian) estimate and the elementwise q.k bound of every page,
    in float32 or in the summaries' stored bfloat16 (then within bfloat16 rounding of the products)."""
    from icecache.index.hierarchy.query import _summary_scores

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(G, Gq, D, generator=gen)
    mean, var = torch.randn(G, K0, D, generator=gen), torch.rand(G, K0, D, generator=gen)
    spread = torch.rand(G, K0, D, generator=gen)
    fields = [mean, var] if gaussian else [mean]
    stats = torch.stack(fields + [mean + spread, mean - spread], dim=2)  # [G, K0, F, D]
    if stored:
        stats = stats.bfloat16()
    scale = D ** -0.5
    ref_stats = stats.double()
    estimate = scale * torch.einsum("gqd,gkd->gqk", q.double(), ref_stats[:, :, 0])
    if gaussian:
        estimate += 0.5 * scale**2 * torch.einsum("gqd,gkd->gqk", q.double() ** 2, ref_stats[:, :, 1])
    top, low = ref_stats[:, :, -2], ref_stats[:, :, -1]
    qd = q.double()[:, :, None]
    bound = torch.maximum(qd * top[:, None], qd * low[:, None]).sum(-1)
    coarse, got_bound = _summary_scores(q, stats, scale, gaussian=gaussian, bounded=bounded)
    assert coarse.dtype == torch.float32 and coarse.shape == (G, Gq, K0)
    # NOTE: bfloat16 inputs and products: ~3 significant digits of each term and of the sum
    tol = dict(rtol=0.02, atol=0.05 * D ** 0.5) if stored else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coarse.double(), estimate, **tol)
    if bounded:
        torch.testing.assert_close(got_bound.double(), bound, **tol)
    else:
        assert got_bound is None


@pytest.mark.parametrize("estimate", ["centroid", "gaussian"])
def test_stored_summary_products_keep_the_selection(estimate):
    """``summary_matmul="stored"`` ranks pages by bfloat16 products: on clustered keys the selection
    keeps the float32 path's recall (docs/index.md measures it on the real model)."""
    kv = make_clustered_kv(2, 2, 1024, 32, num_clusters=24, spread=0.3, norm_range=(2.0, 6.0), seed=7)
    got = {}
    for mode in ("float32", "stored"):
        index = HierarchyIndex(CacheConfig(), page_estimate=estimate, summary_matmul=mode)
        index.build(kv.keys, torch.arange(1024))
        queries = [query_for_cluster(kv, c, group_size=3, seed=c).view(2, 2, 3, 32) for c in range(6)]
        got[mode] = [recall(kv.keys, q, index.query(q, 96).token_ids) for q in queries]
    assert sum(got["stored"]) / 6 >= sum(got["float32"]) / 6 - 0.01, got
    with pytest.raises(ValueError, match="summary_matmul"):
        HierarchyIndex(CacheConfig(), summary_matmul="float16")


@pytest.mark.parametrize("mode,summary,want", [
    ("stored", "bfloat16", torch.bfloat16), ("float32", "bfloat16", torch.float32),
    ("stored", "float32", torch.float32), ("auto", "float32", torch.float32), ("auto", "bfloat16", None)])
def test_summary_products_run_in_the_dtype_the_option_and_the_cpu_give(mode, summary, want):
    """``summary_matmul="auto"`` (the default) multiplies in bfloat16 only where bfloat16 products are
    fast; the cell summaries the query reads are kept in that dtype, so no conversion runs per query."""
    cpu = torch.device("cpu")
    want = want or (torch.bfloat16 if fast_bfloat16_products(cpu) else torch.float32)
    index = HierarchyIndex(CacheConfig(), summary_matmul=mode, summary_dtype=summary)
    assert index.summary_work_dtype(cpu) == want
    index.build(torch.randn(1, 2, 256, 16), torch.arange(256))
    assert index._state.cell_summary.dtype == want
    assert HierarchyIndex(CacheConfig()).summary_matmul == "auto"
