"""Building page layouts (token positions per page) and page summaries, vectorized.

A layout is int64 ``[B, H_kv, P, S]`` token positions, ``-1`` padded, valid slots first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.index.base import PageSummaries
from icecache.selectors.plumbing.fill import compact


def contiguous_layout(lo: Tensor, hi: int, num_heads: int, page_size: int) -> Tensor:
    """Pages of ``page_size`` consecutive positions over ``[lo[b], hi)`` per row.

    ``lo``: int64 ``[B]``. Returns ``[B, H_kv, P, S]`` with ``P = ceil((hi - min(lo)) / S)`` (rows
    with fewer tokens get padding pages); page ``j`` of row ``b`` holds ``lo[b] + j*S ...``.
    """
    B = lo.shape[0]
    span = max(0, hi - int(lo.min())) if B else 0
    P = -(-span // page_size)
    ids = lo[:, None, None] + torch.arange(P * page_size, device=lo.device).view(1, P, page_size)
    ids = torch.where(ids < hi, ids, -1)  # [B, P, S]
    return ids[:, None].expand(B, num_heads, P, page_size).contiguous()


def layout_from_groups(groups: Tensor, page_size: int) -> Tensor:
    """Split groups (clusters) of tokens into pages of at most ``page_size`` slots.

    ``groups``: int64 ``[B, H_kv, N]``, the group of token position ``n`` (``-1``: not paged).
    Tokens of one group fill pages in position order; each group starts a new page. Returns
    ``[B, H_kv, P, S]`` token positions, pages ordered by (group, chunk).
    """
    B, H, N = groups.shape
    rows = groups.reshape(B * H, N)  # [R, N]
    key = torch.where(rows >= 0, rows, torch.iinfo(torch.int64).max)
    order = torch.argsort(key, dim=1, stable=True)  # tokens sorted by group, then position
    g_sorted = rows.gather(1, order)
    valid = g_sorted >= 0
    idx = torch.arange(N, device=groups.device).expand_as(g_sorted)
    new_group = torch.ones_like(valid)
    new_group[:, 1:] = g_sorted[:, 1:] != g_sorted[:, :-1]
    group_first = torch.cummax(torch.where(new_group, idx, 0), dim=1).values
    rank = idx - group_first  # rank within its group
    new_page = valid & (new_group | (rank % page_size == 0))
    page = torch.cumsum(new_page.to(torch.int64), dim=1) - 1
    slot = rank % page_size
    P = int(new_page.sum(1).max()) if N else 0
    out = torch.full((B * H, P * page_size + 1), -1, dtype=torch.int64, device=groups.device)
    flat = torch.where(valid, page * page_size + slot, P * page_size)  # invalid -> spare column
    out.scatter_(1, flat, torch.where(valid, order, -1))
    return out[:, : P * page_size].view(B, H, P, page_size)


def gather_page_keys(keys: Tensor, pages: Tensor) -> tuple[Tensor, Tensor]:
    """``keys`` ``[B, H_kv, N, D]``, ``pages`` int64 ``[B, H_kv, P, S]`` -> (``[B, H_kv, P, S, D]``
    keys, zeros at padding; bool ``[B, H_kv, P, S]`` valid)."""
    B, H, P, S = pages.shape
    D = keys.shape[-1]
    valid = pages >= 0
    idx = pages.clamp(min=0).reshape(B, H, P * S, 1).expand(B, H, P * S, D)
    k = keys.gather(2, idx).view(B, H, P, S, D)  # [B, H_kv, P, S, D]
    return k * valid[..., None], valid


SUMMARY_FIELDS = ("centroids", "key_min", "key_max", "radius")


def summarize_pages(keys: Tensor, pages: Tensor, fields: tuple[str, ...] | None = None) -> PageSummaries:
    """Centroid, element-wise min/max, radius and length of each page (zeros for empty pages); only
    ``fields`` of them (default all; ``lens`` always)."""
    fields = SUMMARY_FIELDS if fields is None else fields
    k, valid = gather_page_keys(keys, pages)
    lens = valid.sum(-1)  # [B, H_kv, P]
    v = valid[..., None]
    empty = (lens == 0)[..., None]
    out: dict[str, Tensor] = {}
    if "centroids" in fields or "radius" in fields:
        centroids = k.sum(3) / lens.clamp(min=1)[..., None]
        if "centroids" in fields:
            out["centroids"] = centroids
        if "radius" in fields:
            out["radius"] = torch.where(valid, (k - centroids[:, :, :, None]).norm(dim=-1), 0.0).amax(-1)
    big = torch.finfo(k.dtype).max
    if "key_min" in fields:
        out["key_min"] = torch.where(empty, 0.0, torch.where(v, k, big).amin(3))
    if "key_max" in fields:
        out["key_max"] = torch.where(empty, 0.0, torch.where(v, k, -big).amax(3))
    return PageSummaries(lens=lens, **out)


def token_to_page(pages: Tensor, num_tokens: int) -> Tensor:
    """int64 ``[B, H_kv, num_tokens]``: the page holding each position (``-1``: none)."""
    B, H, P, S = pages.shape
    out = torch.full((B, H, num_tokens + 1), -1, dtype=torch.int64, device=pages.device)
    flat = pages.reshape(B, H, P * S)
    page_idx = torch.arange(P, device=pages.device).repeat_interleave(S).expand(B, H, P * S)
    out.scatter_(2, torch.where(flat >= 0, flat, num_tokens), page_idx)
    return out[..., :num_tokens]


def append_pages(pages: Tensor, token_ids: Tensor, page_size: int) -> Tensor:
    """Put new tokens ``token_ids`` int64 ``[B, H_kv, n]`` (``-1``: skip) into new pages of
    consecutive tokens after the existing ``pages`` ``[B, H_kv, P, S]``; returns ``[B, H_kv, P', S]``."""
    B, H = token_ids.shape[:2]
    if token_ids.shape[2] == 0 or not bool((token_ids >= 0).any()):
        return pages
    ids = compact(token_ids)  # [B, H_kv, n'] valid first, in position order
    n = ids.shape[2]
    fresh_p = -(-n // page_size)
    padded = torch.full((B, H, fresh_p * page_size), -1, dtype=torch.int64, device=ids.device)
    padded[:, :, :n] = ids
    fresh = padded.view(B, H, fresh_p, page_size)  # [B, H_kv, p, S]
    # NOTE: rows with fewer new tokens get empty pages; they stay empty (never selected) and keep ids stable.
    return torch.cat([pages, fresh], dim=2)
