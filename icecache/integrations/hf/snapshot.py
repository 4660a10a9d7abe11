"""Prefill once, decode many times: a snapshot of the prompt's KV that caches are built from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from icecache.core.errors import ConfigError

#: the attention implementation that records the prompt's queries during a snapshot's prefill
RECORD_NAME = "icecache-snapshot"


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
    * ``queries``: one ``[B, H_q, W, D]`` tensor per layer, the post-RoPE queries of the last ``W``
      positions (the observation window selectors get at prefill; zeros at padding), or None.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    start: Tensor
    lengths: Tensor
    last_logits: Tensor
    windows: tuple[int | None, ...] | None = None
    queries: tuple[Tensor, ...] | None = None

    @property
    def num_positions(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, *(self.queries or ())))


@frozen
class _QueryRecord:
    window: int
    inner: Any  # the attention function the model used before
    queries: dict[int, Tensor]


_RECORD: ContextVar[_QueryRecord | None] = ContextVar("icecache_snapshot_queries", default=None)


def _recording_attention(module: Any, query: Tensor, *args: Any, **kwargs: Any) -> Any:
    """Attention that keeps the last ``window`` queries ``[1, H_q, W, D]`` of each layer, then runs the
    model's own attention function."""
    record = _RECORD.get()
    if record is not None:
        record.queries[module.layer_idx] = query[:, :, -record.window:].clone()
        return record.inner(module, query, *args, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, *args, **kwargs)


@contextmanager
def _record_queries(model: Any, window: int) -> Iterator[_QueryRecord | None]:
    """While active, the model's attention records each layer's last ``window`` queries."""
    if window <= 0:
        yield None
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    previous = model.config._attn_implementation
    if previous not in ALL_ATTENTION_FUNCTIONS:
        raise ConfigError(f"recording the prompt's queries needs a registered attention implementation; "
                          f"the model uses {previous!r} (switch it with use_icecache(model))")
    AttentionInterface.register(RECORD_NAME, _recording_attention)
    if previous in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(RECORD_NAME, ALL_MASK_ATTENTION_FUNCTIONS[previous])
    record = _QueryRecord(window=window, inner=ALL_ATTENTION_FUNCTIONS[previous], queries={})
    token = _RECORD.set(record)
    model.set_attn_implementation(RECORD_NAME)
    try:
        yield record
    finally:
        _RECORD.reset(token)
        model.set_attn_implementation(previous)


@torch.inference_mode()
def prefill_snapshot(model: Any, prompts: Sequence[Sequence[int]], *, max_positions: int | None = None,
                     query_window: int = 0) -> PrefillSnapshot:
    """Run the model densely over each prompt (one at a time, so no compute is spent on padding) and
    stack the results left-padded. ``prompts``: token id lists. The attention implementation in use
    must be dense for the prefill (SDPA, or ``"icecache"`` without an IceCache). ``query_window``:
    keep each layer's queries of the last that many positions (what the selectors' ``prefill`` wants:
    :func:`~icecache.selectors.plumbing.prompt_queries.policy_query_window`; 0: none)."""
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
    per_prompt, per_prompt_q = [], []
    for p in prompts:
        # NOTE: no config, so sliding-window layers keep every position too (the rows are stacked by
        # position below; caches built from the snapshot keep only the windows).
        cache = DynamicCache()
        ids = torch.tensor([list(p)], dtype=torch.long, device=device)
        with _record_queries(model, query_window) as record:
            out = model(input_ids=ids, **with_cache(model, cache), use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        per_prompt.append((kv, out.logits[:, -1].float()))
        if record is not None:
            per_prompt_q.append([record.queries[i] for i in range(len(kv))])
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
    queries = None
    if per_prompt_q:
        W = min(query_window, N)
        queries = []
        for layer_idx in range(len(keys)):
            q0 = per_prompt_q[0][layer_idx]
            q = q0.new_zeros(len(prompts), q0.shape[1], W, q0.shape[3])  # [B, H_q, W, D], zeros at padding
            for b, per_layer in enumerate(per_prompt_q):
                n = per_layer[layer_idx].shape[2]
                q[b, :, W - n:] = per_layer[layer_idx][0]
            queries.append(q)
        queries = tuple(queries)
    return PrefillSnapshot(keys=tuple(keys), values=tuple(values), start=N - lengths, lengths=lengths,
                           last_logits=torch.cat([lg for _, lg in per_prompt], dim=0), windows=windows,
                           queries=queries)
