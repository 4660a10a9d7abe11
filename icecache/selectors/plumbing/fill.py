"""Budget filling: greedy by score, never over the budget, vectorized over rows.

NOTE: exact greedy ("take the next best page if it still fits, else skip it") looks sequential, but
it runs in rounds: each round takes the longest prefix of the remaining candidates that fits, then
drops every candidate longer than what is left. The remaining budget shrinks below the longest
page after round one and strictly decreases after, so there are at most ``page_size + 1`` rounds of
``[B, H_kv, P]`` tensor ops, never a loop over pages or tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def greedy_fill(scores: Tensor, lens: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Pick pages best-first while their token count fits.

    ``scores``: float ``[R..., P]`` (``+inf``: take before every finite score, in page order among
    themselves, while they fit; ``-inf`` or NaN: never take); ``lens``: int64 ``[R..., P]`` (0: never
    take); ``max_tokens``: int64 ``[R...]``. Returns ``page_ids`` int64 ``[R..., K]``
    (best first, ``-1`` padded, ``K`` the most pages any row took) and ``num_tokens`` int64 ``[R...]``.
    """
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    s = scores.gather(-1, order)
    lens_sorted = lens.gather(-1, order)
    remaining = max_tokens.to(torch.int64).clone()
    # NOTE: ``s > -inf`` is False for NaN too; +inf sorts first (NaN sorts first as well, but is inactive)
    active = (s > float("-inf")) & (lens_sorted > 0) & (lens_sorted <= remaining[..., None])
    take = torch.zeros_like(active)
    for _ in range(lens.shape[-1] + 1):
        if not bool(active.any()):
            break
        cum = torch.cumsum(torch.where(active, lens_sorted, 0), dim=-1)
        fits = active & (cum <= remaining[..., None])  # a prefix of the active pages
        take |= fits
        remaining = remaining - torch.where(fits, lens_sorted, 0).sum(-1)
        active = active & ~fits & (lens_sorted <= remaining[..., None])
    num_tokens = max_tokens.to(torch.int64) - remaining
    return compact(torch.where(take, order, -1)), num_tokens


def topk_tokens(scores: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Token-level budget: the ``max_tokens[r]`` best scores of each row (``+inf`` first; ``-inf`` and
    NaN never taken).

    ``scores``: float ``[R..., N]``; ``max_tokens``: int64 ``[R...]``. Returns ``token_ids`` int64
    ``[R..., K]`` best first, ``-1`` padded, and the count taken ``[R...]``.
    """
    k = min(int(max_tokens.max()) if max_tokens.numel() else 0, scores.shape[-1])
    if k <= 0:
        empty = torch.full((*scores.shape[:-1], 0), -1, dtype=torch.int64, device=scores.device)
        return empty, torch.zeros(scores.shape[:-1], dtype=torch.int64, device=scores.device)
    # NOTE: topk ranks NaN above everything: made -inf first, so it cannot crowd out real scores
    vals, idx = torch.topk(torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"),
                                            neginf=float("-inf")), k, dim=-1)
    rank = torch.arange(k, device=scores.device)
    ok = (vals > float("-inf")) & (rank < max_tokens[..., None])
    return torch.where(ok, idx, -1), ok.sum(-1)


def compact(ids: Tensor) -> Tensor:
    """Move ``-1`` entries of the last axis to the end (order of the others kept) and trim the
    all-padding tail columns. int64 ``[R..., K]`` -> ``[R..., K']`` (``ids`` itself when it has no
    padding)."""
    if ids.shape[-1] == 0:
        return ids
    pad = ids < 0
    if not bool(pad.any()):  # NOTE: the usual case at a full budget; a sort costs ~10x this test
        return ids
    order = torch.argsort(pad.to(torch.int8), dim=-1, stable=True)
    out = ids.gather(-1, order)
    width = int((~pad).sum(-1).max())
    return out[..., :width]
