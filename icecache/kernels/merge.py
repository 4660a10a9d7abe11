"""Merging attention states computed over disjoint key sets (torch; works on every device)."""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.core.errors import TensorSpecError


def merge_attention_states(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Attention over disjoint key sets ``A`` and ``B`` together, from each one's result.

    ``o1``/``o2`` ``[..., D]`` any float dtype; ``lse1``/``lse2`` ``[...]`` natural-log log-sum-exp
    (float32). A side with ``lse = -inf`` (no keys) contributes nothing; both empty gives ``o = 0``,
    ``lse = -inf``. Returns ``o`` in ``o1.dtype`` and ``lse`` float32.
    """
    if o1.shape != o2.shape or lse1.shape != lse2.shape or o1.shape[:-1] != lse1.shape:
        raise TensorSpecError(f"cannot merge o1 {tuple(o1.shape)}, lse1 {tuple(lse1.shape)}, "
                              f"o2 {tuple(o2.shape)}, lse2 {tuple(lse2.shape)}")
    l1, l2 = lse1.float(), lse2.float()
    m = torch.maximum(l1, l2)
    # NOTE: where both sides are empty m = -inf; shifting by 0 keeps the weights at exp(-inf) = 0.
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w1, w2 = torch.exp(l1 - m_safe), torch.exp(l2 - m_safe)
    total = w1 + w2
    denom = torch.where(total > 0, total, torch.ones_like(total))
    out = (o1.float() * (w1 / denom)[..., None] + o2.float() * (w2 / denom)[..., None]).to(o1.dtype)
    lse = torch.where(total > 0, m_safe + torch.log(denom), torch.full_like(m, float("-inf")))
    return out, lse
