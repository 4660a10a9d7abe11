"""The torch side of the IVF page index: key slots, pages, and each IVF list's pages, for ``G`` groups.

A list's keys fill pages of at most ``S`` slots. At build a list with more than ``S`` keys is cut
into ``ceil(n / S)`` balanced pages along its keys' principal direction (so each page stays a tight
piece of the list's cell); at insert a key joins the newest page of its list while it has room, and
the overflow of a list is cut the same way into new pages. A page's tokens never move.

Slots are shared by all groups (the n-th key given to the index is slot n in every group, as in the
hierarchy index); ``slot_token`` maps a slot to its position (``-1``: empty or not indexed). The keys
themselves are kept here only when the index has no key reader (standalone use).
"""

from __future__ import annotations

import torch
from attrs import define
from torch import Tensor

from icecache.core.keys import tensor_nbytes
from icecache.index.hierarchy.build import rank_within
from icecache.index.hierarchy.state import grow

#: power-iteration rounds for the principal direction along which an overflowing list is cut
POWER_ROUNDS = 3


@define
class IvfPages:
    """All ``[G, ...]``.

    * ``keys`` float32 ``[G, Ncap, D]`` or None: the own copy of the keys (None with a key reader),
      ``slot_token`` int64 ``[G, Ncap]``, ``slot_page`` int64 ``[G, Ncap]`` (``-1``: none), ``num_slots``;
    * ``pages`` int64 ``[G, Pcap, S]`` slots (valid first, ``-1`` padded), ``page_len`` ``[G, Pcap]``,
      ``page_list`` ``[G, Pcap]`` (the IVF list; ``-1``: unused), ``group_pages`` ``[G]`` pages allocated;
    * ``open_page`` int64 ``[G, Lcap]``: each list's newest page (``-1``: the list has none).
    """

    keys: Tensor | None
    slot_token: Tensor
    slot_page: Tensor
    num_slots: int
    pages: Tensor
    page_len: Tensor
    page_list: Tensor
    group_pages: Tensor
    open_page: Tensor

    @classmethod
    def empty(cls, groups: int, dim: int, page_size: int, device: torch.device, *,
              own_keys: bool) -> IvfPages:
        def full(*shape: int, fill: float | int = -1, dtype: torch.dtype = torch.int64) -> Tensor:
            return torch.full(shape, fill, dtype=dtype, device=device)

        # NOTE: one spare page from the start: lookups of "no page yet" (-1, read as 0) stay in bounds
        keys = full(groups, 0, dim, fill=0.0, dtype=torch.float32) if own_keys else None
        return cls(keys=keys, slot_token=full(groups, 0), slot_page=full(groups, 0), num_slots=0,
                   pages=full(groups, 1, page_size), page_len=full(groups, 1, fill=0),
                   page_list=full(groups, 1),
                   group_pages=full(groups, fill=0), open_page=full(groups, 0))

    @property
    def num_pages(self) -> int:
        """Pages in use, the max over groups (shorter groups pad with empty pages)."""
        return int(self.group_pages.max()) if self.group_pages.numel() else 0

    def add_slots(self, keys: Tensor, tokens: Tensor) -> int:
        """New slots for positions ``tokens`` ``[G, n]`` (and ``keys`` float ``[G, n, D]`` when the keys are
        kept); returns the first slot."""
        s0, n = self.num_slots, tokens.shape[1]
        self.slot_token = grow(self.slot_token, 1, s0 + n, -1)
        self.slot_page = grow(self.slot_page, 1, s0 + n, -1)
        if self.keys is not None:
            self.keys = grow(self.keys, 1, s0 + n, 0.0)
            self.keys[:, s0:s0 + n] = keys
        self.slot_token[:, s0:s0 + n] = tokens
        self.num_slots = s0 + n
        return s0

    def nbytes(self) -> dict[str, int]:
        """Bytes held, by part: ``pages`` (slot maps, page tables), ``keys`` (own copy; 0 with a reader)."""
        return {"pages": tensor_nbytes(self.slot_token, self.slot_page, self.pages, self.page_len,
                                       self.page_list, self.group_pages, self.open_page),
                "keys": tensor_nbytes(self.keys)}

    def reserve_lists(self, size: int) -> None:
        self.open_page = grow(self.open_page, 1, size, -1)

    def _reserve_pages(self, size: int) -> None:
        self.pages = grow(self.pages, 1, size, -1)
        self.page_len = grow(self.page_len, 1, size, 0)
        self.page_list = grow(self.page_list, 1, size, -1)

    def page_slots(self, page_ids: Tensor) -> Tensor:
        """Slots of pages ``page_ids`` int64 ``[G, K]`` (``-1``: none): int64 ``[G, K, S]``, ``-1`` padded."""
        G, K = page_ids.shape
        slots = self.pages.gather(1, page_ids.clamp_min(0)[..., None].expand(G, K, self.pages.shape[-1]))
        return torch.where((page_ids >= 0)[..., None], slots, -1)

    def own_keys(self, slots: Tensor) -> Tensor:
        """The kept keys at ``slots`` int64 ``[G, K, S]`` (``-1``: zeros): float32 ``[G, K, S, D]``, through
        one flat ``index_select``."""
        G, K, S = slots.shape
        ncap, D = self.keys.shape[1:]
        flat = (torch.arange(G, device=slots.device)[:, None, None] * ncap + slots.clamp_min(0)).reshape(-1)
        keys = self.keys.reshape(G * ncap, D).index_select(0, flat).view(G, K, S, D)
        return keys.masked_fill((slots < 0)[..., None], 0.0)

    def place(self, lists: Tensor, s0: int, keys: Tensor) -> Tensor:
        """Put the new slots ``s0 + j`` (keys ``keys`` float ``[G, n, D]``) in pages, ``lists`` int64
        ``[G, n]`` their IVF lists (``-1``: not indexed): first into their list's newest page while it
        has room, the rest into new pages. Returns bool ``[G, Pcap]``: pages whose token list changed."""
        G, n = lists.shape
        S = self.pages.shape[-1]
        L = self.open_page.shape[1]
        changed = torch.zeros(G, self.pages.shape[1], dtype=torch.bool, device=lists.device)
        g, j = torch.nonzero(lists >= 0, as_tuple=True)  # g-major, j ascending
        lst = lists[g, j]
        _, rank = rank_within(g * L + lst, None, G * L)  # arrival order inside each (group, list)
        page = self.open_page[g, lst]
        fill = self.page_len[g, page.clamp_min(0)]
        fits = (page >= 0) & (rank < S - fill)
        if bool(fits.any()):
            gf, pf, slot = g[fits], page[fits], s0 + j[fits]
            self.pages[gf, pf, fill[fits] + rank[fits]] = slot
            self._count(gf, pf, slot, changed)
        rest = torch.full_like(lists, -1)
        rest[g[~fits], j[~fits]] = lst[~fits]
        return self.split(rest, s0, keys, changed)

    def split(self, lists: Tensor, s0: int, keys: Tensor, changed: Tensor) -> Tensor:
        """New pages for slots ``s0 + j`` (keys ``keys`` ``[G, n, D]``) with list ``lists`` ``[G, n]``
        (``-1``: skip): each (group, list) run of ``c`` keys becomes ``ceil(c / S)`` balanced pages, cut
        along its principal direction."""
        G, n = lists.shape
        S, L, D = self.pages.shape[-1], self.open_page.shape[1], keys.shape[-1]
        g, j = torch.nonzero(lists >= 0, as_tuple=True)
        if g.numel() == 0:
            return changed
        lst = lists[g, j]
        seg = g * L + lst  # [M]
        count = torch.bincount(seg, minlength=G * L)  # [G * L]
        npages = (count + S - 1) // S
        x = keys[g, j].float()  # [M, D]
        mean = torch.zeros(G * L, D, device=x.device).index_add_(0, seg, x) / count.clamp_min(1)[:, None]
        resid = x - mean[seg]
        v = torch.ones(G * L, D, device=x.device)
        for _ in range(POWER_ROUNDS):  # NOTE: the runs' principal directions, all at once
            along = (resid * v[seg]).sum(-1, keepdim=True)
            v = torch.zeros_like(v).index_add_(0, seg, resid * along)
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        _, rank = rank_within(seg, (resid * v[seg]).sum(-1), G * L)
        c, m = count[seg], npages[seg]
        within = rank * m // c  # balanced: piece sizes differ by at most one
        pos = rank - (within * c + m - 1) // m
        per_group = npages.view(G, L)
        base = self.group_pages[:, None] + per_group.cumsum(1) - per_group  # [G, L] first new page
        page = base.view(-1)[seg] + within
        self.group_pages = self.group_pages + per_group.sum(1)
        self._reserve_pages(self.num_pages)
        changed = grow(changed, 1, self.pages.shape[1], False)
        self.pages[g, page, pos] = s0 + j
        self.page_list[g, page] = lst
        has = per_group > 0
        self.open_page = torch.where(has, base + per_group - 1, self.open_page)
        self._count(g, page, s0 + j, changed)
        return changed

    def _count(self, g: Tensor, page: Tensor, slot: Tensor, changed: Tensor) -> None:
        """Bookkeeping of slots ``slot`` placed in pages ``(g, page)``: lengths, slot -> page."""
        self.page_len.index_put_((g, page), torch.ones_like(page), accumulate=True)
        self.slot_page[g, slot] = page
        changed[g, page] = True
