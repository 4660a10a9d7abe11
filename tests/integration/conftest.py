import pytest


@pytest.fixture(scope="session")
def model_and_tokenizer():
    """The embedded model (converted copy cached on first use), loaded once per test session."""
    import torch

    from icecache.integrations.hf import load_model, use_icecache

    torch.manual_seed(0)
    model, tokenizer = load_model()
    use_icecache(model)
    return model, tokenizer


@pytest.fixture(scope="session")
def passkey_prompts(model_and_tokenizer):
    """Two passkey prompts of different lengths (~600 and ~520 tokens) and their answers."""
    from icecache.tasks import generate_task, prompt_ids

    _, tokenizer = model_and_tokenizer
    samples = generate_task("passkey", n=2, context=600, tokenizer=tokenizer, seed=11)
    samples[1] = generate_task("passkey", n=1, context=520, tokenizer=tokenizer, seed=12)[0]
    return [prompt_ids(tokenizer, s) for s in samples], [s.answers[0] for s in samples]


@pytest.fixture(scope="session")
def snapshot(model_and_tokenizer, passkey_prompts):
    """The dense prefill of both passkey prompts (a left-padded batch of two), with the prompt's last 64
    queries (what the tests' policies ask for at most: ``IceCache.from_snapshot`` refuses fewer)."""
    from icecache.integrations.hf import prefill_snapshot

    model, _ = model_and_tokenizer
    return prefill_snapshot(model, passkey_prompts[0], query_window=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Decode is many small ops: one thread is faster than two on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
