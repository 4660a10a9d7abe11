"""faiss-ivf inside the real model: the icecache selector with index=faiss-ivf answers a passkey prompt."""

import pytest
import torch

pytestmark = pytest.mark.model
pytest.importorskip("faiss")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_and_prompt():
    from icecache.core.errors import ConfigError
    from icecache.integrations.hf import load_model, use_icecache
    from icecache.tasks import generate_task, prompt_ids

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # NOTE: decode is many small ops: one thread is faster on a busy 2-core box
    try:
        model, tokenizer = load_model()
    except ConfigError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"embedded model unavailable: {exc}")
    use_icecache(model)
    sample = generate_task("passkey", n=1, context=600, tokenizer=tokenizer, seed=11)[0]
    yield model, tokenizer, prompt_ids(tokenizer, sample), sample.answers[0]
    torch.set_num_threads(before)


def test_icecache_with_faiss_ivf_answers_and_grows_its_index(model_and_prompt):
    from icecache.index.faiss_ivf.index import FaissIvfIndex
    from icecache.integrations.hf import IceCache

    model, tokenizer, ids, answer = model_and_prompt
    cache = IceCache.for_model(model, "icecache", budget=128,
                               options={"selector": {"index": "faiss-ivf", "index_options": {"threads": 1}}})
    out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, past_key_values=cache)
    text = tokenizer.decode(out[0, len(ids):])
    assert answer in text, (answer, text)
    layer = cache.layers[5]
    index = layer.selector.page_index
    assert isinstance(index, FaissIvfIndex)
    ledger = layer.last_selection.ledger
    assert int(ledger.total.max()) <= 128 and int(ledger.selected.min()) > 0  # pages were selected
    # tokens that left the window went into FAISS through add (24 decoded > the 16-token flush)
    held = index.num_tokens
    assert torch.equal(held.cpu(), torch.tensor([[index._lists.indexes[h].ntotal for h in range(3)]]))
    assert int(held.min()) > len(ids) - 4 - 60
    assert index.nbytes()["keys"] == 0  # it reads keys back through the layer's store, no copy of its own
