"""Prefill once, decode many times: a snapshot of the prompt's KV that caches are built from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from icecache.core.errors import ConfigError


@frozen(kw_only=True)
class PrefillSnapshot:
    """The dense prefill of a left-padded batch.

    * ``keys`` / ``values``: one ``[B, H_kv, N, D]`` tensor per layer (post-RoPE keys), left padding
      zero-filled;
    * ``start``: int64 ``[B]``, first real position of each row (``N - length``);
    * ``lengths``: int64 ``[B]``, real prompt tokens per row (the next token's RoPE position);
    * ``last_logits``: float ``[B, V]``, logits after each prompt's last token;
    * ``windows``: each layer's sliding window (``None``: full context), as the model attends; a cache
      built from the snapshot keeps only the window of such layers.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    start: Tensor
    lengths: Tensor
    last_logits: Tensor
    windows: tuple[int | None, ...] | None = None

    @property
    def num_positions(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@torch.inference_mode()
def prefill_snapshot(model: Any, prompts: Sequence[Sequence[int]], *, max_positions: int | None = None
                     ) -> PrefillSnapshot:
    """Run the model densely over each prompt (one at a time, so no compute is spent on padding) and
    stack the results left-padded. ``prompts``: token id lists. The attention implementation in use
    must be dense for the prefill (SDPA, or ``"icecache"`` without an IceCache)."""
    from transformers import DynamicCache

    from icecache.integrations.hf.compat import with_cache
    from icecache.integrations.hf.features import attention_features

    if not prompts:
        raise ConfigError("no prompts to prefill")
    limit = max_positions or getattr(model.config, "max_position_embeddings", None)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty")
        if limit is not None and len(p) >= limit:
            raise ConfigError(f"prompt {i} has {len(p)} tokens; the model has {limit} positions "
                              f"(prompt plus at least one generated token must fit)")
    windows = attention_features(model).windows
    device = model.device
    per_prompt = []
    for p in prompts:
        # NOTE: no config, so sliding-window layers keep every position too (the rows are stacked by
        # position below; caches built from the snapshot keep only the windows).
        cache = DynamicCache()
        ids = torch.tensor([list(p)], dtype=torch.long, device=device)
        out = model(input_ids=ids, **with_cache(model, cache), use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        per_prompt.append((kv, out.logits[:, -1].float()))
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
    N = int(lengths.max())
    keys, values = [], []
    for layer_idx in range(len(per_prompt[0][0])):
        k0 = per_prompt[0][0][layer_idx][0]
        shape = (len(prompts), k0.shape[1], N, k0.shape[3])
        k = torch.zeros(shape, dtype=k0.dtype, device=device)
        v = torch.zeros(shape, dtype=k0.dtype, device=device)
        for b, (kv, _) in enumerate(per_prompt):
            n = kv[layer_idx][0].shape[2]
            k[b, :, N - n:] = kv[layer_idx][0][0]
            v[b, :, N - n:] = kv[layer_idx][1][0]
        keys.append(k)
        values.append(v)
    return PrefillSnapshot(keys=tuple(keys), values=tuple(values), start=N - lengths, lengths=lengths,
                           last_logits=torch.cat([lg for _, lg in per_prompt], dim=0), windows=windows)
