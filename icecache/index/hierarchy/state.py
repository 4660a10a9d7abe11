"""Growable tensors of a hierarchy index: slot maps, pages (leaves), page and cell summaries.

``G`` groups (``B * H_kv``). Keys are named by *slots* shared by all groups (the n-th key given to the
index is slot n in every group); ``slot_token`` maps a slot to its token position (``-1`` = empty).
The keys themselves are not held here: the index reads them through a
:class:`~icecache.core.keys.KeyReader` (or its own :class:`~icecache.core.keys.KeyCopy`).

What ranking needs, per page: the mean key, and the element-wise min/max for the ``q.k`` bound, in
``summary_dtype`` (bfloat16 by default; the min is rounded down and the max up, so the bound stays an
upper bound). Per cell (about ``cell_tokens`` keys): sums, squared sums, min/max, counts in float32.
Per slot: its token and its page slot map entry (int32).
"""

from __future__ import annotations

import torch
from attrs import define
from torch import Tensor

from icecache.core.growth import grow
from icecache.core.keys import tensor_nbytes


def round_to(x: Tensor, dtype: torch.dtype, *, up: bool) -> Tensor:
    """``x`` (float32) in ``dtype``, rounded toward +inf (``up``) or -inf, so bounds stay bounds.

    bfloat16 is the top half of a float32: dropping the low 16 bits rounds toward zero, and one more
    unit in the last place moves away from zero (sign-magnitude), which is what the other direction needs.
    """
    if dtype == torch.float32:
        return x.float()
    if dtype != torch.bfloat16:
        raise ValueError(f"directed rounding to {dtype} is not supported (float32 or bfloat16)")
    bits = x.float().contiguous().view(torch.int32)
    inexact = (bits & 0xFFFF) != 0
    away = inexact & ((x > 0) if up else (x < 0))
    hi = (bits & -65536) + away.to(torch.int32) * 65536
    return hi.view(torch.float32).to(torch.bfloat16)


@define
class IndexState:
    """Everything a :class:`~icecache.index.hierarchy.index.HierarchyIndex` holds, all ``[G, ...]``.

    * ``slot_token`` int32 ``[G, Ncap]``; ``num_slots``: slots used. ``keys`` float ``[G, Ncap, D]``:
      only when the index keeps its own copy (no reader, or ``key_copy`` set), else ``None``.
    * ``m2`` ``[G]``: running max of the clustering-space squared key norms (the MIPS ``M^2``).
    * ``pages`` int32 ``[G, Pcap, S]`` slots (valid first, ``-1`` padded); ``page_len`` int32
      ``[G, Pcap]``; ``page_cell`` int32 ``[G, Pcap]`` (``-1``: unused page); ``group_pages`` ``[G]``.
    * page summaries in ``summary_dtype``, side by side in ``page_stats`` ``[G, Pcap, F, D]``: the mean,
      the variance (only for the Gaussian page estimate: ``F = 4``, else ``F = 3``), the max and the min
      (views: ``page_mean``, ``page_var``, ``page_max``, ``page_min``, each ``[G, Pcap, D]``). NOTE: side
      by side so a query converts them in one op and scores mean + variance, and the bound (max, min),
      in one matrix product each (``[2D]``-long rows), half the ops of four separate scans.
      ``page_smean`` (clustering-space mean) and ``page_extra`` (mean MIPS extra coordinate) only for
      ``insert_mode="assign"``.
    * cells ``[G, C, ...]`` float32: ``cell_sum``, ``cell_sqsum``, ``cell_min``, ``cell_max``,
      ``cell_count``; ``cell_ssum`` (clustering-space sums, routing inserts) only with whitening.
      ``cell_summary`` ``[G, C, 4, D]``: what a query reads of them, side by side like ``page_stats``
      (mean, variance, max rounded up, min rounded down; zeros for empty cells), in the summaries'
      matmul dtype, kept current by :meth:`add_to_cells` for the cells it touches. NOTE: derived once
      per change, not per query: at 128k (1,024 cells x 8 heads x 128 dims) deriving them in every
      query was ~10 elementwise passes over ``[G, C, D]``, a third of the query.
    * ``num_cells``; ``whiten`` ``[G, D, D]`` or None.
    """

    slot_token: Tensor
    num_slots: int
    keys: Tensor | None
    m2: Tensor
    pages: Tensor
    page_len: Tensor
    page_cell: Tensor
    group_pages: Tensor
    page_stats: Tensor
    page_smean: Tensor | None
    page_extra: Tensor | None
    cell_sum: Tensor
    cell_sqsum: Tensor
    cell_min: Tensor
    cell_max: Tensor
    cell_count: Tensor
    cell_ssum: Tensor | None
    num_cells: int
    whiten: Tensor | None
    cell_summary: Tensor | None = None

    PAGE_FIELDS = ("page_stats", "page_smean", "page_extra")

    @staticmethod
    def empty_page_stats(G: int, P: int, D: int, *, gaussian: bool, dtype: torch.dtype,
                         device: torch.device) -> Tensor:
        """Zeroed ``page_stats`` ``[G, P, F, D]`` (``F = 4`` with the variance, else 3)."""
        return torch.zeros(G, P, 4 if gaussian else 3, D, dtype=dtype, device=device)

    @property
    def page_mean(self) -> Tensor:
        return self.page_stats[:, :, 0]

    @property
    def page_var(self) -> Tensor | None:
        return self.page_stats[:, :, 1] if self.page_stats.shape[2] == 4 else None

    @property
    def page_max(self) -> Tensor:
        return self.page_stats[:, :, -2]

    @property
    def page_min(self) -> Tensor:
        return self.page_stats[:, :, -1]

    @property
    def num_pages(self) -> int:
        """Pages in use, the max over groups (shorter groups pad with empty pages)."""
        return int(self.group_pages.max()) if self.group_pages.numel() else 0

    def reserve_slots(self, size: int) -> None:
        self.slot_token = grow(self.slot_token, 1, size, -1)
        if self.keys is not None:
            self.keys = grow(self.keys, 1, size, 0.0)

    def reserve_pages(self, size: int) -> None:
        self.pages = grow(self.pages, 1, size, -1)
        self.page_len = grow(self.page_len, 1, size, 0)
        self.page_cell = grow(self.page_cell, 1, size, -1)
        for name in self.PAGE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, grow(value, 1, size, 0.0))

    def all_pages(self) -> tuple[Tensor, Tensor]:
        """``(g, p)`` of every allocated page."""
        P = self.num_pages
        used = torch.arange(P, device=self.pages.device)[None] < self.group_pages[:, None]
        return torch.nonzero(used, as_tuple=True)

    def add_to_cells(self, g: Tensor, cell: Tensor, k: Tensor, sk: Tensor | None) -> None:
        """Account keys ``k`` ``[M, D]`` (clustering-space ``sk``) of groups ``g`` joining cells ``cell``."""
        if g.numel() == 0:
            return
        G, C, D = self.cell_sum.shape
        key = g * C + cell  # [M]
        self.cell_sum.view(G * C, D).index_add_(0, key, k)
        self.cell_sqsum.view(G * C, D).index_add_(0, key, k * k)
        self.cell_count.view(G * C).index_add_(0, key, torch.ones_like(key, dtype=self.cell_count.dtype))
        idx = key[:, None].expand(-1, D)
        self.cell_min.view(G * C, D).scatter_reduce_(0, idx, k, reduce="amin")
        self.cell_max.view(G * C, D).scatter_reduce_(0, idx, k, reduce="amax")
        if self.cell_ssum is not None and sk is not None:
            self.cell_ssum.view(G * C, D).index_add_(0, key, sk)
        self.refresh_cells(torch.unique(key))

    def refresh_cells(self, key: Tensor | None = None, dtype: torch.dtype | None = None) -> None:
        """Derive ``cell_summary`` for the cells ``key`` (flat ``g * C + c``; ``None``: all of them, and
        allocate it in ``dtype``) from the running sums."""
        G, C, D = self.cell_sum.shape
        if key is None:
            self.cell_summary = torch.zeros(G, C, 4, D, dtype=dtype or torch.float32,
                                            device=self.cell_sum.device)
            key = torch.arange(G * C, device=self.cell_sum.device)
        if self.cell_summary is None or key.numel() == 0:
            return
        count = self.cell_count.view(G * C)[key][:, None]
        n = count.clamp_min(1)
        mean = self.cell_sum.view(G * C, D)[key] / n
        var = (self.cell_sqsum.view(G * C, D)[key] / n - mean * mean).clamp_min(0)
        empty = count == 0
        hi = self.cell_max.view(G * C, D)[key].masked_fill(empty, 0.0)
        lo = self.cell_min.view(G * C, D)[key].masked_fill(empty, 0.0)
        dt = self.cell_summary.dtype
        rows = torch.stack([mean.to(dt), var.to(dt), round_to(hi, dt, up=True), round_to(lo, dt, up=False)],
                           dim=1)
        self.cell_summary.view(G * C, 4, D).index_copy_(0, key, rows)

    def nbytes(self) -> dict[str, int]:
        """Bytes held, by part: ``pages`` (slot maps), ``summaries``, ``cells``, ``keys`` (own copy)."""
        return {
            "pages": tensor_nbytes(self.slot_token, self.pages, self.page_len, self.page_cell,
                                   self.group_pages),
            "summaries": tensor_nbytes(*(getattr(self, f) for f in self.PAGE_FIELDS)),
            "cells": tensor_nbytes(self.cell_sum, self.cell_sqsum, self.cell_min, self.cell_max,
                                   self.cell_count, self.cell_ssum, self.cell_summary, self.m2, self.whiten),
            "keys": tensor_nbytes(self.keys),
        }
