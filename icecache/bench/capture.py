"""Capture real decode-time queries and post-RoPE keys/values of every layer of a llama-family model.

A custom attention function (registered through transformers' ``AttentionInterface``) records what
each layer's attention receives, then runs the stock SDPA attention, so the model computes exactly
what it would otherwise. The prompt is prefilled, then ``decode_steps`` answer tokens are decoded
greedily and their queries recorded: the queries a selector will actually see.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

import torch
from attrs import define, field, frozen
from torch import Tensor

ATTN_NAME = "icecache_capture"
_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("icecache_capture", default=None)


@frozen(kw_only=True)
class Capture:
    """What a model's attention saw for one prompt (batch of one).

    * ``keys`` / ``values``: float32 ``[L, H_kv, N + T, D]``, post-RoPE, prompt then decoded tokens;
    * ``decode_queries``: float32 ``[L, H_q, T, D]``: the query of decode step ``t`` sits at position
      ``N + t`` and attends keys ``0 .. N + t``;
    * ``prompt_queries``: float16 ``[L, H_q, N, D]`` or None (for selectors that use them, InfLLM);
    * ``prompt_len`` ``N``, ``prefill_seconds`` (wall time of the prompt's forward pass), ``answer``.
    """

    keys: Tensor
    values: Tensor
    decode_queries: Tensor
    prompt_queries: Tensor | None
    prompt_len: int
    prefill_seconds: float
    answer: str = ""
    meta: dict[str, Any] = field(factory=dict)

    @property
    def num_layers(self) -> int:
        return self.keys.shape[0]

    @property
    def decode_steps(self) -> int:
        return self.decode_queries.shape[2]


@define
class _Recorder:
    keep_prompt_queries: bool
    layers: dict[int, dict[str, list[Tensor]]] = field(factory=dict)

    def record(self, layer: int, query: Tensor, key: Tensor, value: Tensor) -> None:
        slot = self.layers.setdefault(layer, {"k": [], "v": [], "q": [], "pq": []})
        q_len = query.shape[2]
        if not slot["k"]:  # prefill: the whole prompt
            slot["k"].append(key[0].float().clone())
            slot["v"].append(value[0].float().clone())
            if self.keep_prompt_queries:
                slot["pq"].append(query[0].to(torch.float16))
        else:  # decode: the new position(s) only
            slot["k"].append(key[0, :, -q_len:].float().clone())
            slot["v"].append(value[0, :, -q_len:].float().clone())
            slot["q"].append(query[0].float().clone())


def _capture_attention(
    module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[Tensor, Any]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.record(module.layer_idx, query, key, value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _capture_attention)


@torch.inference_mode()
def capture(
    model: Any,
    input_ids: list[int] | Tensor,
    *,
    decode_steps: int = 4,
    keep_prompt_queries: bool = True,
    tokenizer: Any = None,
) -> Capture:
    """Prefill ``input_ids`` (one prompt) and greedily decode ``decode_steps`` tokens, recording every
    layer's queries, keys and values. The model's attention implementation is restored afterwards."""
    from icecache.integrations.hf.compat import output_cache, with_cache

    ids = torch.as_tensor(input_ids, dtype=torch.long).view(1, -1).to(model.device)
    _register()
    previous = model.config._attn_implementation
    recorder = _Recorder(keep_prompt_queries=keep_prompt_queries)
    token = _RECORDER.set(recorder)
    model.set_attn_implementation(ATTN_NAME)
    try:
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill = time.perf_counter() - t0
        cache, generated = output_cache(out), []
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(decode_steps):
            generated.append(int(nxt))
            out = model(input_ids=nxt, **with_cache(model, cache), use_cache=True)
            cache = output_cache(out)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    finally:
        _RECORDER.reset(token)
        model.set_attn_implementation(previous)
    layers = [recorder.layers[i] for i in sorted(recorder.layers)]
    keys = torch.stack([torch.cat(s["k"], dim=1) for s in layers])  # [L, H_kv, N + T, D]
    values = torch.stack([torch.cat(s["v"], dim=1) for s in layers])
    queries = (
        torch.stack([torch.cat(s["q"], dim=1) for s in layers])
        if decode_steps
        else keys.new_zeros(len(layers), model.config.num_attention_heads, 0, keys.shape[-1])
    )
    prompt_q = torch.stack([s["pq"][0] for s in layers]) if keep_prompt_queries else None
    answer = tokenizer.decode(generated) if tokenizer is not None else ""
    return Capture(
        keys=keys,
        values=values,
        decode_queries=queries,
        prompt_queries=prompt_q,
        prompt_len=ids.shape[1],
        prefill_seconds=prefill,
        answer=answer,
    )


def niah_prompt(
    tokenizer: Any, context: int, *, seed: int = 0, task: str = "niah_multikey"
) -> tuple[list[int], Any]:
    """Token ids of a RULER-style needle-in-a-haystack prompt over ``pydoc_data`` prose that fits in
    ``context`` tokens (see :mod:`icecache.tasks.niah`), and its sample (answers in ``sample.answers``)."""
    from icecache.tasks.registry import generate_task
    from icecache.tasks.sample import prompt_ids

    sample = generate_task(task, n=1, context=context, tokenizer=tokenizer, seed=seed)[0]
    return prompt_ids(tokenizer, sample), sample
