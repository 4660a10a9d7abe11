"""Every registered built-in component passes its conformance suite.

Parametrized over the registry's names, so a new built-in is covered without touching this file.
Example counts are small (the whole file stays well under two minutes on two busy cores); raise
them locally with ``ICECACHE_CONFORMANCE_EXAMPLES=200``.
"""

import os

import pytest
import torch

from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.testing.conformance import (
    check_index,
    check_kernel,
    check_selector,
    check_tier,
    registered_index_factory,
    registered_kernel_factory,
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


@pytest.mark.parametrize("name", REGISTRY.names("kernel"))
def test_builtin_kernel_conformance(name):
    # NOTE: on a CPU-only machine "triton" runs in the interpreter (~1000x slower): tiny problems
    interpreted = name == "triton" and not torch.cuda.is_available()
    check_kernel(registered_kernel_factory(name, plugin_manager=PM),
                 max_examples=examples(5 if interpreted else 15), max_tokens=16 if interpreted else 40)


@pytest.mark.parametrize("name", REGISTRY.names("index"))
def test_builtin_index_conformance(name):
    check_index(registered_index_factory(name, plugin_manager=PM), max_examples=examples(12))
