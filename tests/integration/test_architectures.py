"""Every decoder layer type transformers has, on tiny random models (no download): a budget covering the
context reproduces dense generation (tokens, and logits within 1e-5 in float32) through
``model.generate(past_key_values=IceCache)``; a small budget runs, and sliding-window layers hold only
their window."""

import pytest
import torch
from tiny_models import ARCHITECTURES, WINDOW, available, tiny_model

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError
from icecache.core.policy import compose_policy
from icecache.integrations.hf import IceCache, decode, prefill_snapshot, use_icecache
from icecache.integrations.hf.compat import with_cache
from icecache.integrations.hf.features import attention_features

PROMPT, NEW = 36, 6
PRESENT = available()
NAMES = [pytest.param(n, marks=pytest.mark.skipif(not PRESENT[n], reason="not in this transformers"))
         for n in ARCHITECTURES]


def _generate(model, ids, cache=None):
    extra = {} if cache is None else with_cache(model, cache)
    out = model.generate(ids, max_new_tokens=NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, **extra)
    return out.sequences[0, ids.shape[1]:].tolist(), torch.stack(out.logits)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(3, 256, (1, PROMPT), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", NAMES)
def test_budget_covering_the_context_reproduces_dense_generation(name, prompt):
    model = tiny_model(name)
    want_tokens, want_logits = _generate(model, prompt)  # transformers' own attention and cache
    use_icecache(model)
    features = attention_features(model)
    for selector in ("full", "icecache"):
        cache = IceCache.for_model(model, selector, budget=64, dense_layers=0, page_size=4)
        tokens, logits = _generate(model, prompt, cache)
        assert tokens == want_tokens, (selector, features.describe())
        torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-5)
        for layer, window in zip(cache.layers, features.windows, strict=True):
            assert layer.is_sliding == (window is not None)
            if window is not None:  # the window cache stays O(window): no selection, no pages
                assert layer.win.keys.shape[2] == window - 1 and layer.sparse is None
            elif selector == "icecache":  # every position attended: sinks + window + selected pages
                assert int(layer.last_selection.ledger.total.min()) == PROMPT + NEW - 1


@pytest.mark.parametrize("name", [n for n in ("gemma2", "gpt-oss", "gemma3") if PRESENT[n]])
@pytest.mark.parametrize("selector,paged", [("oracle", True), ("icecache", False)])
def test_gathered_token_path_keeps_softcap_and_sinks(name, selector, paged, prompt):
    """Token-level selectors (and ``paged=False``) gather the chosen tokens and attend them densely."""
    model = tiny_model(name)
    want_tokens, want_logits = _generate(model, prompt)
    use_icecache(model)
    cache = IceCache.for_model(model, selector, budget=64, dense_layers=0, page_size=4)
    cache.paged = paged
    tokens, logits = _generate(model, prompt, cache)
    assert tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-5)
    assert cache.memory_report()["device"].get("working_set", 0) > 0  # the gathered path ran


@pytest.mark.parametrize("name", NAMES)
def test_a_small_budget_runs(name, prompt):
    model = use_icecache(tiny_model(name))
    cache = IceCache.for_model(model, "icecache", budget=16, dense_layers=0, page_size=4)
    tokens, logits = _generate(model, prompt, cache)
    assert len(tokens) == NEW and bool(torch.isfinite(logits).all())
    global_layers = [layer for layer in cache.layers if layer.window is None]
    for layer in global_layers:  # the budget holds: fewer positions attended than the context
        assert int(layer.last_selection.ledger.total.max()) <= 16 < PROMPT
    report = cache.memory_report()
    assert report["device"].get("window_kv", 0) > 0 or len(global_layers) == len(cache.layers)


def test_a_cache_built_without_the_windows_is_refused_not_run_wrong(prompt):
    """A cache whose layers disagree with the model's windows stops at the first attention call."""
    model = use_icecache(tiny_model("gemma2"))
    right = IceCache.for_model(model, "full", budget=64)
    wrong = IceCache(right.policy, len(right.layers))  # every layer full-context
    with pytest.raises(ConfigError, match=f"sliding_window={WINDOW}"):
        _generate(model, prompt, wrong)


@pytest.mark.parametrize("name", [n for n in ("gemma2", "gpt-oss") if PRESENT[n]])
def test_left_padded_snapshot_batch_decodes_like_each_prompt_alone(name):
    """The eval path: one left-padded snapshot of two prompts, window layers masking the padding."""
    model = use_icecache(tiny_model(name))
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (PROMPT, PROMPT - 9)]
    want = [_generate(model, torch.tensor([p]))[0] for p in prompts]
    snapshot = prefill_snapshot(model, prompts, query_window=64)
    assert snapshot.windows == attention_features(model).windows
    config = CacheConfig.from_model_config(model.config, budget=64, dense_layers=0, page_size=4)
    cache = IceCache.from_snapshot(snapshot, compose_policy(selector="icecache", config=config))
    assert decode(model, cache, snapshot, NEW) == want
