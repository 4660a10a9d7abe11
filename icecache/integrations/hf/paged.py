"""The paged decode path of a sparse layer: the selector's pages live in a tiered store (device tier =
a bounded page pool, backed by host and optionally disk); sinks and the recent window stay on the
device. A decode step loads the selected pages (one bulk copy for the missing ones), runs the
kernels' sparse paged attention over them, attends sinks + window densely and merges the two.

Positions follow the selector convention (``icecache.selectors.plumbing.positions``): sinks are the
first ``ledger.sink`` real positions of a row, the window its last ``ledger.window`` positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from icecache.core.errors import BudgetError
from icecache.integrations.hf.dense import attend_with_lse
from icecache.integrations.hf.store import GrowableKV


class PagedLayerKV:
    """Device-side state of one sparse layer on the paged path.

    ``phys`` int64 ``[B, H_kv, P]``: store page id of each logical page of the selector's layout
    (``-1``: none yet); ``written`` int64 ``[B, H_kv, P, S]``: the layout as last written.
    """

    def __init__(self, store: Any, kernels: Any, layer_idx: int, *, sink_tokens: int, keep_recent: int,
                 device: torch.device):
        self.store, self.kernels, self.layer_idx = store, kernels, layer_idx
        self.sink_tokens, self.keep_recent, self.device = sink_tokens, keep_recent, device
        self.phys: Tensor | None = None
        self.written: Tensor | None = None
        self.sinks: tuple[Tensor, Tensor] | None = None  # [B, H_kv, sink, D] each
        self.ring: tuple[Tensor, Tensor] | None = None  # [B, H_kv, keep_recent, D]: recent positions
        self.n = 0  # positions so far

    # -- page writes --------------------------------------------------------------------------------
    def sync(self, layout: Tensor, host: GrowableKV) -> int:
        """Write every page of ``layout`` int64 ``[B, H_kv, P, S]`` whose tokens changed since the last
        call (new pages get store ids). Returns the number of pages written."""
        B, H, P, S = layout.shape
        layout = layout.cpu()
        if self.phys is None:
            self.phys = torch.full((B, H, 0), -1, dtype=torch.int64)
            self.written = torch.full((B, H, 0, S), -1, dtype=torch.int64)
        P0 = self.phys.shape[2]
        if P > P0:  # NOTE: page ids are stable; new pages are appended
            self.phys = torch.cat([self.phys, torch.full((B, H, P - P0), -1, dtype=torch.int64)], dim=2)
            self.written = torch.cat([self.written, torch.full((B, H, P - P0, S), -1, dtype=torch.int64)], 2)
        lens = (layout >= 0).sum(-1)  # [B, H_kv, P]
        changed = (layout != self.written).any(-1) & (lens > 0)  # [B, H_kv, P]
        if not bool(changed.any()):
            return 0
        fresh = changed & (self.phys < 0)
        n_fresh = int(fresh.sum())
        if n_fresh:
            b, h, _ = torch.nonzero(fresh, as_tuple=True)
            self.phys[fresh] = self.store.allocate(n_fresh, seq=b, layer=self.layer_idx, head=h)
        b, h, p = torch.nonzero(changed, as_tuple=True)
        tokens = layout[b, h, p]  # [n, S]
        idx = tokens.clamp_min(0)
        keys, values = host.view()
        k = keys[b[:, None], h[:, None], idx]  # [n, S, D]
        v = values[b[:, None], h[:, None], idx]
        pad = (tokens < 0)[..., None]
        k, v = k.masked_fill(pad, 0), v.masked_fill(pad, 0)
        self.store.write_pages(self.phys[b, h, p], k, v, lens[b, h, p])
        self.written[b, h, p] = tokens
        return int(b.numel())

    # -- sinks and window -----------------------------------------------------------------------------
    def init_resident(self, host: GrowableKV, start: Tensor) -> None:
        """Copy the sinks of each row and the ``keep_recent`` most recent positions to the device."""
        keys, values = host.view()
        B, H, N, D = keys.shape
        pos = (start[:, None] + torch.arange(self.sink_tokens)).clamp(max=max(N - 1, 0))  # [B, sink]
        idx = pos.to(keys.device)[:, None, :, None].expand(B, H, self.sink_tokens, D)
        self.sinks = (keys.gather(2, idx).to(self.device), values.gather(2, idx).to(self.device))
        shape = (B, H, self.keep_recent, D)
        self.ring = (torch.zeros(shape, dtype=keys.dtype, device=self.device),
                     torch.zeros(shape, dtype=keys.dtype, device=self.device))
        self.n = 0
        lo = max(0, N - self.keep_recent)
        self._write_ring(keys[:, :, lo:], values[:, :, lo:], lo)
        self.n = N

    def append(self, keys: Tensor, values: Tensor) -> None:
        """New positions ``[B, H_kv, n, D]`` enter the ring of recent positions."""
        self._write_ring(keys, values, self.n)
        self.n += keys.shape[2]

    def _write_ring(self, keys: Tensor, values: Tensor, first: int) -> None:
        """Position ``p`` lives in ring slot ``p % keep_recent`` (only the newest ``keep_recent`` count)."""
        n = keys.shape[2]
        skip = max(0, n - self.keep_recent)
        slots = (torch.arange(first + skip, first + n) % self.keep_recent).to(self.device)
        self.ring[0].index_copy_(2, slots, keys[:, :, skip:].to(self.device))
        self.ring[1].index_copy_(2, slots, values[:, :, skip:].to(self.device))

    def nbytes(self) -> int:
        """Device bytes of sinks and the ring of recent positions."""
        return sum(t.numel() * t.element_size() for t in (*self.sinks, *self.ring))

    # -- attention ----------------------------------------------------------------------------------
    def attend(self, query: Tensor, selection: Any, n: int, scale: float, timings: Any) -> Tensor:
        """``query`` ``[B, H_q, D]`` over the selected pages + sinks + window -> ``[B, H_q, D]``."""
        B, H_q, D = query.shape
        H = self.phys.shape[1]
        ledger = selection.ledger
        if bool((ledger.extra > 0).any()):
            extra = int(ledger.extra.max())
            raise BudgetError(f"layer {self.layer_idx}: the paged path cannot place {extra} extra tokens "
                              "outside pages, sinks and window")
        page_ids = selection.page_ids.cpu()  # [B, H_kv, K] logical, -1 padded
        phys = torch.where(page_ids >= 0, self.phys.gather(2, page_ids.clamp_min(0)), -1)  # [B, H_kv, K]
        pinned = torch.unique(phys[phys >= 0])
        with timings.part("page_load"):
            table = self.store.page_table(phys.reshape(B * H, -1), pin=True)
        try:
            with timings.part("attention"):
                pool = self.store.device_pool
                o_pages, lse_pages = self.kernels.paged_decode_attention(query, pool.k, pool.v, table,
                                                                         scale=scale)
                o_res, lse_res = self._resident(query.reshape(B, H, H_q // H, D), ledger, n, scale)
                out, _ = self.kernels.merge_attention_states(o_pages, lse_pages, o_res.reshape(B, H_q, D),
                                                             lse_res.reshape(B, H_q))
        finally:
            if pinned.numel():
                self.store.release(pinned)
        return out

    def _resident(self, q: Tensor, ledger: Any, n: int, scale: float) -> tuple[Tensor, Tensor]:
        """Dense attention over sinks + window: ``q`` ``[B, H_kv, G, D]`` -> (out, lse)."""
        sink_n = ledger.sink.to(self.device)  # [B, H_kv]
        window_n = ledger.window.to(self.device)
        sk, sv = self.sinks
        rk, rv = self.ring
        keys = torch.cat([sk, rk], dim=2)  # [B, H_kv, sink + keep, D]
        values = torch.cat([sv, rv], dim=2)
        slot = torch.arange(self.sink_tokens, device=self.device)
        ring = torch.arange(self.keep_recent, device=self.device)
        pos = (n - 1) - torch.remainder(n - 1 - ring, self.keep_recent)  # position held by each ring slot
        sink_mask = slot[None, None, :] < sink_n[..., None]  # [B, H_kv, sink]
        window_mask = (pos >= 0)[None, None, :] & (pos[None, None, :] >= (n - window_n)[..., None])
        return attend_with_lse(q, keys, values, torch.cat([sink_mask, window_mask], dim=2), scale)
