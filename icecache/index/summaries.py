"""Helpers shared by indexes: page summaries of gathered keys and :class:`PageHits` from a layout."""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.index.base import PageHits, PageSummaries


def summarize_layout(keys: Tensor, valid: Tensor, device: torch.device) -> PageSummaries:
    """Summaries of pages whose member keys are ``keys`` float ``[B, H, P, S, D]`` (``valid`` bool
    ``[B, H, P, S]``): mean, element-wise min/max, radius, length (zeros for empty pages)."""
    v = valid[..., None]
    lens = valid.sum(-1)
    cent = torch.where(v, keys, 0.0).sum(3) / lens.clamp_min(1)[..., None]
    empty = (lens == 0)[..., None]
    kmin = torch.where(empty, 0.0, keys.masked_fill(~v, float("inf")).amin(3))
    kmax = torch.where(empty, 0.0, keys.masked_fill(~v, float("-inf")).amax(3))
    radius = torch.where(valid, (keys - cent[:, :, :, None]).norm(dim=-1), 0.0).amax(-1)
    return PageSummaries(centroids=cent.to(device), key_min=kmin.to(device), key_max=kmax.to(device),
                         radius=radius.to(device), lens=lens.to(device))


def hits_from_layout(layout: Tensor, order: Tensor, scores: Tensor, taken: Tensor, shape: tuple[int, int],
                     device: torch.device) -> PageHits:
    """:class:`PageHits` from the ranking of :func:`~icecache.index.budget.greedy_take`.

    ``layout`` int64 ``[G, P, S]`` token ids; ``order``/``scores``/``taken`` ``[G, K']`` (page ids in
    rank order, their scores, whether taken); ``shape`` is ``(B, H_kv)`` with ``B * H_kv = G``.
    """
    B, H = shape
    G, P, S = layout.shape
    K = int(taken.sum(1).max()) if taken.numel() else 0
    first = taken.long().argsort(dim=1, descending=True, stable=True)[:, :K]  # taken pages first
    sel = taken.gather(1, first)
    page_ids = torch.where(sel, order.gather(1, first), -1)
    page_scores = torch.where(sel, scores.gather(1, first), float("-inf"))
    toks = layout.gather(1, page_ids.clamp_min(0)[..., None].expand(G, K, S))
    toks = torch.where(sel[..., None], toks, -1).reshape(G, K * S)
    lens = (toks.view(G, K, S) >= 0).sum(-1)
    T = int((toks >= 0).sum(1).max()) if toks.numel() else 0
    toks = toks.gather(1, (toks < 0).long().argsort(dim=1, stable=True)[:, :T])
    return PageHits(page_ids=page_ids.view(B, H, K).to(device), scores=page_scores.view(B, H, K).to(device),
                    page_lens=lens.view(B, H, K).to(device), num_tokens=lens.sum(1).view(B, H).to(device),
                    token_ids=toks.view(B, H, T).to(device))
