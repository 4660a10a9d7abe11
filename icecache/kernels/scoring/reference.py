"""Torch reference of page scoring: centroid inner products and Quest's min/max upper bound."""

from __future__ import annotations

import torch
from torch import Tensor


def score_pages(query: Tensor, first: Tensor, second: Tensor | None, *, kind: str,
                page_mask: Tensor | None, group_reduce: str) -> Tensor:
    """See :meth:`icecache.kernels.base.KernelBackend.score_pages` (inputs already checked)."""
    *lead, H_q, D = query.shape
    H_kv, P = first.shape[-3], first.shape[-2]
    G = H_q // H_kv
    q = query.reshape(*lead, H_kv, G, 1, D).float()  # [..., H_kv, G, 1, D]
    a = first.unsqueeze(-3).float()  # [..., H_kv, 1, P, D]
    if kind == "centroid":
        scores = (q * a).sum(-1)  # [..., H_kv, G, P]
    else:
        b = second.unsqueeze(-3).float()  # [..., H_kv, 1, P, D]
        scores = torch.maximum(q * a, q * b).sum(-1)  # [..., H_kv, G, P]
    if page_mask is not None:
        scores = scores.masked_fill(~page_mask.unsqueeze(-2), float("-inf"))
    if group_reduce == "max":
        return scores.amax(dim=-2)  # [..., H_kv, P]
    if group_reduce == "sum":
        return scores.sum(dim=-2)  # [..., H_kv, P]
    return scores.reshape(*lead, H_q, P)  # [..., H_q, P]


def topk_from_scores(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best ``k`` of the last dim, best first; ids of ``-inf`` scores become ``-1``."""
    values, ids = torch.topk(scores, k, dim=-1)
    ids = torch.where(torch.isinf(values) & (values < 0), torch.full_like(ids, -1), ids)
    return values, ids
