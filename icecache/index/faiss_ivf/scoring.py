"""Page scoring of the IVF page index, from the keys FAISS found: candidates, page log-masses, GQA merge.

``G`` groups (``B * H_kv``), ``Gq`` query heads per group, ``k`` keys found per query head, ``P``
pages, ``K`` candidate pages, ``S`` slots per page. Pure functions of tensors (no FAISS, no state).
"""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.index.budget import greedy_take


def candidate_pages(slot_page: Tensor, found: Tensor, P: int) -> Tensor:
    """Pages holding any found slot: ``slot_page`` int64 ``[G, Ncap]``, ``found`` int64 ``[G, Gq, k]``
    (``-1``: none) -> page ids int64 ``[G, K]``, ``-1`` padded."""
    G = found.shape[0]
    flat = found.reshape(G, -1)
    page = torch.where(flat >= 0, slot_page.gather(1, flat.clamp_min(0)), P)
    hit = torch.zeros(G, P + 1, dtype=torch.bool, device=found.device).scatter_(1, page, True)[:, :P]
    K = max(1, int(hit.sum(1).max()))
    ids = hit.to(torch.uint8).topk(K, dim=1, sorted=True).indices  # hits first
    return torch.where(hit.gather(1, ids), ids, -1)


def exact_logmass(q: Tensor, scale: float, keys: Tensor, valid: Tensor) -> Tensor:
    """float ``[G, Gq, K]``: each page's ``logsumexp(scale q.k)`` over its keys ``[G, K, S, D]``
    (``valid`` ``[G, K, S]``) for queries ``q`` ``[G, Gq, D]``."""
    logits = scale * torch.einsum("gqd,gksd->gqks", q, keys)
    return logits.masked_fill(~valid[:, None], float("-inf")).logsumexp(-1)


def found_logmass(slot_page: Tensor, found: Tensor, logits: Tensor, cand: Tensor, P: int) -> Tensor:
    """float ``[G, Gq, K]``: per candidate page ``cand`` ``[G, K]``, the logsumexp of the logits
    ``[G, Gq, k]`` of the keys found in it (``found`` slots ``[G, Gq, k]``; ``-inf`` where none)."""
    G, Gq, _ = found.shape
    K = cand.shape[1]
    column = torch.arange(K, device=found.device).expand(G, K)
    col_of_page = torch.full((G, P + 1), K, dtype=torch.int64, device=found.device)
    col_of_page.scatter_(1, torch.where(cand >= 0, cand, P), column)
    page = slot_page.gather(1, found.clamp_min(0).reshape(G, -1)).clamp_min(0)  # [G, Gq * k]; -1: unused
    col = torch.where(found >= 0, col_of_page.gather(1, page).view(G, Gq, -1), K)  # [G, Gq, k]
    top = torch.full((G, Gq, K + 1), float("-inf"), device=found.device)
    top.scatter_reduce_(2, col, logits, reduce="amax")
    shift = torch.where(torch.isfinite(top), top, 0.0)
    total = torch.zeros_like(top).scatter_add_(2, col, (logits - shift.gather(2, col)).exp())
    return (shift + total.log())[..., :K]


def merge_and_fill(logmass: Tensor, resident: Tensor | None, lens: Tensor,
                   budget: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """GQA merge and budget fill, as the hierarchy index: each query head's page masses (``logmass``
    ``[G, Gq, K]``) are normalized over the candidates (with ``resident`` logits ``[G, Gq, R]`` of the
    sink and window tokens in the normalizer) and summed over the group; pages (``lens`` ``[G, K]``,
    0 at padding) are taken by mass per token within ``budget`` ``[G]``.
    Returns ``(density [G, K], order [G, K], taken [G, K])`` (see :func:`greedy_take`)."""
    parts = logmass if resident is None else torch.cat([logmass, resident], -1)
    log_z = torch.logsumexp(parts, -1, keepdim=True)
    mass = torch.nan_to_num((logmass - log_z).exp(), nan=0.0).sum(1)  # [G, K] the group's summed share
    ok = torch.isfinite(logmass).any(1) & (lens > 0)
    density = (mass / lens.clamp_min(1)).masked_fill(~ok, float("-inf"))
    order, taken = greedy_take(density, lens, budget)
    return density, order, taken
