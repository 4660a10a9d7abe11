"""Named model shapes for timing: a randomly initialised llama-family model and a synthetic prefill.

A shape times the decode step of a real architecture at contexts its checkpoint (or this machine) cannot
prefill: the weights are random, the positions are extended for timing only, and the prompt's K/V are
clustered random keys (:func:`~icecache.testing.synthetic.make_clustered_kv`), the same in every layer.
Nothing is downloaded. The tokens decoded mean nothing; the step's cost is that of the architecture.
"""

from __future__ import annotations

from typing import Any

import torch

from icecache.core.errors import ConfigError

#: llama-family geometries (``transformers.LlamaConfig`` fields) by name
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.1-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "head_dim": 128, "tie_word_embeddings": False},
}


def check_shape(name: str, layers: int | None) -> None:
    if name not in SHAPES:
        raise ConfigError(f"unknown --shape {name!r}; known: {', '.join(sorted(SHAPES))}")
    if layers is not None and not 1 <= layers <= SHAPES[name]["num_hidden_layers"]:
        raise ConfigError(f"--layers must lie in [1, {SHAPES[name]['num_hidden_layers']}] for {name}, "
                          f"got {layers}")


def random_model(name: str, *, positions: int, layers: int | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """A llama model of shape ``name`` with random weights and ``positions`` RoPE positions, switched to
    the ``"icecache"`` attention. ``layers``: keep only the first ``layers`` (a per-layer cost stays)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from icecache.integrations.hf.attention import use_icecache

    check_shape(name, layers)
    fields = dict(SHAPES[name])
    if layers is not None:
        fields["num_hidden_layers"] = layers
    config = LlamaConfig(**fields, max_position_embeddings=positions, rope_theta=500000.0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    use_icecache(model)
    return model


def synthetic_snapshot(model: Any, batch: int, context: int, *, seed: int = 0, query_window: int = 0) -> Any:
    """A :class:`~icecache.integrations.hf.snapshot.PrefillSnapshot` of ``batch`` rows of ``context``
    clustered random keys (one tensor shared by every layer: its memory is one layer's). With
    ``query_window``, the last that many positions' queries too: each query head's own KV head's key
    at that position plus noise (queries that attend near their own keys, as a prompt's tail does)."""
    from icecache.integrations.hf.snapshot import PrefillSnapshot
    from icecache.testing.synthetic import make_clustered_kv

    cfg = model.config
    H = cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype, device = model.dtype, model.device
    kv = make_clustered_kv(batch, H, context, D, num_clusters=max(8, context // 512), spread=0.4, seed=seed)
    keys = kv.keys.to(device, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    values = torch.randn(batch, H, context, D, generator=gen).to(device, dtype)
    logits = torch.randn(batch, cfg.vocab_size, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    layers = cfg.num_hidden_layers
    queries = None
    if query_window > 0:
        W, group = min(query_window, context), cfg.num_attention_heads // H
        tail = kv.keys[:, :, context - W:].repeat_interleave(group, dim=1)  # [B, H_q, W, D]
        noise = torch.randn(tail.shape, generator=torch.Generator().manual_seed(seed + 3))
        queries = ((tail + 0.3 * noise).to(device, dtype),) * layers
    return PrefillSnapshot(keys=(keys,) * layers, values=(values,) * layers,
                           start=torch.zeros(batch, dtype=torch.int64),
                           lengths=torch.full((batch,), context, dtype=torch.int64), last_logits=logits,
                           queries=queries)
