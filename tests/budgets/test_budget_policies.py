"""Budget policies: exact allocations, the ledger invariant per row through real selectors, and bad
input refused at composition."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import BUDGET_POLICIES, budget_configs, budget_options

from icecache.budgets.base import largest_remainder
from icecache.core.config import CacheConfig, ModelGeometry
from icecache.core.errors import BudgetError, ConfigError
from icecache.core.policy import compose_policy

FAST = settings(max_examples=40, deadline=None, database=None)


@FAST
@given(weights=st.lists(st.floats(0, 10), min_size=1, max_size=8), floor=st.integers(0, 20),
       spare=st.integers(0, 500))
def test_largest_remainder_is_exact_and_respects_the_floor(weights, floor, spare):
    w = torch.tensor([weights])
    total = torch.tensor([len(weights) * floor + spare])
    got = largest_remainder(w, total, floor)
    assert int(got.sum()) == int(total[0]) and int(got.min()) >= floor


@FAST
@given(config=budget_configs(), data=st.data())
def test_layer_budgets_never_exceed_the_total_and_stay_usable(config, data):
    name = data.draw(st.sampled_from(BUDGET_POLICIES))
    policy = compose_policy(selector="quest", config=config, budget_policy=name,
                            options={"budget": data.draw(budget_options(name))})
    L = config.geometry.num_layers
    sparse = range(config.dense_layers, L)
    budgets = [policy.budgets.layer_budget(i, L) for i in sparse]
    assert sum(budgets) <= len(budgets) * config.budget
    floor = config.sink_tokens + config.window_tokens
    assert all(b >= max(floor, 1) for b in budgets)
    if floor == 0:
        assert all(b >= min(config.page_size, config.budget) for b in budgets)
    if name == "pyramid":
        assert sum(budgets) == len(budgets) * config.budget  # exact, and falling
        assert budgets == sorted(budgets, reverse=True)


@FAST
@given(config=budget_configs(layers=st.integers(1, 3)), data=st.data(), N=st.integers(1, 90),
       steps=st.integers(0, 12), B=st.integers(1, 2))
def test_every_row_stays_within_its_own_budget_and_the_ledger_is_exact(config, data, N, steps, B):
    name = data.draw(st.sampled_from(BUDGET_POLICIES))
    selector = data.draw(st.sampled_from(["quest", "oracle", "streamingllm"]))
    policy = compose_policy(selector=selector, config=config, budget_policy=name,
                            options={"budget": data.draw(budget_options(name))})
    geo = config.geometry
    layer = geo.num_layers - 1
    sel = policy.make_selector(layer)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    keys = torch.randn(B, geo.num_kv_heads, N, geo.head_dim, generator=g)
    queries = torch.randn(B, geo.num_q_heads, N, geo.head_dim, generator=g)
    sel.prefill(keys, queries=queries)
    limit = sel.head_budgets
    if limit is not None:
        mean = policy.budgets.layer_budget(layer, geo.num_layers)
        assert bool((limit.sum(-1) <= geo.num_kv_heads * mean).all())
        assert int(limit.min()) >= config.sink_tokens + config.window_tokens
    for _ in range(steps + 1):
        s = sel.select(torch.randn(B, geo.num_q_heads, geo.head_dim, generator=g))
        attended = (s.token_ids >= 0).sum(-1)  # [B, H_kv]
        assert torch.equal(attended, s.ledger.total)  # exact: every counted token is attended
        assert bool((s.ledger.total <= s.ledger.row_budget).all())
        assert bool((s.ledger.row_budget <= s.ledger.budget).all())
        sel.append(torch.randn(B, geo.num_kv_heads, 1, geo.head_dim, generator=g))


def test_adakv_moves_budget_to_the_head_whose_attention_is_spread():
    geo = ModelGeometry(num_layers=1, num_q_heads=2, num_kv_heads=2, head_dim=8)
    config = CacheConfig(budget=40, page_size=4, sink_tokens=2, window_tokens=6, dense_layers=0, geometry=geo)
    policy = compose_policy(selector="quest", config=config, budget_policy="adakv")
    N = 200
    keys = torch.zeros(1, 2, N, 8)
    keys[0, 0, 50, 0] = 30.0  # head 0: all attention on one key; head 1: flat
    queries = torch.zeros(1, 2, N, 8)
    queries[..., 0] = 1.0
    sel = policy.make_selector(0)
    sel.prefill(keys, queries=queries)
    low, high = sel.head_budgets[0].tolist()
    assert low < 40 < high and low + high == 80
    sel.prefill(keys)  # no prompt queries: the uniform share
    assert sel.head_budgets is None


@pytest.mark.parametrize("Q", [32, 8, 1])
def test_adakv_reads_the_observation_window_runners_hand(Q):
    # NOTE: runners hand the queries of the prompt's last Q positions, not of all N; adakv sliced them as
    # if they were all N (a reshape of an empty tensor in `icecache eval --budget-policy adakv`)
    geo = ModelGeometry(num_layers=1, num_q_heads=4, num_kv_heads=2, head_dim=8)
    config = CacheConfig(budget=40, page_size=4, sink_tokens=2, window_tokens=6, dense_layers=0, geometry=geo)
    policy = compose_policy(selector="quest", config=config, budget_policy="adakv")
    g = torch.Generator().manual_seed(0)
    N = 200
    keys = torch.randn(2, 2, N, 8, generator=g)
    queries = torch.randn(2, 4, N, 8, generator=g)
    start = torch.tensor([0, 150])
    queries[1, :, :150] = 0  # padding positions' queries are zeros
    sel = policy.make_selector(0)
    sel.prefill(keys, start=start, queries=queries[:, :, N - Q:])
    windowed = sel.head_budgets
    assert windowed is not None and windowed.sum(-1).tolist() == [80, 80]
    alone = compose_policy(selector="quest", config=config, budget_policy="adakv",
                           options={"budget": {"observe": Q}}).make_selector(0)
    alone.prefill(keys, start=start, queries=queries)  # every position: the last `observe` are read
    assert torch.equal(windowed, alone.head_budgets)


def test_adakv_gets_its_window_when_the_selector_asks_for_no_queries():
    from icecache.selectors.plumbing.prompt_queries import policy_query_window, prefill_queries

    geo = ModelGeometry(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=8)
    config = CacheConfig(budget=40, page_size=4, sink_tokens=2, window_tokens=6, dense_layers=1, geometry=geo)
    policy = compose_policy(selector="quest", config=config, budget_policy="adakv",
                            options={"budget": {"observe": 16}})
    assert policy_query_window(policy) == 16
    assert policy_query_window(compose_policy(selector="quest", config=config)) == 0
    sel = policy.make_selector(1)
    queries = torch.randn(1, 4, 100, 8)
    got = prefill_queries(sel, queries)
    assert set(got) == {"budget_queries"} and got["budget_queries"].shape == (1, 4, 16, 8)
    sel.prefill(torch.randn(1, 2, 100, 8), **got)
    assert sel.head_budgets is not None
    h2o = compose_policy(selector="h2o", config=config, budget_policy="adakv",
                         options={"budget": {"observe": 16}, "selector": {"window": 4}})
    got = prefill_queries(h2o.make_selector(1), queries)  # each its own window
    assert got["queries"].shape[2] == 4 and got["budget_queries"].shape[2] == 16


def _geo_config(**kw):
    geo = ModelGeometry(num_layers=4, num_q_heads=2, num_kv_heads=2, head_dim=8)
    return CacheConfig(budget=64, page_size=8, sink_tokens=4, window_tokens=12, dense_layers=2, geometry=geo,
                       **kw)


@pytest.mark.parametrize(("options", "message"), [
    ({"budgets": [100, 64]}, r"gives the 2 sparse layers 164 tokens per KV head in all, more than 2 x budget "
                             r"64 = 128 \(layer budgets \[100, 64\]\)"),
    ({"budgets": [64]}, r"lists 1 budgets for 2 sparse layers"),
    ({"budgets": [10, 64]}, r"gives layer 2 a budget of 10, below sink_tokens \+ window_tokens = 16"),
    ({"budgets": [64, 64], "head_budgets": [[100, 28], [10, 64]]},
     r"head_budgets\[1\] \(layer 3\) gives a KV head 10 tokens, below sink_tokens \+ window_tokens = "
     r"4 \+ 12"),
    ({"budgets": [64, 64], "head_budgets": [[100, 40], [64, 64]]},
     r"head_budgets\[0\] \(layer 2\) sum to 140, more than 2 heads x the layer's budget 64"),
    ({"budgets": [64, 64], "head_budgets": [[64], [64, 64]]}, r"lists 1 heads; the model has 2 KV heads"),
])
def test_bad_per_layer_budgets_are_refused_at_composition(options, message):
    with pytest.raises(BudgetError, match=message):
        compose_policy(selector="quest", config=_geo_config(), budget_policy="per-layer",
                       options={"budget": options})


@pytest.mark.parametrize(("name", "options", "message"), [
    ("pyramid", {"taper": 1.5}, "taper must be a number in [0, 1), got 1.5"),
    ("adakv", {"alpha": -1}, "alpha must be a number in [0, 1], got -1"),
    ("adakv", {"observe": 0}, "'observe' must be >= 1: 0"),
    ("per-layer", {"budgets": "64"}, "budgets must be a list of integers, got '64'"),
])
def test_bad_budget_options_name_the_option_and_value(name, options, message):
    with pytest.raises(ConfigError) as info:
        compose_policy(selector="quest", config=_geo_config(), budget_policy=name,
                       options={"budget": options})
    assert message in str(info.value) and "Attribute(" not in str(info.value)


def test_explicit_head_budgets_reach_each_row_and_the_ledger():
    policy = compose_policy(selector="quest", config=_geo_config(), budget_policy="per-layer",
                            options={"budget": {"budgets": [80, 48], "head_budgets": [[100, 60], [48, 48]]}})
    sel = policy.make_selector(2)
    assert sel.config.budget == 100  # the layer's head cap
    sel.prefill(torch.randn(1, 2, 300, 8))
    s = sel.select(torch.randn(1, 2, 8))
    assert s.ledger.limit.tolist() == [[100, 60]] and s.ledger.total.tolist() == [[100, 60]]
    assert policy.make_selector(3).config.budget == 48


def test_a_non_uniform_policy_needs_the_models_layers():
    with pytest.raises(ConfigError, match="needs the model's layers"):
        compose_policy(selector="quest", config=CacheConfig(), budget_policy="pyramid")


def test_icecache_reuse_refuses_a_non_uniform_budget_policy():
    with pytest.raises(ConfigError, match="icecache-reuse layers attend their leader layer's selection"):
        compose_policy(selector="icecache-reuse", config=_geo_config(), budget_policy="pyramid")
