"""Session fixtures: one real-model capture shared by the integration tests of this folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm_capture():
    """Post-RoPE keys and decode queries of the embedded SmolLM2 on a ~1k-token multi-key NIAH prompt
    (2 decoded answer tokens). Skips when the embedded model is not installed."""
    pytest.importorskip("transformers")
    from icecache.bench.capture import capture, niah_prompt
    from icecache.core.errors import ConfigError
    from icecache.integrations.hf.loader import load_model

    try:
        model, tokenizer = load_model()
    except ConfigError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"embedded model unavailable: {exc}")
    ids, _ = niah_prompt(tokenizer, 1022)
    return capture(model, ids, decode_steps=2, tokenizer=tokenizer)
