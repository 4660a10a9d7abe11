"""Registration through the plugin hook, policy-built selectors and the observer hook."""

from __future__ import annotations

import pytest
import torch

from icecache.core.config import CacheConfig
from icecache.core.hookspecs import hookimpl
from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.core.policy import compose_policy
from icecache.selectors.base import Selector
from icecache.selectors.bases.selector import SelectorStateError
from icecache.selectors.plugin import BUILTIN_SELECTORS


def test_every_builtin_selector_is_registered_with_a_description():
    registry = build_registry(get_plugin_manager(load_entrypoints=False))
    names = set(BUILTIN_SELECTORS) | {"icecache-reuse"}
    assert names <= set(registry.names("selector"))
    for name in names:
        reg = registry.get("selector", name)
        assert reg.description and reg.source == "builtin:icecache.selectors.plugin"


class Observer:
    def __init__(self):
        self.seen = []

    @hookimpl
    def icecache_selection_made(self, layer_idx, selection):
        self.seen.append((layer_idx, selection.ledger.summary()))


def test_policy_builds_dense_then_sparse_layers_and_observers_see_each_selection():
    observer = Observer()
    pm = get_plugin_manager(load_entrypoints=False, extra=(observer,))
    policy = compose_policy(
        selector="quest", config=CacheConfig(budget=64, dense_layers=2), plugin_manager=pm
    )
    layers = [policy.make_selector(i) for i in range(3)]
    assert [s.name for s in layers] == ["full", "full", "quest"]
    assert all(isinstance(s, Selector) for s in layers)
    keys = torch.randn(1, 2, 200, 8)
    for s in layers:
        s.prefill(keys)
        s.select(torch.randn(1, 4, 8))
    assert [layer for layer, _ in observer.seen] == [0, 1, 2]
    assert observer.seen[0][1]["dense"] and not observer.seen[2][1]["dense"]
    assert observer.seen[2][1]["max_total"] <= 64


def test_reuse_layers_of_one_policy_share_a_group_and_followers_need_their_leader():
    policy = compose_policy(
        selector="icecache-reuse",
        index="hierarchy",
        config=CacheConfig(budget=64, dense_layers=2),
        options={"selector": {"reuse_cycle": 3}},
        plugin_manager=get_plugin_manager(load_entrypoints=False),
    )
    follower = policy.make_selector(5)  # cycle 3..5 is led by layer 3
    assert follower.leader_layer == 3 and not follower.is_leader and follower.page_index is None
    assert policy.make_selector(4).shared is follower.shared
    follower.prefill(torch.randn(1, 2, 100, 8))
    with pytest.raises(SelectorStateError, match="reuses layer 3's pages, but no selector was built"):
        follower.select(torch.randn(1, 2, 8))
