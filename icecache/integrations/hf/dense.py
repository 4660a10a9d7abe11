"""Small attention helpers in torch, used for dense decode and the sink/window part of sparse decode."""

from __future__ import annotations

import torch
from torch import Tensor


def attend_with_lse(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None,
                    scale: float) -> tuple[Tensor, Tensor]:
    """GQA attention of one decode position.

    ``query`` ``[B, H_kv, G, D]``; ``keys``/``values`` ``[B, H_kv, T, D]``; ``mask`` bool
    ``[B, H_kv, T]`` (True = attend) or ``None``. Returns ``out`` ``[B, H_kv, G, D]`` (query dtype)
    and ``lse`` ``[B, H_kv, G]`` float32 (``-inf`` where a row attends nothing, with ``out = 0``).
    """
    scores = torch.matmul(query.float(), keys.float().transpose(-1, -2)) * scale  # [B, H_kv, G, T]
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
