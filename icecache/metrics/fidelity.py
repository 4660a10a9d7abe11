"""How much of dense attention a selection keeps: attention recall, oracle recall, output error."""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.core.errors import TensorSpecError
from icecache.metrics.attention import masked_attention_output


def _group(per_q_head: Tensor, num_kv_heads: int) -> Tensor:
    """``[B, H_q]`` -> mean over each GQA group, ``[B, H_kv]``."""
    B, Hq = per_q_head.shape
    return per_q_head.view(B, num_kv_heads, Hq // num_kv_heads).mean(-1)


def attention_recall(probs: Tensor, mask: Tensor, *, per_query_head: bool = False) -> Tensor:
    """Dense attention mass on the attended tokens.

    ``probs``: float ``[B, H_q, N]`` dense softmax weights; ``mask``: bool ``[B, H_kv, N]`` attended
    tokens. Returns float ``[B, H_kv]`` (mean over the group's query heads) or ``[B, H_q]``.
    """
    B, Hq, N = probs.shape
    if mask.dim() != 3 or mask.shape[0] != B or mask.shape[2] != N or Hq % mask.shape[1]:
        raise TensorSpecError(f"mask {tuple(mask.shape)} does not match probs {tuple(probs.shape)}")
    G = Hq // mask.shape[1]
    covered = (probs * mask.repeat_interleave(G, dim=1)).sum(-1)  # [B, H_q]
    return covered if per_query_head else _group(covered, mask.shape[1])


def oracle_mask(probs: Tensor, forced: Tensor, candidates: Tensor, k: Tensor | int) -> Tensor:
    """The oracle selection: ``forced`` tokens plus the ``k`` candidate tokens with the most attention
    summed over each GQA group (the size-``k`` choice maximizing group-mean attention recall).

    ``probs``: float ``[B, H_q, N]``; ``forced`` / ``candidates``: bool ``[B, H_kv, N]``;
    ``k``: int or int64 ``[B, H_kv]``. Returns bool ``[B, H_kv, N]``.
    """
    B, Hq, N = probs.shape
    H = forced.shape[1]
    merged = probs.view(B, H, Hq // H, N).sum(2)  # [B, H_kv, N]
    score = torch.where(candidates & ~forced, merged, float("-inf"))
    k = torch.as_tensor(k, device=probs.device).expand(B, H)
    kmax = min(int(k.max()), N) if k.numel() else 0
    out = forced.clone()
    if kmax > 0:
        vals, idx = score.topk(kmax, dim=-1)
        keep = torch.isfinite(vals) & (torch.arange(kmax, device=probs.device) < k[..., None])
        hit = torch.zeros(B, H, N + 1, dtype=torch.bool, device=probs.device)
        hit.scatter_(2, torch.where(keep, idx, N), True)
        out |= hit[..., :N]
    return out


def oracle_recall(mask: Tensor, oracle: Tensor) -> Tensor:
    """Fraction of the oracle's tokens that ``mask`` attends: float ``[B, H_kv]`` (1 where the oracle
    set is empty). Both bool ``[B, H_kv, N]``."""
    if mask.shape != oracle.shape:
        raise TensorSpecError(f"mask {tuple(mask.shape)} and oracle {tuple(oracle.shape)} differ in shape")
    size = oracle.sum(-1)
    hit = (mask & oracle).sum(-1)
    return torch.where(size > 0, hit.float() / size.clamp(min=1), torch.ones_like(hit, dtype=torch.float32))


def output_rel_error(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    start: Tensor | None = None,
    scale: float | None = None,
    per_query_head: bool = False,
) -> Tensor:
    """``|o_sparse - o_dense| / |o_dense|`` of the attention output, sparse attention restricted to
    ``mask`` bool ``[B, H_kv, N]``. Returns float ``[B, H_kv]`` (group mean) or ``[B, H_q]``."""
    dense = masked_attention_output(query, keys, values, None, start=start, scale=scale)
    sparse = masked_attention_output(query, keys, values, mask, start=start, scale=scale)
    err = (sparse - dense).norm(dim=-1) / dense.norm(dim=-1).clamp(min=1e-30)  # [B, H_q]
    return err if per_query_head else _group(err, keys.shape[1])
