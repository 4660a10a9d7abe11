"""Small attention helpers in torch, used for dense decode and the sink/window part of sparse decode."""

from __future__ import annotations

import torch
from torch import Tensor


def attend_with_lse(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None,
                    scale: float, softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """GQA attention of one decode position.

    ``query`` ``[B, H_kv, G, D]``; ``keys``/``values`` ``[B, H_kv, T, D]``; ``mask`` bool
    ``[B, H_kv, T]`` (True = attend) or ``None``; ``softcap``: scores become ``cap * tanh(s / cap)``
    (Gemma 2). Returns ``out`` ``[B, H_kv, G, D]`` (query dtype) and ``lse`` ``[B, H_kv, G]`` float32
    (``-inf`` where a row attends nothing, with ``out = 0``).
    """
    scores = torch.matmul(query.float(), keys.float().transpose(-1, -2)) * scale  # [B, H_kv, G, T]
    scores = cap_scores(scores, softcap)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, H_kv, G]
    finite = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(finite, lse, 0.0)[..., None])
    out = torch.matmul(probs, values.float())  # [B, H_kv, G, D]
    out = torch.where(finite[..., None], out, 0.0)
    return out.to(query.dtype), lse


def merge_states(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Combine attention over two disjoint key sets (``o`` ``[..., D]``, ``lse`` ``[...]`` float32)."""
    lse = torch.logaddexp(lse1, lse2)
    safe = torch.where(torch.isfinite(lse), lse, 0.0)
    w1 = torch.exp(lse1 - safe)[..., None]
    w2 = torch.exp(lse2 - safe)[..., None]
    out = o1.float() * w1 + o2.float() * w2
    return out.to(o1.dtype), lse


def cap_scores(scores: Tensor, softcap: float | None) -> Tensor:
    """Attention logit softcapping, ``cap * tanh(scores / cap)`` (Gemma 2; https://arxiv.org/abs/2408.00118)."""
    return scores if softcap is None else torch.tanh(scores / softcap) * softcap


def apply_sinks(out: Tensor, lse: Tensor, sinks: Tensor | None) -> Tensor:
    """Add attention sinks to finished attention: a learned logit per query head that joins the softmax
    denominator with a zero value (GPT-OSS ``s_aux``; https://arxiv.org/abs/2309.17453 for sinks).

    ``out`` ``[..., H_q, D]`` and ``lse`` ``[..., H_q]`` (float32) over every attended key; ``sinks``
    ``[H_q]``. The sink acts as one more key set with ``lse = sink`` and ``out = 0``, so
    ``out * exp(lse) / (exp(lse) + exp(sink)) = out * sigmoid(lse - sink)``."""
    if sinks is None:
        return out
    weight = torch.sigmoid(lse - sinks.to(lse.device, torch.float32))  # [..., H_q]; 0 where lse = -inf
    return (out.float() * weight[..., None]).to(out.dtype)


def eager_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float, *,
                    softcap: float | None = None, sinks: Tensor | None = None) -> Tensor:
    """Plain attention of several query positions, with what SDPA lacks (softcap, sinks).

    ``query`` ``[B, H_q, q, D]``, ``key``/``value`` ``[B, H_kv, kv, D]``; ``mask`` ``[B, 1|H, q, kv]``
    bool (True = attend) or additive float, or ``None`` for causal attention aligned to the last key.
    Returns ``[B, q, H_q, D]`` (the layout transformers' attention functions return)."""
    B, H_q, q, D = query.shape
    H_kv, kv = key.shape[1], key.shape[2]
    qg = query.reshape(B, H_kv, H_q // H_kv, q, D).float()  # [B, H_kv, G, q, D]
    scores = torch.einsum("bhgqd,bhkd->bhgqk", qg, key.float()) * scale  # [B, H_kv, G, q, kv]
    scores = cap_scores(scores, softcap).reshape(B, H_q, q, kv)
    if mask is None:
        rows = torch.arange(q, device=query.device)[:, None] + (kv - q)
        scores = scores.masked_fill(torch.arange(kv, device=query.device)[None, :] > rows, float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[..., :kv], float("-inf"))
    else:
        scores = scores + mask[..., :kv].float()
    lse = torch.logsumexp(scores, dim=-1)  # [B, H_q, q]
    finite = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(finite, lse, 0.0)[..., None])
    out = torch.einsum("bhqk,bhkd->bhqd", probs.reshape(B, H_kv, -1, kv), value.float()).reshape(B, H_q, q, D)
    out = torch.where(finite[..., None], out, 0.0).transpose(1, 2)  # [B, q, H_q, D]
    return apply_sinks(out, lse.transpose(1, 2), sinks).to(query.dtype)
