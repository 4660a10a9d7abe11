"""Every registered built-in component passes its conformance suite.

Parametrized over the registry's names, so a new built-in is covered without touching this file.
Example counts are small (the whole file stays well under two minutes on two busy cores); raise
them locally with ``ICECACHE_CONFORMANCE_EXAMPLES=200``.
"""

import os

import pytest

from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.testing.conformance import (
    check_selector,
    check_tier,
    registered_selector_factory,
    registered_tier_factory,
)

PM = get_plugin_manager(load_entrypoints=False)
REGISTRY = build_registry(PM)
SCALE = int(os.environ.get("ICECACHE_CONFORMANCE_EXAMPLES", "0"))


def examples(default: int) -> int:
    return SCALE or default


@pytest.mark.parametrize("name", REGISTRY.names("selector"))
def test_builtin_selector_conformance(name):
    check_selector(registered_selector_factory(name, plugin_manager=PM), max_examples=examples(12))


@pytest.mark.parametrize("name", REGISTRY.names("tier"))
def test_builtin_tier_conformance(name):
    check_tier(registered_tier_factory(name, plugin_manager=PM), max_examples=examples(15))
