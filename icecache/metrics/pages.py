"""Page-level costs of a selection: pages touched and contiguous copy runs."""

from __future__ import annotations

import torch
from torch import Tensor


def touched_page_ids(token_ids: Tensor, layout: Tensor) -> Tensor:
    """Pages of ``layout`` int64 ``[B, H_kv, P, S]`` holding at least one of ``token_ids`` int64
    ``[B, H_kv, T]`` (``-1`` padded): bool ``[B, H_kv, P]``. Tokens in no page (sinks, window) count
    for none."""
    B, H, P, S = layout.shape
    n = (
        int(
            max(
                int(layout.max()) if layout.numel() else -1, int(token_ids.max()) if token_ids.numel() else -1
            )
        )
        + 1
    )
    page_of = torch.full((B, H, n + 1), -1, dtype=torch.int64, device=layout.device)
    flat = layout.reshape(B, H, P * S)
    page_idx = torch.arange(P, device=layout.device).repeat_interleave(S).expand(B, H, P * S)
    page_of.scatter_(2, torch.where(flat >= 0, flat, n), page_idx)
    page_of[..., n] = -1
    pages = page_of.gather(2, torch.where(token_ids >= 0, token_ids, n))  # [B, H_kv, T]
    hit = torch.zeros(B, H, P + 1, dtype=torch.bool, device=layout.device)
    hit.scatter_(2, torch.where(pages >= 0, pages, P), True)
    return hit[..., :P]


def pages_touched(page_ids: Tensor) -> Tensor:
    """Distinct valid pages per row: ``page_ids`` int64 ``[B, H_kv, K]`` (``-1`` padded) -> ``[B, H_kv]``."""
    s = torch.sort(page_ids, dim=-1).values
    valid = s >= 0
    first = torch.ones_like(valid)
    first[..., 1:] = s[..., 1:] != s[..., :-1]
    return (valid & first).sum(-1)


def copy_runs(physical_page_ids: Tensor) -> Tensor:
    """Contiguous runs of physical pages a bulk copy needs: ``physical_page_ids`` int64
    ``[B, H_kv, K]`` (``-1`` padded, any order, duplicates allowed) -> int64 ``[B, H_kv]``.

    Pages ``{3, 4, 5, 9}`` need 2 copies (``3..5`` and ``9``); 0 pages need 0.
    """
    big = torch.iinfo(torch.int64).max
    s = torch.sort(torch.where(physical_page_ids >= 0, physical_page_ids, big), dim=-1).values
    valid = s != big
    prev = torch.full_like(s, -2)
    prev[..., 1:] = s[..., :-1]
    dup = s == prev
    starts = valid & ~dup & (s != prev + 1)
    return starts.sum(-1)
