import json

import pytest


def task_row(i, **kw):
    context = "The grass is green. " * 20 + f"The code word is amber{i}. " + "The sky is blue. " * 20
    row = {"id": f"s{i}", "context": context, "question": "What is the code word?", "answers": [f"amber{i}"],
           "answer_prefix": "The code word is", "max_new_tokens": 4}
    row.update(kw)
    return json.dumps(row)


@pytest.fixture
def tasks_file(tmp_path):
    """Four short samples (one decode batch each at ``--batch-size 1``)."""
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(task_row(i) for i in range(4)) + "\n")
    return path


_MODELS = {}


@pytest.fixture(autouse=True)
def _load_the_model_once(monkeypatch):
    """In-process commands share one loaded model (each would reload it, ~2 s on 2 cores)."""
    import icecache.integrations.hf.loader as loader

    real = loader.load_model

    def cached(model=None, *, dtype="float32", device="cpu"):
        key = (str(model), str(dtype), str(device))
        if key not in _MODELS:
            _MODELS[key] = real(model, dtype=dtype, device=device)
        return _MODELS[key]

    monkeypatch.setattr(loader, "load_model", cached)
