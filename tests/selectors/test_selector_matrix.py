"""The shared matrix: every built-in selector through the selector conformance suite, plus the
properties the suite leaves to us (exact ledger split, pages taken whole, oracle ceiling)."""

from __future__ import annotations

import attrs
import pytest
import torch
from default_selectors import DEFAULT_SELECTORS, DENSE, TOKEN_LEVEL, available, make_selector, params
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError
from icecache.core.plugins import build_registry
from icecache.metrics import attention_probs, attention_recall, oracle_mask, oracle_recall
from icecache.selectors.plugin import BUILTIN_SELECTORS
from icecache.testing.conformance import SelectorCase, check_selector, selector_cases

SETTINGS = settings(max_examples=25, deadline=None, database=None)


def test_matrix_covers_every_builtin_selector():
    names = {n.split(":")[0] for n, _ in DEFAULT_SELECTORS}
    assert names == set(BUILTIN_SELECTORS) | {"icecache-reuse", "omnikv"}
    assert set(build_registry().names("selector")) >= names


@pytest.mark.parametrize("name", params())
def test_conformance(name):
    make_selector(name, CacheConfig())  # skips when the selector's optional backend is missing
    # NOTE: the index-backed selectors cost ~10x more per example; fewer examples keep the suite fast
    examples = 12 if name.startswith("icecache") else 25
    check_selector(lambda config: make_selector(name, config), max_examples=examples)


def _run(name: str, case: SelectorCase):
    """Prefill and step ``case`` through one selector; yields (selector, selection, context, query, keys)."""
    keys, start, queries = case.tensors()
    try:
        sel = make_selector(name, case.config)
    except ConfigError:  # a selector may refuse a config (as the conformance suite allows)
        assume(False)
    N = case.prompt_len
    sel.prefill(keys[:, :, :N], start=start)
    context = N
    for n, q in zip(case.steps, queries, strict=True):
        sel.append(keys[:, :, context : context + n])
        context += n
        yield sel, sel.select(q), context, q, keys[:, :, :context], start


@pytest.mark.parametrize("name", params())
@SETTINGS
@given(case=selector_cases())
def test_ledger_splits_exactly_and_pages_are_taken_whole(name, case):
    for sel, selection, context, _, _, _ in _run(name, case):
        pos = sel.positions
        B, H = selection.token_ids.shape[:2]
        ledger = selection.ledger
        mask = selection.token_mask(context)
        assert torch.equal(ledger.sink.expand(B, H), pos.sink_count()[:, None].expand(B, H))
        assert torch.equal(ledger.window.expand(B, H), pos.window_count()[:, None].expand(B, H))
        assert torch.equal(mask.sum(-1), ledger.total.expand(B, H))
        # the sinks are the first real positions, the window the newest ones
        for ids in (pos.sink_ids(), pos.window_ids()):
            want = torch.zeros(B, context + 1, dtype=torch.bool)
            want.scatter_(1, torch.where(ids >= 0, ids, context), True)
            assert bool((mask | ~want[:, None, :context]).all())
        layout = sel.layout.token_ids
        # every paged token sits in exactly one page (the contract says at most one)
        flat = layout.reshape(B, H, -1)
        counts = torch.zeros(B, H, context + 1, dtype=torch.int64).scatter_add_(
            2, torch.where(flat >= 0, flat, context), torch.ones_like(flat)
        )[..., :context]
        assert torch.equal(counts, pos.paged_mask()[:, None].expand(B, H, context).to(torch.int64))
        if name not in TOKEN_LEVEL:
            # selected tokens are exactly the tokens of the selected pages
            pid = selection.page_ids
            page_tokens = layout.gather(2, pid.clamp(min=0)[..., None].expand(*pid.shape, layout.shape[-1]))
            page_tokens = torch.where((pid >= 0)[..., None], page_tokens, -1).reshape(B, H, -1)
            in_pages = torch.zeros(B, H, context + 1, dtype=torch.bool).scatter_(
                2, torch.where(page_tokens >= 0, page_tokens, context), True
            )[..., :context]
            assert torch.equal(in_pages, mask & pos.paged_mask()[:, None])
            assert torch.equal((in_pages.sum(-1)), ledger.selected.expand(B, H))


def _oracle_steps(case: SelectorCase):
    """Per step of the oracle: (selection, context, dense probs, metric oracle mask)."""
    out = []
    for sel, selection, context, q, keys, start in _run("oracle", case):
        pos = sel.positions
        B, H = selection.token_ids.shape[:2]
        forced = torch.zeros(B, context + 1, dtype=torch.bool)
        for ids in (pos.sink_ids(), pos.window_ids()):
            forced.scatter_(1, torch.where(ids >= 0, ids, context), True)
        forced = forced[:, None, :context].expand(B, H, context)
        probs = attention_probs(q, keys, start=start)
        k = case.config.budget - forced.sum(-1)
        want = oracle_mask(probs, forced, pos.paged_mask()[:, None].expand(B, H, context), k)
        out.append((selection, context, probs, want))
    return out


@settings(max_examples=15, deadline=None, database=None)
@given(case=selector_cases())
def test_oracle_recall_is_one_and_oracle_is_the_ceiling(case):
    """The oracle selects exactly the metric's oracle set, and no selector covers more attention."""
    oracle = _oracle_steps(case)
    for selection, context, _, want in oracle:
        B, H = selection.token_ids.shape[:2]
        assert torch.equal(oracle_recall(selection.token_mask(context), want), torch.ones(B, H))
    for name, _ in DEFAULT_SELECTORS:
        if name in DENSE or not available(name):
            continue
        for (selection, context, probs, _), step in zip(oracle, _run(name, case), strict=True):
            best = attention_recall(probs, selection.token_mask(context))
            other = attention_recall(probs, step[1].token_mask(context))
            assert bool((other <= best + 1e-5).all()), (name, other, best)


@pytest.mark.parametrize("name", params())
@settings(max_examples=10, deadline=None, database=None)
@given(case=selector_cases(), budget_slack=st.integers(0, 8))
def test_budget_at_least_context_attends_everything(name, case, budget_slack):
    total = case.prompt_len + sum(case.steps)
    config = case.config.with_budget(max(case.config.budget, total + budget_slack))
    case = attrs.evolve(case, config=config)
    for _, selection, context, _, _, start in _run(name, case):
        real = torch.arange(context)[None, :] >= start[:, None]
        mask = selection.token_mask(context)
        assert torch.equal(mask, real[:, None].expand_as(mask))
