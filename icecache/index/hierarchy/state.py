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
    * page summaries ``[G, Pcap, ...]``: ``page_sum``/``page_sqsum``, ``page_min``/``page_max``
      (element-wise, 0 for empty pages; for the upper bound of ``q.k``) of the raw keys, and
      ``page_ssum``/``page_extra`` (sum of clustering-space keys / of their MIPS extra coordinate,
      for routing inserts).
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
    page_sqsum: Tensor
    page_min: Tensor
    page_max: Tensor
    page_ssum: Tensor
    page_extra: Tensor
    num_cells: int
    whiten: Tensor | None

    @property
    def num_pages(self) -> int:
        """Pages in use, the max over groups (shorter groups pad with empty pages)."""
        return int(self.group_pages.max()) if self.group_pages.numel() else 0

    def reserve_slots(self, size: int) -> None:
        shared = self.space is self.keys  # NOTE: no whitening: one tensor serves both (half the memory)
        self.keys = grow(self.keys, 1, size, 0.0)
        self.space = self.keys if shared else grow(self.space, 1, size, 0.0)
        self.space_sq = grow(self.space_sq, 1, size, 0.0)
        self.slot_token = grow(self.slot_token, 1, size, -1)

    def reserve_pages(self, size: int) -> None:
        self.pages = grow(self.pages, 1, size, -1)
        self.page_len = grow(self.page_len, 1, size, 0)
        self.page_cell = grow(self.page_cell, 1, size, -1)
        for name in ("page_sum", "page_sqsum", "page_min", "page_max", "page_ssum", "page_extra"):
            setattr(self, name, grow(getattr(self, name), 1, size, 0.0))

    def gather_slots(self, source: Tensor, g: Tensor, slots: Tensor) -> Tensor:
        """``source[g, slots]`` for ``source`` ``[G, Ncap, ...]``, ``g`` ``[R]``, ``slots`` ``[R, S]``
        (``-1`` read as slot 0), via one flat ``index_select``."""
        ncap = source.shape[1]
        flat = (g[:, None] * ncap + slots.clamp_min(0)).reshape(-1)
        out = source.reshape(source.shape[0] * ncap, *source.shape[2:]).index_select(0, flat)
        return out.view(*slots.shape, *source.shape[2:])

    def summarize(self, g: Tensor, p: Tensor) -> None:
        """Recompute the running summaries of pages ``(g[i], p[i])`` from their members (vectorized).

        NOTE: bounds (min, max, radius) are not kept here; :meth:`bounds` computes them on demand,
        since the index itself needs only sums and build time matters.
        """
        if g.numel() == 0:
            return
        slots = self.pages[g, p]  # [R, S]
        valid = slots >= 0
        k = self.gather_slots(self.keys, g, slots)  # [R, S, D]
        kw = k * valid[..., None].to(k.dtype)
        total = kw.sum(1)
        self.page_sum[g, p] = total
        self.page_sqsum[g, p] = (kw * k).sum(1)
        some = valid.any(1, keepdim=True)  # [R, 1]
        self.page_min[g, p] = torch.where(some, k.masked_fill(~valid[..., None], float("inf")).amin(1), 0.0)
        self.page_max[g, p] = torch.where(some, k.masked_fill(~valid[..., None], float("-inf")).amax(1), 0.0)
        if self.whiten is None:
            self.page_ssum[g, p] = total
        else:
            self.page_ssum[g, p] = (self.gather_slots(self.space, g, slots) * valid[..., None]).sum(1)
        self.page_len[g, p] = valid.sum(1)
        self.refresh_extra(g, p)

    def summarize_points(self, point_page: Tensor) -> None:
        """Summaries of every page from the slot -> page map ``point_page`` ``[G, N]`` (``-1``: none),
        by segment sums over the keys (no padded gather): the fast path used at build."""
        G, N = point_page.shape
        P, D = self.pages.shape[1], self.keys.shape[-1]
        offset = torch.arange(G, device=point_page.device)[:, None] * P
        flat = torch.where(point_page >= 0, point_page + offset, G * P).reshape(-1)

        def seg(values: Tensor) -> Tensor:
            out = torch.zeros(G * P + 1, *values.shape[2:], dtype=values.dtype, device=values.device)
            return out.index_add_(0, flat, values.reshape(G * N, *values.shape[2:]))[:G * P]

        def seg_extreme(values: Tensor, how: str) -> Tensor:
            out = torch.zeros(G * P + 1, values.shape[-1], dtype=values.dtype, device=values.device)
            index = flat[:, None].expand(G * N, values.shape[-1])
            flat_values = values.reshape(G * N, values.shape[-1])
            out.scatter_reduce_(0, index, flat_values, reduce=how, include_self=False)
            return out[:G * P]  # NOTE: pages without keys keep the 0 fill

        x = self.keys[:, :N]
        self.page_sum[:, :P] = seg(x).view(G, P, D)
        self.page_sqsum[:, :P] = seg(x * x).view(G, P, D)
        self.page_min[:, :P] = seg_extreme(x, "amin").view(G, P, D)
        self.page_max[:, :P] = seg_extreme(x, "amax").view(G, P, D)
        if self.whiten is None:
            self.page_ssum[:, :P] = self.page_sum[:, :P]
        else:
            self.page_ssum[:, :P] = seg(self.space[:, :N]).view(G, P, D)
        extra = (self.m2[:, None] - self.space_sq[:, :N]).clamp_min(0).sqrt()
        self.page_extra[:, :P] = seg(extra).view(G, P)
        self.page_len[:, :P] = torch.bincount(flat, minlength=G * P + 1)[:G * P].view(G, P)

    def bounds(self, num_pages: int) -> tuple[Tensor, Tensor, Tensor]:
        """Element-wise ``(min [G, P, D], max [G, P, D], radius [G, P])`` of the first ``num_pages``
        pages' raw keys (zeros for empty pages)."""
        G, _, S = self.pages.shape
        slots = self.pages[:, :num_pages].reshape(G, num_pages * S)  # [G, P*S]
        valid = (slots >= 0).view(G, num_pages, S, 1)
        g = torch.arange(G, device=slots.device)
        k = self.gather_slots(self.keys, g, slots).view(G, num_pages, S, self.keys.shape[-1])
        n = valid.sum(2)
        empty = n == 0
        kmin = torch.where(empty, 0.0, k.masked_fill(~valid, float("inf")).amin(2))
        kmax = torch.where(empty, 0.0, k.masked_fill(~valid, float("-inf")).amax(2))
        centroid = self.page_sum[:, :num_pages] / n.clamp_min(1)
        radius = ((k - centroid[:, :, None]).norm(dim=-1) * valid[..., 0]).amax(2)
        return kmin, kmax, radius

    def refresh_extra(self, g: Tensor, p: Tensor) -> None:
        """Recompute the MIPS extra-coordinate sums of pages ``(g, p)`` under the current ``m2``."""
        slots = self.pages[g, p]
        valid = slots >= 0
        sq = self.gather_slots(self.space_sq, g, slots)
        extra = (self.m2[g][:, None] - sq).clamp_min(0).sqrt()
        self.page_extra[g, p] = (extra * valid).sum(1)

    def all_pages(self) -> tuple[Tensor, Tensor]:
        """``(g, p)`` of every allocated page."""
        P = self.num_pages
        used = torch.arange(P, device=self.pages.device)[None] < self.group_pages[:, None]
        return torch.nonzero(used, as_tuple=True)
