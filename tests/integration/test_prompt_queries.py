"""Prefill state and feedback in every runner.

The prompt's observation window reaches every selector's ``prefill`` the same way in ``icecache
run`` / ``eval`` (prefill snapshots), ``model.generate()`` (the live HF path) and the selector bench.

A spy wraps the real ``SelectorBase.prefill`` (the real method still runs) and records what each layer
got; the tests fail if a runner drops the queries again (IceCache's ``prompt_queries=64`` was silently
off in run and eval while the bench turned it on; it is off by default since, docs/index.md)."""

import functools
import json

import pytest
import torch

from icecache.cli.main import main
from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError
from icecache.core.hookspecs import hookimpl
from icecache.core.plugins import get_plugin_manager
from icecache.core.policy import compose_policy
from icecache.integrations.hf import IceCache, prefill_snapshot
from icecache.selectors.bases.selector import SelectorBase
from icecache.selectors.plumbing.prompt_queries import policy_query_window
from icecache.selectors.policies.quest import QuestSelector

pytestmark = pytest.mark.model


@pytest.fixture
def seen(monkeypatch):
    """``{layer_idx: queries or None}`` for every selector prefill while the test runs."""
    got = {}
    real = SelectorBase.prefill

    @functools.wraps(real)  # NOTE: keeps the signature runners inspect for ``queries=``
    def spy(self, keys, **kwargs):
        got.setdefault(self.layer_idx, []).append(kwargs.get("queries"))
        return real(self, keys, **kwargs)

    monkeypatch.setattr(SelectorBase, "prefill", spy)
    return got


def _prompt(passkey_prompts):
    return passkey_prompts[0][1][:300]


def test_generate_and_snapshot_hand_the_same_window(model_and_tokenizer, passkey_prompts, seen):
    model, _ = model_and_tokenizer
    ids = _prompt(passkey_prompts)
    assert policy_query_window(IceCache.for_model(model, selector="icecache", budget=128).policy) == 0
    cache = IceCache.for_model(model, selector="icecache", budget=128,
                               options={"selector": {"prompt_queries": 64}})
    window = policy_query_window(cache.policy)
    assert window == 64
    seen.clear()
    model.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False, past_key_values=cache)
    live = {layer: qs[-1] for layer, qs in seen.items()}
    sparse = [i for i, layer in enumerate(cache.layers) if not layer.dense]
    assert sorted(live) == sparse
    geo = cache.policy.config.geometry
    for q in live.values():
        assert q is not None and q.shape == (1, geo.num_q_heads, window, geo.head_dim)
    seen.clear()
    snapshot = prefill_snapshot(model, [ids], query_window=window)
    IceCache.from_snapshot(snapshot, cache.policy)
    for layer, qs in seen.items():
        torch.testing.assert_close(qs[-1], live[layer], rtol=1e-4, atol=1e-4)
    assert snapshot.queries[0].shape == (1, geo.num_q_heads, window, geo.head_dim)


def test_a_left_padded_snapshot_zeroes_the_padding_queries(model_and_tokenizer, passkey_prompts):
    model, _ = model_and_tokenizer
    long, short = _prompt(passkey_prompts), _prompt(passkey_prompts)[:20]
    snapshot = prefill_snapshot(model, [long, short], query_window=32)
    q = snapshot.queries[3]  # [2, H_q, 32, D]
    assert q.shape[2] == 32
    assert bool((q[1, :, :12] == 0).all()) and bool((q[1, :, 12:].abs().sum(-1) > 0).all())
    assert bool((q[0].abs().sum(-1) > 0).all())


@pytest.mark.parametrize("command", ["run", "eval"])
def test_run_and_eval_hand_a_selector_its_prompt_queries(tmp_path, seen, command):
    # NOTE: snapkv, whose observation window (32 queries) is on by default; run has no --policy-options
    if command == "run":
        argv = ["run", "--out", str(tmp_path / "run"), "--context", "300", "--samples", "1",
                "--tasks", "passkey", "--policies", "snapkv@64", "--no-progress"]
    else:
        path = tmp_path / "tasks.jsonl"
        context = "The grass is green. " * 20 + "The code word is amber. " + "The sky is blue. " * 20
        path.write_text(json.dumps({"id": "s0", "context": context, "question": "What is the code word?",
                                    "answers": ["amber"], "max_new_tokens": 2}) + "\n")
        argv = ["eval", "--tasks-file", str(path), "--policy", "snapkv", "--budget", "64",
                "--json", str(tmp_path / "r.json"), "--no-progress"]
    assert main(argv) == 0
    assert seen, "no selector was prefilled"
    for layer, qs in seen.items():
        assert all(q is not None and q.shape[2] == 32 for q in qs), layer


def test_the_continuation_bench_hands_a_selector_its_prompt_queries(tmp_path, seen):
    argv = ["bench", "continuation", "--policy", "snapkv@64", "--prompt-tokens", "128",
            "--continuation-tokens", "4", "--docs", "1", "--json", str(tmp_path / "c.json"), "--no-progress"]
    assert main(argv) == 0
    assert seen, "no selector was prefilled"
    for layer, qs in seen.items():
        assert all(q is not None and q.shape[2] == 32 for q in qs), layer


@pytest.mark.parametrize("selector", ["snapkv", "pqcache", "magicpig", "shadowkv", "omnikv"])
def test_every_baseline_decodes_through_the_hf_path(model_and_tokenizer, passkey_prompts, selector, seen):
    model, _ = model_and_tokenizer
    ids = _prompt(passkey_prompts)
    cache = IceCache.for_model(model, selector=selector, budget=64)
    out = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, past_key_values=cache)
    assert out.shape[1] == len(ids) + 3
    window = policy_query_window(cache.policy)
    assert window == (32 if selector == "snapkv" else 0)
    for qs in seen.values():
        assert (qs[-1] is None) == (window == 0)
    ledgers = [layer.last_selection.ledger for layer in cache.layers if not layer.dense]
    if selector == "omnikv":  # the filter layers attend everything, the others their budget
        assert any(ledger.dense for ledger in ledgers) and not all(ledger.dense for ledger in ledgers)
    for ledger in ledgers:
        assert ledger.dense or int(ledger.total.max()) <= 64


def test_a_selector_that_asks_gets_each_steps_attention_in_generate(model_and_tokenizer, passkey_prompts):
    model, _ = model_and_tokenizer
    ids = _prompt(passkey_prompts)
    cache = IceCache.for_model(model, selector="h2o", budget=64, options={"selector": {"window": 0}})
    model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, past_key_values=cache)
    geo = cache.policy.config.geometry
    group = geo.num_q_heads // geo.num_kv_heads
    for layer in cache.layers:
        if not layer.dense:
            # two decode steps after the prefill, each head's weights summing to one
            total = layer.selector._mass.sum(-1)
            torch.testing.assert_close(total, torch.full_like(total, 2.0 * group))


class _FeedbackQuest(QuestSelector):
    wants_feedback = True

    def observe(self, feedback):
        self.fed = [*getattr(self, "fed", []), feedback]


class _Plugin:
    @hookimpl
    def icecache_register_selectors(self, register):
        register("feedback-quest", lambda config, **kw: _FeedbackQuest(config=config, **kw),
                 description="quest that records its feedback (test)")


def test_the_paged_path_feeds_back_the_selected_tokens(model_and_tokenizer, passkey_prompts):
    model, _ = model_and_tokenizer
    ids = _prompt(passkey_prompts)
    config = CacheConfig.from_model_config(model.config, budget=64)
    policy = compose_policy(selector="feedback-quest", config=config,
                            plugin_manager=get_plugin_manager(extra=(_Plugin(),)))
    cache = IceCache(policy, model.config.num_hidden_layers)
    model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, past_key_values=cache)
    layer = cache.layers[-1]
    assert len(layer.selector.fed) == 2
    fb = layer.selector.fed[-1]
    assert torch.equal(fb.token_ids, layer.last_selection.token_ids)
    torch.testing.assert_close(fb.weights.sum(-1), torch.ones_like(fb.weights.sum(-1)))


@pytest.fixture
def head_budgets(monkeypatch):
    """``{layer_idx: [head budgets or None]}`` set by every selector prefill while the test runs."""
    got = {}
    real = SelectorBase.prefill

    @functools.wraps(real)  # NOTE: keeps the signature runners inspect for ``budget_queries=``
    def spy(self, keys, **kwargs):
        real(self, keys, **kwargs)
        got.setdefault(self.layer_idx, []).append(self.head_budgets)

    monkeypatch.setattr(SelectorBase, "prefill", spy)
    return got


def test_eval_hands_adakv_its_window_whatever_the_selector_asks(tmp_path, head_budgets):
    # NOTE: adakv read a snapshot's window as if it held every prompt query (a reshape of an empty tensor
    # with h2o), and icecache (prompt_queries=0) asked for none, so its heads silently stayed uniform
    path = tmp_path / "tasks.jsonl"
    context = "The grass is green. " * 20 + "The code word is amber. " + "The sky is blue. " * 20
    path.write_text(json.dumps({"id": "s0", "context": context, "question": "What is the code word?",
                                "answers": ["amber"], "max_new_tokens": 2}) + "\n")
    argv = ["eval", "--tasks-file", str(path), "--policy", "icecache,h2o", "--budget", "64",
            "--budget-policy", "adakv", "--json", str(tmp_path / "r.json"), "--no-progress"]
    assert main(argv) == 0
    assert head_budgets, "no selector was prefilled"
    for layer, budgets in head_budgets.items():
        assert len(budgets) == 2 and all(b is not None for b in budgets), layer
        assert all(int(b.sum(-1).max()) <= 64 * b.shape[1] for b in budgets), layer
    assert any(int(b.max()) > 64 for budgets in head_budgets.values() for b in budgets)


def test_generate_and_snapshot_give_adakv_the_same_head_budgets(model_and_tokenizer, passkey_prompts,
                                                                head_budgets):
    model, _ = model_and_tokenizer
    ids = _prompt(passkey_prompts)
    cache = IceCache.for_model(model, selector="icecache", budget=64, budget_policy="adakv")
    window = policy_query_window(cache.policy)
    assert window == 32
    model.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False, past_key_values=cache)
    live = {layer: b[-1] for layer, b in head_budgets.items()}
    assert live and all(b is not None for b in live.values())
    head_budgets.clear()
    IceCache.from_snapshot(prefill_snapshot(model, [ids], query_window=window), cache.policy)
    for layer, b in head_budgets.items():
        assert torch.equal(b[-1], live[layer]), layer


def test_a_snapshot_without_the_queries_a_selector_asks_for_is_refused_by_name(model_and_tokenizer,
                                                                                passkey_prompts):
    """SnapKV from a snapshot with no prompt queries would vote with nothing (recency): refused, unless
    the caller says so; with the window it asks for, the cache builds."""
    model, _ = model_and_tokenizer
    ids = [passkey_prompts[0][1]]
    policy = IceCache.for_model(model, selector="snapkv", budget=128).policy
    bare = prefill_snapshot(model, ids)
    with pytest.raises(ConfigError, match=r"'snapkv' wants the prompt's last 32 queries.*holds 0"):
        IceCache.from_snapshot(bare, policy)
    IceCache.from_snapshot(bare, policy, fewer_queries=True).close()
    short = prefill_snapshot(model, ids, query_window=8)
    with pytest.raises(ConfigError, match="holds 8"):
        IceCache.from_snapshot(short, policy)
    ok = prefill_snapshot(model, ids, query_window=policy_query_window(policy))
    cache = IceCache.from_snapshot(ok, policy)
    assert cache.layers[-1].selector.prompt_query_window == 32
    cache.close()
