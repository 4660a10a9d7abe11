"""The IceCache on CUDA (Triton kernels, device page pool, pinned host tier), on a small randomly
initialised llama model so no weights need to travel. Run with ``pytest -m gpu``."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from icecache.integrations.hf import use_icecache

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).to("cuda", torch.float32).eval()
    use_icecache(model)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (900,), generator=gen).tolist(),
               torch.randint(0, 512, (700,), generator=gen).tolist()]
    return model, prompts


def _dense(model, ids, new=10):
    out = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=new, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("selector", ["icecache", "quest"])
def test_cuda_budget_covering_context_matches_dense(tiny, selector):
    from icecache.integrations.hf import IceCache

    model, prompts = tiny
    ref = _dense(model, prompts[0])
    cache = IceCache.for_model(model, selector=selector, budget=2048)
    out = model.generate(torch.tensor([prompts[0]], device="cuda"), max_new_tokens=10, do_sample=False,
                         past_key_values=cache)
    assert out[0, len(prompts[0]):].tolist() == ref
    layer = cache.layers[-1]
    assert layer.sparse is not None and cache.store.device_pool.k.is_cuda
    assert cache.kernels.name == "triton"


def test_cuda_sparse_batch_two_equals_batch_one_and_reports(tiny):
    from icecache.integrations.hf import IceCache, decode, prefill_snapshot
    from icecache.selectors.plumbing.prompt_queries import policy_query_window

    model, prompts = tiny
    policy = IceCache.for_model(model, selector="icecache", budget=128).policy
    window = policy_query_window(policy)
    snap = prefill_snapshot(model, prompts, query_window=window)
    cache = IceCache.from_snapshot(snap, policy)
    both = decode(model, cache, snap, 12)
    singles = []
    for p in prompts:
        s = prefill_snapshot(model, [p], query_window=window)
        singles.append(decode(model, IceCache.from_snapshot(s, policy), s, 12)[0])
    assert both == singles
    steps = cache.timings.mean(skip=1)
    assert steps["index_query"] > 0 and steps["page_load"] > 0 and steps["attention"] > 0
    report = cache.memory_report()
    assert 0 < report["device_fraction"] < 1
    sel = cache.layers[-1].last_selection
    assert int(sel.ledger.total.max()) <= 128
