"""The example plugin is a real installed package: it loads through its entry point and composes."""

import importlib.metadata

import pytest
import torch

from icecache.core.config import CacheConfig
from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.core.policy import compose_policy

pytestmark = pytest.mark.skipif(
    not any(ep.name == "example" for ep in importlib.metadata.entry_points(group="icecache")),
    reason="example plugin not installed (make setup installs it)",
)


def test_entry_point_registers_the_selector_with_its_source(monkeypatch):
    monkeypatch.setenv("ICECACHE_PLUGINS", "example")
    reg = build_registry(get_plugin_manager()).get("selector", "recency-quest")
    assert reg.source.startswith("entrypoint:example (icecache-example-plugin")


def test_plugin_selector_composes_into_a_policy_and_feeds_the_observer(monkeypatch):
    monkeypatch.setenv("ICECACHE_PLUGINS", "example")
    import icecache_example_plugin

    icecache_example_plugin.SELECTION_STATS.clear()
    config = CacheConfig(budget=64, dense_layers=0)
    policy = compose_policy(selector="recency-quest", config=config,
                            options={"selector": {"recency_bonus": 1.0}})
    selector = policy.make_selector(layer_idx=3)
    assert type(selector).__name__ == "RecencyQuestSelector"
    torch.manual_seed(0)
    B, H_kv, G, N, D = 2, 2, 3, 300, 16
    selector.prefill(torch.randn(B, H_kv, N, D))
    for _ in range(3):
        selector.append(torch.randn(B, H_kv, 1, D))
        selection = selector.select(torch.randn(B, H_kv * G, D))
        assert int(selection.ledger.total.max()) <= 64
        assert int(selection.ledger.selected.min()) > 0
    stats = icecache_example_plugin.SELECTION_STATS[3]
    assert stats["steps"] == 3
    assert 0 < stats["tokens"] <= 3 * 64


def test_bad_option_names_the_value(monkeypatch):
    monkeypatch.setenv("ICECACHE_PLUGINS", "example")
    policy = compose_policy(selector="recency-quest", config=CacheConfig(dense_layers=0),
                            options={"selector": {"recency_bonus": -2.0}})
    with pytest.raises(ValueError, match="recency_bonus must be >= 0, got -2.0"):
        policy.make_selector(layer_idx=0)


def test_icecache_plugins_command_lists_it(monkeypatch, capsys):
    monkeypatch.setenv("ICECACHE_PLUGINS", "example")
    from icecache.cli.main import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    line = next(row for row in lines if "recency-quest" in row)
    assert "entrypoint:example" in line
    assert any(row.split()[:2] == ["selector", "quest"] for row in lines)
