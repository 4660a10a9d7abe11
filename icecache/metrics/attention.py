"""Dense reference attention for one decode query, in float64-safe torch."""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.core.errors import TensorSpecError


def _check(query: Tensor, keys: Tensor) -> tuple[int, int, int]:
    if query.dim() != 3 or keys.dim() != 4:
        raise TensorSpecError(
            f"query must be [B, H_q, D] and keys [B, H_kv, N, D], got "
            f"{tuple(query.shape)} and {tuple(keys.shape)}"
        )
    B, Hq, D = query.shape
    if keys.shape[0] != B or keys.shape[3] != D or Hq % keys.shape[1]:
        raise TensorSpecError(
            f"query {tuple(query.shape)} does not match keys {tuple(keys.shape)} "
            f"(same B and D, H_q a multiple of H_kv)"
        )
    return B, keys.shape[1], Hq // keys.shape[1]


def attention_logits(
    query: Tensor, keys: Tensor, *, start: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """``scale * q.k`` float32 ``[B, H_q, N]``; ``-inf`` at left padding (positions ``< start[b]``).

    ``query`` ``[B, H_q, D]``, ``keys`` ``[B, H_kv, N, D]`` (GQA: each KV head serves ``H_q/H_kv``
    consecutive query heads), ``start`` int64 ``[B]`` or None.
    """
    B, H, G = _check(query, keys)
    D, N = query.shape[-1], keys.shape[2]
    scale = D**-0.5 if scale is None else scale
    q = query.float().view(B, H, G, D)  # [B, H_kv, G, D]
    logits = torch.einsum("bhgd,bhnd->bhgn", q, keys.float()).reshape(B, H * G, N) * scale
    if start is not None:
        pad = torch.arange(N, device=keys.device)[None, :] < start.to(keys.device)[:, None]  # [B, N]
        logits = logits.masked_fill(pad[:, None], float("-inf"))
    return logits


def attention_probs(
    query: Tensor, keys: Tensor, *, start: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Dense softmax weights float32 ``[B, H_q, N]`` (zero at left padding)."""
    return torch.softmax(attention_logits(query, keys, start=start, scale=scale), dim=-1)


def masked_attention_output(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor | None = None,
    *,
    start: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Attention output float32 ``[B, H_q, D]`` over the tokens where ``mask`` bool ``[B, H_kv, N]``
    is True (None: all real tokens). ``values`` ``[B, H_kv, N, D]``."""
    B, H, G = _check(query, keys)
    logits = attention_logits(query, keys, start=start, scale=scale)  # [B, H_q, N]
    if mask is not None:
        m = mask.repeat_interleave(G, dim=1)  # [B, H_q, N]
        logits = logits.masked_fill(~m, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhgn,bhnd->bhgd", probs.view(B, H, G, -1), values.float())
    return out.reshape(B, H * G, -1)
