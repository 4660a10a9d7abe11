"""How a third-party package runs icecache's conformance suites in its own tests.

Run from the package directory: ``pytest tests`` (needs ``icecache[testing]``).
"""

import pytest
from hypothesis import strategies as st
from icecache_example_plugin.selector import RecencyQuestSelector, make_recency_quest

from icecache.testing.conformance import (
    check_selector,
    registered_selector_factory,
    selector_contract_tests,
)
from icecache.testing.strategies import cache_configs


def factory(config):
    """What the suites call: one fresh selector per generated config."""
    return make_recency_quest(config, layer_idx=2)


def test_selector_keeps_the_contract():
    # one call: every property on every generated case; raises AssertionError naming the broken one
    check_selector(factory, max_examples=20)


@pytest.mark.parametrize("check", selector_contract_tests(factory, max_examples=5))
def test_each_property(check):
    # or one pytest case per property (shows which property broke in the test id)
    check()


@pytest.mark.parametrize("bonus", [0.0, 2.0])
def test_options_keep_the_contract(bonus):
    check_selector(lambda config: RecencyQuestSelector(config=config, recency_bonus=bonus), max_examples=8,
                   configs=cache_configs(page_size=st.sampled_from([8, 16])))


def test_registered_through_the_entry_point():
    # the same suite on the selector as icecache finds it: through the installed entry point
    check_selector(registered_selector_factory("recency-quest"), max_examples=8)
