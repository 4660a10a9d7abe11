import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from icecache.integrations.hf.loader import resolve_checkpoint

    return AutoTokenizer.from_pretrained(resolve_checkpoint())
