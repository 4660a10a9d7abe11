"""Growable tensors of a hierarchy index: the key store, the pages (leaves) and their summaries.

``G`` groups (``B * H_kv``). Keys live in *slots* shared by all groups (the n-th key given to the
index is slot n in every group); ``slot_token`` maps a slot to its token position (``-1`` = empty).
"""

from __future__ import annotations

import torch
from attrs import define
from torch import Tensor


def grow(t: Tensor, dim: int, size: int, fill: float | int) -> Tensor:
    """``t`` padded along ``dim`` to at least ``size`` (capacity doubles, amortized O(1))."""
    cur = t.shape[dim]
    if size <= cur:
        return t
    new = max(size, 2 * cur)
    shape = list(t.shape)
    shape[dim] = new - cur
    return torch.cat([t, torch.full(shape, fill, dtype=t.dtype, device=t.device)], dim=dim)


@define
class IndexState:
    """Everything a :class:`~icecache.index.hierarchy.index.HierarchyIndex` holds, all ``[G, ...]``.

    * ``keys`` float32 ``[G, Ncap, D]`` raw keys; ``space`` float32 ``[G, Ncap, D]`` keys in the
      clustering space (``keys @ whiten``, or the keys themselves); ``space_sq`` ``[G, Ncap]``.
    * ``slot_token`` int64 ``[G, Ncap]``; ``num_slots``: slots used.
    * ``m2`` ``[G]``: running max of ``space_sq`` (the MIPS transform's ``M^2``).
    * ``pages`` int64 ``[G, Pcap, S]`` slots (valid first, ``-1`` padded); ``page_len`` ``[G, Pcap]``;
      ``page_cell`` ``[G, Pcap]`` (``-1``: unused page); ``group_pages`` ``[G]`` pages allocated.
    * page summaries ``[G, Pcap, ...]``: ``page_sum``/``page_min``/``page_max``/``page_radius`` (raw
      keys) and ``page_ssum``/``page_extra`` (sum of clustering-space keys / of their MIPS extra
      coordinate, for routing inserts).
    * ``num_cells``: upper-level nodes per group; ``whiten``: ``[G, D, D]`` or None.
    """

    keys: Tensor
    space: Tensor
    space_sq: Tensor
    slot_token: Tensor
    num_slots: int
    m2: Tensor
    pages: Tensor
    page_len: Tensor
    page_cell: Tensor
    group_pages: Tensor
    page_sum: Tensor
    page_min: Tensor
    page_max: Tensor
    page_radius: Tensor
    page_ssum: Tensor
    page_extra: Tensor
    num_cells: int
    whiten: Tensor | None

    @property
    def num_pages(self) -> int:
        """Pages in use, the max over groups (shorter groups pad with empty pages)."""
        return int(self.group_pages.max()) if self.group_pages.numel() else 0

    def reserve_slots(self, size: int) -> None:
        self.keys = grow(self.keys, 1, size, 0.0)
        self.space = grow(self.space, 1, size, 0.0)
        self.space_sq = grow(self.space_sq, 1, size, 0.0)
        self.slot_token = grow(self.slot_token, 1, size, -1)

    def reserve_pages(self, size: int) -> None:
        self.pages = grow(self.pages, 1, size, -1)
        self.page_len = grow(self.page_len, 1, size, 0)
        self.page_cell = grow(self.page_cell, 1, size, -1)
        for name in ("page_sum", "page_min", "page_max", "page_radius", "page_ssum", "page_extra"):
            setattr(self, name, grow(getattr(self, name), 1, size, 0.0))

    def summarize(self, g: Tensor, p: Tensor) -> None:
        """Recompute the summaries of pages ``(g[i], p[i])`` from their members (vectorized)."""
        if g.numel() == 0:
            return
        slots = self.pages[g, p]  # [R, S]
        valid = slots >= 0
        s = slots.clamp_min(0)
        gg = g[:, None].expand_as(s)
        k = self.keys[gg, s]  # [R, S, D]
        w = valid[..., None].to(k.dtype)
        n = w.sum(1)  # [R, 1]
        total = (k * w).sum(1)
        centroid = total / n.clamp_min(1)
        big = torch.finfo(k.dtype).max
        kmin = k.masked_fill(~valid[..., None], big).amin(1)
        kmax = k.masked_fill(~valid[..., None], -big).amax(1)
        empty = n == 0
        self.page_sum[g, p] = total
        self.page_min[g, p] = torch.where(empty, 0.0, kmin)
        self.page_max[g, p] = torch.where(empty, 0.0, kmax)
        self.page_radius[g, p] = ((k - centroid[:, None]).norm(dim=-1) * valid).amax(1)
        self.page_ssum[g, p] = (self.space[gg, s] * w).sum(1)
        self.page_len[g, p] = valid.sum(1)
        self.refresh_extra(g, p)

    def refresh_extra(self, g: Tensor, p: Tensor) -> None:
        """Recompute the MIPS extra-coordinate sums of pages ``(g, p)`` under the current ``m2``."""
        slots = self.pages[g, p]
        valid = slots >= 0
        sq = self.space_sq[g[:, None].expand_as(slots), slots.clamp_min(0)]
        extra = (self.m2[g][:, None] - sq).clamp_min(0).sqrt()
        self.page_extra[g, p] = (extra * valid).sum(1)

    def all_pages(self) -> tuple[Tensor, Tensor]:
        """``(g, p)`` of every allocated page."""
        P = self.num_pages
        used = torch.arange(P, device=self.pages.device)[None] < self.group_pages[:, None]
        return torch.nonzero(used, as_tuple=True)
