"""The selector suite accepts a conforming selector and catches each deliberately broken one."""

import pytest
from fixture_selectors import BROKEN, ExactPagesSelector
from hypothesis import strategies as st

from icecache.testing.conformance import (
    SELECTOR_PROPERTIES,
    ContractViolation,
    check_selector,
    selector_contract_tests,
)
from icecache.testing.strategies import cache_configs


def test_a_conforming_protocol_only_selector_passes():
    check_selector(ExactPagesSelector, max_examples=15)


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_each_broken_selector_is_caught(bug):
    with pytest.raises(AssertionError) as info:
        check_selector(lambda config: ExactPagesSelector(config, bug=bug), max_examples=60, shrink=False)
    err = info.value
    assert isinstance(err, ContractViolation)
    # NOTE: a bug may surface through either of two neighbouring properties (see BROKEN)
    expected = BROKEN[bug] if isinstance(BROKEN[bug], set) else {BROKEN[bug]}
    assert err.prop in expected, str(err)
    assert "selector contract violated" in str(err)


def test_over_budget_message_names_row_and_budget():
    pattern = r"\[budget\].*row \[b=\d+, h=\d+\] attends \d+ positions, over the budget"
    with pytest.raises(AssertionError, match=pattern):
        check_selector(lambda c: ExactPagesSelector(c, bug="over-budget"), max_examples=40,
                       properties=["budget"])


def test_properties_can_be_narrowed_and_unknown_ones_are_named():
    # the lying ledger is invisible when only "budget" is checked
    check_selector(lambda c: ExactPagesSelector(c, bug="ledger-lies"), max_examples=5, properties=["budget"])
    with pytest.raises(ValueError, match="unknown selector properties \\['bogus'\\]"):
        check_selector(ExactPagesSelector, properties=["bogus"])


def test_configs_strategy_narrows_generation():
    seen = []

    def factory(config):
        seen.append(config.page_size)
        return ExactPagesSelector(config)

    check_selector(factory, max_examples=5, configs=cache_configs(page_size=8, sink_tokens=1))
    assert set(seen) == {8}


def test_max_examples_is_validated():
    with pytest.raises(ValueError, match="max_examples must be a positive int, got 0"):
        check_selector(ExactPagesSelector, max_examples=0)


@pytest.mark.parametrize("check", selector_contract_tests(ExactPagesSelector, max_examples=3))
def test_pytest_parametrization_helper(check):
    check()


def test_pytest_parametrization_covers_every_property():
    ids = [p.id for p in selector_contract_tests(ExactPagesSelector)]
    assert ids == list(SELECTOR_PROPERTIES)


def test_a_factory_that_raises_is_reported_as_such():
    def factory(config):
        raise RuntimeError("no GPU")

    pattern = r"\[no-error\]: factory\(config\) raised RuntimeError: no GPU"
    with pytest.raises(ContractViolation, match=pattern):
        check_selector(factory, max_examples=2)


def test_sinks_are_required_only_when_configured():
    configs = cache_configs(sink_tokens=0, window_tokens=st.just(2), page_size=4)
    check_selector(lambda c: ExactPagesSelector(c, bug="attends-padding"), max_examples=5, configs=configs,
                   properties=["sinks-recent"])


def test_the_suite_hands_a_selector_its_observation_window_of_prompt_queries():
    import torch

    from icecache.selectors.policies.streamingllm import StreamingLLMSelector

    seen = []

    class WindowedSelector(StreamingLLMSelector):
        prompt_query_window = 5

        def prefill(self, keys, *, start=None, queries=None, reader=None):
            seen.append((keys.shape, start.clone(), queries))
            super().prefill(keys, start=start, queries=queries, reader=reader)

    check_selector(lambda c: WindowedSelector(config=c), max_examples=8)
    assert seen
    for (B, _, N, D), start, queries in seen:
        Q = min(5, N)
        assert queries is not None and queries.shape[0] == B and queries.shape[2:] == (Q, D)
        pos = torch.arange(N - Q, N)
        padding = pos[None, :] < start[:, None]  # [B, Q]
        assert bool((queries.abs().sum((1, 3)) == 0)[padding].all())
        assert bool((queries.abs().sum((1, 3)) > 0)[~padding].all())
