"""The one home of a sparse layer's KV: pages in the tiered store, sinks and recent window on the device.

Every paged token's key and value live once, in a page of the shared
:class:`~icecache.storage.store.TieredStore` (host tier, spilling to disk; the device tier caches the
pages attention reads). The first ``sink_tokens`` real positions of each row and the ``keep_recent``
newest positions stay on the device (the window is attended every step and moves into pages a flush
at a time). Nothing else holds the layer's keys: the selector and its index read them through this
object, a :class:`~icecache.core.keys.KeyReader` (``keys(token_ids)``).

A decode step of a page-based selector loads the selected pages (one bulk copy for the missing ones),
runs the kernels' sparse paged attention over them, attends sinks + window densely and merges the two;
a token-level selector's tokens are gathered (:meth:`SparseLayerKV.gather`) and attended densely.

Positions follow the selector convention (:mod:`icecache.selectors.plumbing.positions`): sinks are the
first ``ledger.sink`` real positions of a row, the window its last ``ledger.window`` positions.
Pages only gain tokens (the layout contract), so a page is written once and appended to, never moved.

Eviction (a selector that drops tokens for good: :mod:`icecache.selectors.plumbing.eviction`):
:meth:`SparseLayerKV.evict` forgets positions (they read as zeros, they are never located again) and
frees a page on every tier of the store once all its tokens are gone; a page none of whose tokens is
left when it would first be written is never stored at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from icecache.core.errors import BudgetError, ConfigError
from icecache.core.keys import tensor_nbytes
from icecache.index.hierarchy.state import grow
from icecache.integrations.hf.dense import apply_sinks, attend_with_lse


class SparseLayerKV:
    """K/V of one sparse layer ``[B, H_kv, n, D]`` without a contiguous copy; see the module docstring.

    Tables (CPU): ``phys`` int64 ``[B, H_kv, P]`` store page id of each logical page (``-1``: none yet);
    ``written_len`` int32 / ``written_sum`` int64 ``[B, H_kv, P]``: tokens written into each page and the
    sum of their positions (a changed prefix is a broken layout contract); ``loc`` int32 ``[B, H_kv, Ncap]``:
    ``page * S + slot`` of each paged position (``-1``: not in a page).
    """

    def __init__(self, store: Any, kernels: Any, layer_idx: int, *, sink_tokens: int, keep_recent: int,
                 device: torch.device, dtype: torch.dtype):
        self.store, self.kernels, self.layer_idx = store, kernels, layer_idx
        self.sink_tokens, self.keep_recent, self.device = sink_tokens, keep_recent, device
        self.dtype = dtype  # the model's KV dtype (pages may be stored in another)
        self.S = store.spec.page_size
        self.phys: Tensor | None = None
        self.written_len: Tensor | None = None
        self.written_sum: Tensor | None = None
        self.loc: Tensor | None = None
        self.start: Tensor | None = None  # int64 [B] (CPU)
        # NOTE: sinks and ring are views of one buffer per K and V, so attention and a selector's
        # resident logits read them as one block, no concatenation per layer and step
        self.block: tuple[Tensor, Tensor] | None = None  # [B, H_kv, sink + keep_recent, D] each
        self.sinks: tuple[Tensor, Tensor] | None = None  # [B, H_kv, sink, D] each: views of ``block``
        self.ring: tuple[Tensor, Tensor] | None = None  # [B, H_kv, keep_recent, D]: recent positions
        self.n = 0  # positions so far
        self._chunk: tuple[Tensor, Tensor, int] | None = None  # K/V being added by the current update
        self._sink_end = 0  # positions before this may still have to be copied into the sinks
        self.gone: Tensor | None = None  # bool [B, H_kv, n'] (CPU): evicted positions (None: none)
        self._dead = np.zeros(0, dtype=np.int32)  # [store page ids]: evicted tokens of each stored page

    # -- KeyReader -------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.n

    def keys(self, token_ids: Tensor) -> Tensor:
        """Keys at positions ``token_ids`` int64 ``[B, H_kv, ...]`` (``-1``: zeros), ``[B, H_kv, ..., D]``."""
        B, H = token_ids.shape[:2]
        tail = token_ids.shape[2:]
        k = self._fetch(token_ids.reshape(B, H, -1), values=False)
        return k.view(B, H, *tail, k.shape[-1])

    def page_keys(self, page_ids: Tensor, *, zero_missing: bool = True) -> Tensor:
        """Keys of the selector's layout pages ``page_ids`` int64 ``[B, H_kv, K]`` (``-1``: zeros, or any
        finite values with ``zero_missing=False``) as last written, ``[B, H_kv, K, S, D]`` in layout slot
        order: whole pages in one gather per tier, for an index's exact rescoring (a page changed since
        the last write reads as it was then)."""
        B, H, K = page_ids.shape
        pid = page_ids.to("cpu", torch.int64)
        known = (pid >= 0) & (pid < self.phys.shape[2])
        phys = torch.where(known, self.phys.gather(2, pid.clamp(0, max(self.phys.shape[2] - 1, 0))), -1)
        keys = self.store.read_keys(phys.reshape(-1), zero_missing=zero_missing)
        return keys.view(B, H, K, self.S, -1).to(self.device, self.dtype)

    def resident_block(self, sink_n: Tensor, window_n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The sinks and the recent window as held, for attention over them or a selector's resident
        logits (every layer and step): ``(keys, values)`` ``[B, H_kv, sink_tokens + keep_recent, D]``
        (the sink buffer, then the ring; no copy) and ``positions`` int64 ``[B, H_kv, sink_tokens +
        keep_recent]``, the position each slot holds, ``-1`` where it holds none of a row's ``sink_n``
        sinks or ``window_n`` window tokens (int ``[B]`` or ``[B, H_kv]``: the selection's ledger)."""
        B, H = self.block[0].shape[:2]
        n, keep = self.n, self.keep_recent
        sink_n = sink_n.to(self.device).reshape(B, -1, 1)
        window_n = window_n.to(self.device).reshape(B, -1, 1)
        slot = torch.arange(self.sink_tokens, device=self.device)
        sinks = torch.where(slot < sink_n, self.start.to(self.device)[:, None, None] + slot, -1)
        held = (n - 1) - torch.remainder(n - 1 - torch.arange(keep, device=self.device), keep)  # ring slots
        recent = torch.where((held >= 0) & (held >= n - window_n), held, -1)
        positions = torch.cat([sinks.expand(B, -1, -1), recent.expand(B, -1, -1)], dim=2).expand(B, H, -1)
        return self.block[0], self.block[1], positions

    def gather(self, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values at ``token_ids`` int64 ``[B, H_kv, T]`` (``-1``: zeros), ``[B, H_kv, T, D]``."""
        return self._fetch(token_ids, values=True)

    def gather_all(self) -> tuple[Tensor, Tensor]:
        """Every position's K/V ``[B, H_kv, n, D]``: a transient copy (a multi-token update's attention)."""
        B, H = self.phys.shape[:2]
        return self.gather(torch.arange(self.n).expand(B, H, self.n))

    def _gone_flat(self, row: Tensor, pos: Tensor) -> Tensor:
        """bool, shaped like ``pos``: whether position ``pos`` of row ``row`` (``b * H_kv + h``) is gone."""
        B, H, cap = self.gone.shape
        inside = (pos >= 0) & (pos < cap)
        flat = self.gone.view(-1)
        if flat.numel() == 0:
            return torch.zeros_like(pos, dtype=torch.bool)
        idx = torch.where(inside, row * cap + pos, 0)
        return flat.index_select(0, idx.reshape(-1)).view(pos.shape) & inside

    def _fetch(self, token_ids: Tensor, *, values: bool) -> Any:
        """K (and V) ``[B, H_kv, T, D]`` of positions from wherever they live: the chunk being added, a
        page in the store, the window ring or the sinks (``-1`` and padding: zeros). Flat row gathers
        (``index_select`` / ``index_copy_``) over ``r = b * H_kv + h``."""
        B, H, T = token_ids.shape
        R, D = B * H, self.ring[0].shape[-1]
        pos = token_ids.to("cpu", torch.int64).reshape(R * T)
        row = torch.arange(R).repeat_interleave(T)
        outs = [torch.zeros(R * T, D, dtype=self.dtype, device=self.device) for _ in range(1 + values)]

        def put(idx: Tensor, sources: tuple[Tensor, ...], rows: Tensor) -> None:
            dst = idx.to(self.device)
            for out, src in zip(outs, sources, strict=False):
                flat = src.reshape(-1, D)
                got = flat.index_select(0, rows.to(flat.device))
                out.index_copy_(0, dst, got.to(self.device, self.dtype))

        known = (pos >= 0) & (pos < self.n)
        if self.gone is not None:  # NOTE: evicted positions read as zeros, wherever their bytes still are
            known &= ~self._gone_flat(row, pos)
        if self._chunk is not None:
            ck, cv, first = self._chunk
            n_chunk = ck.shape[2]
            idx = (known & (pos >= first)).nonzero()[:, 0]
            if idx.numel():
                put(idx, (ck, cv), row[idx] * n_chunk + pos[idx] - first)
                known[idx] = False
        cap = self.loc.shape[2]
        inside = known & (pos < cap)  # NOTE: the table covers paged positions only
        # NOTE: one masked lookup (no nonzero + scatter): outside entries read slot 0 and are dropped
        if cap:
            loc = self.loc.view(-1).index_select(0, torch.where(inside, row * cap + pos, 0)).long()
            loc = loc.masked_fill_(~inside, -1)
        else:
            loc = torch.full((R * T,), -1, dtype=torch.int64)
        idx = (loc >= 0).nonzero()[:, 0]
        if idx.numel():
            at = loc[idx]
            rec = self.store.read_tokens(at // self.S, at % self.S, values=values)
            dst = idx.to(self.device)
            if values:
                outs[0].index_copy_(0, dst, rec[:, 0].to(self.device, self.dtype))
                outs[1].index_copy_(0, dst, rec[:, 1].to(self.device, self.dtype))
            else:
                outs[0].index_copy_(0, dst, rec.to(self.device, self.dtype))
        rest = known & (loc < 0)
        start = self.start.repeat_interleave(H)[row]  # [R*T] first real position of each entry's row
        in_sink = rest & (pos >= start) & (pos < start + self.sink_tokens)
        in_ring = rest & ~in_sink & (pos >= self.n - self.keep_recent)
        width = self.sink_tokens + self.keep_recent  # NOTE: rows of the block: sinks, then the ring
        idx = in_sink.nonzero()[:, 0]
        if idx.numel():
            put(idx, self.block, row[idx] * width + pos[idx] - start[idx])
        idx = in_ring.nonzero()[:, 0]
        if idx.numel():
            put(idx, self.block, row[idx] * width + self.sink_tokens + pos[idx] % self.keep_recent)
        lost = rest & ~in_sink & ~in_ring & (pos >= start + self.sink_tokens)
        assert not bool(lost.any()), "a paged position is neither in the store nor in the window ring"
        shaped = [o.view(B, H, T, D) for o in outs]
        return (shaped[0], shaped[1]) if values else shaped[0]

    # -- prefill and appends -----------------------------------------------------------------------------
    def begin(self, keys: Tensor, values: Tensor, start: Tensor) -> None:
        """The prompt's K/V ``[B, H_kv, N, D]`` (held only until :meth:`end_chunk`): sinks and the ring."""
        B, H, N, D = keys.shape
        self.start = start.to("cpu", torch.int64)
        self.phys = torch.full((B, H, 0), -1, dtype=torch.int64)
        self.written_len = torch.zeros(B, H, 0, dtype=torch.int32)
        self.written_sum = torch.zeros(B, H, 0, dtype=torch.int64)
        self.loc = torch.full((B, H, N), -1, dtype=torch.int32)
        pos = (self.start[:, None] + torch.arange(self.sink_tokens)).clamp(max=max(N - 1, 0))  # [B, sink]
        idx = pos.to(keys.device)[:, None, :, None].expand(B, H, self.sink_tokens, D)
        shape = (B, H, self.sink_tokens + self.keep_recent, D)
        self.block = (torch.zeros(shape, dtype=keys.dtype, device=self.device),
                      torch.zeros(shape, dtype=keys.dtype, device=self.device))
        self.sinks = tuple(b[:, :, :self.sink_tokens] for b in self.block)
        self.ring = tuple(b[:, :, self.sink_tokens:] for b in self.block)
        for sink, src in zip(self.sinks, (keys, values), strict=True):
            sink.copy_(src.gather(2, idx))
        self.n = 0
        self.gone, self._dead = None, np.zeros(0, dtype=np.int32)
        # NOTE: a prompt shorter than the sinks: positions up to here are sinks too; append fills them
        self._sink_end = int((self.start + self.sink_tokens).max()) if B else 0
        self.append(keys, values)

    def append(self, keys: Tensor, values: Tensor) -> None:
        """New positions ``[B, H_kv, n, D]``: readable at once (as the current chunk, until
        :meth:`end_chunk`) and kept in the ring of recent positions."""
        n = keys.shape[2]
        self._chunk = (keys, values, self.n)
        if self.n < self._sink_end and self.n + n > int(self.start.min()):
            self._fill_sinks(keys, values)
        skip = max(0, n - self.keep_recent)
        slots = (torch.arange(self.n + skip, self.n + n) % self.keep_recent).to(self.device)
        self.ring[0].index_copy_(2, slots, keys[:, :, skip:].to(self.device))
        self.ring[1].index_copy_(2, slots, values[:, :, skip:].to(self.device))
        self.n += n

    def _fill_sinks(self, keys: Tensor, values: Tensor) -> None:
        """Copy new positions that fall among a row's first ``sink_tokens`` real positions into its sinks
        (only while some row's prompt was shorter than its sinks: those sink slots are still empty)."""
        pos = torch.arange(self.n, self.n + keys.shape[2])
        slot = pos[None, :] - self.start[:, None]  # [B, n] sink slot of each new position
        b, i = ((slot >= 0) & (slot < self.sink_tokens)).nonzero(as_tuple=True)
        if b.numel():
            s, b_dev = slot[b, i].to(self.device), b.to(self.device)
            b_src, i_src = b.to(keys.device), i.to(keys.device)
            for sink, new in zip(self.sinks, (keys, values), strict=True):
                sink[b_dev, :, s] = new[b_src, :, i_src].to(self.device, sink.dtype)

    def end_chunk(self) -> None:
        """Forget the current chunk (its paged tokens are in the store now, the rest in the ring)."""
        self._chunk = None

    def sync(self, layout: Tensor) -> int:
        """Write the tokens that joined pages of ``layout`` int64 ``[B, H_kv, P, S]`` since the last call
        (new pages get store ids; a page that gained tokens is rewritten with them appended). Returns the
        number of pages written. A page whose earlier tokens changed breaks the layout contract:
        :class:`ConfigError`."""
        B, H, P, S = layout.shape
        if S != self.S:
            raise ConfigError(f"layer {self.layer_idx}: the selector's pages have {S} slots, the store's "
                              f"{self.S}")
        layout = layout.cpu()
        P0 = self.phys.shape[2]
        if P > P0:  # NOTE: page ids are stable; new pages are appended
            self.phys = torch.cat([self.phys, torch.full((B, H, P - P0), -1, dtype=torch.int64)], dim=2)
            self.written_len = torch.cat([self.written_len, torch.zeros(B, H, P - P0, dtype=torch.int32)], 2)
            self.written_sum = torch.cat([self.written_sum, torch.zeros(B, H, P - P0, dtype=torch.int64)], 2)
        valid = layout >= 0
        lens = valid.sum(-1).to(torch.int32)  # [B, H_kv, P]
        changed = lens != self.written_len
        if not bool(changed.any()):
            return 0
        b, h, p = torch.nonzero(changed, as_tuple=True)
        tokens = layout[b, h, p]  # [n, S]
        old = self.written_len[b, h, p].long()  # [n]
        slot = torch.arange(S)
        prefix = torch.where(slot[None] < old[:, None], tokens, 0).sum(-1)
        if bool((prefix != self.written_sum[b, h, p]).any() | (lens[b, h, p] < old).any()):
            i = int(torch.nonzero((prefix != self.written_sum[b, h, p]) | (lens[b, h, p] < old))[0])
            raise ConfigError(f"layer {self.layer_idx}: page {int(p[i])} of row [b={int(b[i])}, "
                              f"h={int(h[i])}] lost or reordered tokens; a selector's pages may only gain "
                              "tokens")
        gone = None
        if self.gone is not None:
            # NOTE: evicted positions are never located; a page with none left is never stored
            gone = self._gone_flat((b * H + h)[:, None].expand(-1, S), tokens) & (tokens >= 0)  # [n, S]
            dead = (self.phys[b, h, p] < 0) & ~((tokens >= 0) & ~gone).any(-1)
            if bool(dead.any()):
                bd, hd, pd = b[dead], h[dead], p[dead]
                self.written_len[bd, hd, pd] = lens[bd, hd, pd]
                self.written_sum[bd, hd, pd] = torch.where(valid[bd, hd, pd], tokens[dead], 0).sum(-1)
                b, h, p, tokens, old, gone = (x[~dead] for x in (b, h, p, tokens, old, gone))
                if b.numel() == 0:
                    return 0
        fresh = self.phys[b, h, p] < 0
        n_fresh = int(fresh.sum())
        if n_fresh:
            self.phys[b[fresh], h[fresh], p[fresh]] = self.store.allocate(n_fresh, seq=b[fresh],
                                                                          layer=self.layer_idx, head=h[fresh])
        ids = self.phys[b, h, p]
        rows = b * H + h
        if n_fresh == ids.numel() and self._in_chunk(tokens):
            # the prompt's pages (and a long chunk's): every slot comes straight from the chunk
            k, v = self._chunk_pages(rows, tokens)
            self.store.write_pages(ids, k, v, lens[b, h, p])
            placed = tokens >= 0
        else:
            sd = self.store.spec.dtype
            k = torch.zeros(ids.numel(), S, self.ring[0].shape[-1], dtype=sd)
            v = torch.zeros_like(k)
            if bool((~fresh).any()):  # pages that gain tokens: their earlier slots as stored
                k[~fresh], v[~fresh], _ = self.store.read_pages(ids[~fresh])
            placed = (slot[None] >= old[:, None]) & (tokens >= 0)  # [n, S] slots to fill
            i, s = torch.nonzero(placed, as_tuple=True)
            nk, nv = self._fetch_rows(rows[i], tokens[i, s], values=True)
            k[i, s], v[i, s] = nk.cpu().to(sd), nv.cpu().to(sd)
            self.store.write_pages(ids, k, v, lens[b, h, p])
        if gone is not None:
            # NOTE: a page freed once and gaining tokens again is stored anew: its earlier slots are dead
            reborn = fresh[:, None] & (slot[None] < old[:, None])
            self._add_dead(ids, (reborn | (placed & gone)).sum(-1))
            placed = placed & ~gone
        i, s = torch.nonzero(placed, as_tuple=True)
        self._note_locations(b[i], h[i], tokens[i, s], ids[i] * S + s)
        self.written_len[b, h, p] = lens[b, h, p]
        self.written_sum[b, h, p] = torch.where(valid[b, h, p], tokens, 0).sum(-1)
        return int(b.numel())

    def evict(self, token_ids: Tensor) -> int:
        """Forget positions ``token_ids`` int64 ``[B, H_kv, E]`` (``-1`` padded; repeats and positions
        evicted before are ignored) for good: they read as zeros from now on, and every stored page all
        of whose tokens are gone is freed on every tier of the store (its slots go back to the tiers,
        its id to the pool). Returns the number of pages freed. Sinks and window are the selector's to
        keep (:meth:`~icecache.selectors.bases.selector.SelectorBase.evict` refuses them)."""
        B, H = self.phys.shape[:2]
        # NOTE: numpy on CPU views of the tables: a step evicts a few tokens per row, and torch's
        # per-op overhead dominated such small index operations
        ids = token_ids.to("cpu", torch.int64).numpy()
        b, h, e = np.nonzero(ids >= 0)
        pos = ids[b, h, e]
        if self.gone is None:
            self.gone = torch.zeros(B, H, self.n, dtype=torch.bool)
        if self.gone.shape[2] < self.n:
            self.gone = grow(self.gone, 2, self.n, False)
        if pos.size == 0:
            return 0
        if int(pos.max()) >= self.n:
            raise ConfigError(f"layer {self.layer_idx}: cannot evict position {int(pos.max())}: the layer "
                              f"holds {self.n}")
        gone = self.gone.numpy()
        fresh = ~gone[b, h, pos]
        b, h, pos = b[fresh], h[fresh], pos[fresh]
        gone[b, h, pos] = True
        inside = pos < self.loc.shape[2]
        b, h, pos = b[inside], h[inside], pos[inside]
        table = self.loc.numpy()
        loc = table[b, h, pos].astype(np.int64)
        stored = loc >= 0
        table[b[stored], h[stored], pos[stored]] = -1
        pages = loc[stored] // self.S
        if pages.size == 0:
            return 0
        uniq, counts = np.unique(pages, return_counts=True)
        self._add_dead(torch.from_numpy(uniq), torch.from_numpy(counts))
        empty = self._dead[uniq] >= self.store.pool.written_lens(uniq)
        freed = uniq[empty]
        if freed.size:
            self.store.free(torch.from_numpy(freed))
            self._dead[freed] = 0
            phys = self.phys.numpy()
            phys[np.isin(phys, freed)] = -1
        return int(freed.size)

    def _add_dead(self, page_ids: Tensor, counts: Tensor) -> None:
        """Count ``counts`` more evicted tokens in stored pages ``page_ids`` int64 ``[n]`` (distinct)."""
        ids = page_ids.numpy()
        if ids.size == 0:
            return
        top = int(ids.max()) + 1
        if top > self._dead.size:
            self._dead = np.concatenate([self._dead, np.zeros(max(top, 2 * self._dead.size) - self._dead.size,
                                                              dtype=np.int32)])
        self._dead[ids] += counts.numpy().astype(np.int32)

    def _in_chunk(self, tokens: Tensor) -> bool:
        """Whether every position of ``tokens`` (``-1``: none) lies in the chunk being added."""
        if self._chunk is None:
            return False
        ck, _, first = self._chunk
        outside = ((tokens < first) & (tokens >= 0)) | (tokens >= first + ck.shape[2])
        return not bool(outside.any())

    def _chunk_pages(self, rows: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """K, V ``[n, S, D]`` (store dtype, CPU, zeros at ``-1``) of pages ``tokens`` int64 ``[n, S]`` of
        rows ``rows`` ``[n]``, all in the current chunk: one row gather each, no intermediate copies
        (prefill wrote pages 3x slower through the general :meth:`_fetch`)."""
        ck, cv, first = self._chunk
        n, S = tokens.shape
        D, width = ck.shape[-1], ck.shape[2]
        used = tokens >= 0
        src = torch.where(used, rows[:, None] * width + tokens - first, 0).reshape(-1)  # [n*S]
        sd = self.store.spec.dtype

        def take(x: Tensor) -> Tensor:
            got = x.reshape(-1, D).index_select(0, src.to(x.device)).view(n, S, D)
            return got.to("cpu", sd).masked_fill_(~used[..., None], 0)

        return take(ck), take(cv)

    def _fetch_rows(self, rows: Tensor, positions: Tensor, *, values: bool) -> Any:
        """K (and V) ``[M, D]`` of ``positions[m]`` in row ``rows[m]`` (``b * H_kv + h``), in one fetch."""
        B, H = self.phys.shape[:2]
        M = rows.numel()
        counts = torch.bincount(rows, minlength=B * H)
        T = int(counts.max()) if M else 0
        order = torch.argsort(rows, stable=True)
        rank = torch.empty(M, dtype=torch.int64)
        rank[order] = torch.arange(M) - (counts.cumsum(0) - counts)[rows[order]]
        grid = torch.full((B * H, T), -1, dtype=torch.int64)
        grid[rows, rank] = positions
        got = self._fetch(grid.view(B, H, T), values=values)

        def pick(x: Tensor) -> Tensor:
            return x.reshape(B * H, T, -1)[rows.to(x.device), rank.to(x.device)]

        return (pick(got[0]), pick(got[1])) if values else pick(got)

    def _note_locations(self, b: Tensor, h: Tensor, positions: Tensor, where: Tensor) -> None:
        top = int(positions.max()) + 1 if positions.numel() else 0
        if top > self.loc.shape[2]:
            self.loc = grow(self.loc, 2, top, -1)
        if where.numel() and int(where.max()) >= 2**31:
            raise ConfigError(f"layer {self.layer_idx}: page ids beyond {2**31 // self.S} do not fit the "
                              "int32 location table")
        self.loc[b, h, positions] = where.to(torch.int32)

    def nbytes(self) -> dict[str, int]:
        """Bytes held: ``device`` (sinks and the ring) and ``tables`` (host: page ids, lengths, locations)."""
        return {"device": tensor_nbytes(*(self.block or ())),
                "tables": tensor_nbytes(self.phys, self.written_len, self.written_sum, self.loc, self.gone)
                + self._dead.nbytes}

    # -- attention ----------------------------------------------------------------------------------
    def attend(self, query: Tensor, selection: Any, scale: float, timings: Any, *,
               softcap: float | None = None, sinks: Tensor | None = None) -> Tensor:
        """``query`` ``[B, H_q, D]`` over the selected pages + sinks + window -> ``[B, H_q, D]``;
        ``softcap`` caps every score (pages and resident alike), ``sinks`` ``[H_q]`` join the merged
        softmax (:func:`~icecache.integrations.hf.dense.apply_sinks`)."""
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
                q = query.to(pool.k.dtype)
                # NOTE: softcap is passed only when set, so backends without it keep working for others.
                extra = {} if softcap is None else {"softcap": softcap}
                o_pages, lse_pages = self.kernels.paged_decode_attention(q, pool.k, pool.v, table,
                                                                         scale=scale, **extra)
                o_res, lse_res = self.resident(query.reshape(B, H, H_q // H, D), ledger, scale, softcap)
                out, lse = self.kernels.merge_attention_states(o_pages.to(query.dtype), lse_pages,
                                                               o_res.reshape(B, H_q, D),
                                                               lse_res.reshape(B, H_q))
                out = apply_sinks(out, lse, sinks)
        finally:
            if pinned.numel():
                self.store.release(pinned)
        return out

    def attend_tokens(self, query: Tensor, selection: Any, scale: float, timings: Any, *,
                      softcap: float | None = None, sinks: Tensor | None = None) -> Tensor:
        """``query`` ``[B, H_q, D]`` over a token-level selection -> ``[B, H_q, D]``: sinks and window
        as held (the resident block, no copy) beside the other selected tokens, read from their pages."""
        B, H_q, D = query.shape
        H = self.phys.shape[1]
        ledger, ids = selection.ledger, selection.token_ids.to("cpu", torch.int64)
        first = self.start[:, None, None]
        sink_end = first + ledger.sink.to("cpu").reshape(B, -1, 1)
        window_start = self.n - ledger.window.to("cpu").reshape(B, -1, 1)
        # NOTE: the resident positions are exactly what resident_block holds for this ledger
        others = ids.masked_fill(((ids >= first) & (ids < sink_end)) | (ids >= window_start), -1)
        with timings.part("page_load"):
            keys, values = self._paged_rows(others)
        with timings.part("attention"):
            block_k, block_v, held = self.resident_block(ledger.sink, ledger.window)
            keys = torch.cat([block_k, keys], dim=2)
            values = torch.cat([block_v, values], dim=2)
            mask = torch.cat([held >= 0, others.to(self.device) >= 0], dim=2)
            out, lse = attend_with_lse(query.reshape(B, H, H_q // H, D), keys, values, mask, scale, softcap)
            return apply_sinks(out.reshape(B, H_q, D), lse.reshape(B, H_q), sinks)

    def _paged_rows(self, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """K/V ``[B, H_kv, T, D]`` of paged positions ``token_ids`` (``-1``: any finite values, for a
        masked attention): one read of the store, no scatter into a zeroed buffer. Positions outside
        pages (the chunk, the ring) or evicted ones take the general :meth:`gather`."""
        B, H, T = token_ids.shape
        cap = self.loc.shape[2]
        valid = token_ids >= 0
        if self.gone is not None or self._chunk is not None or cap == 0 or not bool(valid.any()):
            return self.gather(token_ids)
        inside = valid & (token_ids < cap)
        loc = self.loc.gather(2, token_ids.clamp(0, cap - 1)).long().masked_fill_(~inside, -1)
        if bool((valid & (loc < 0)).any()):
            return self.gather(token_ids)
        loc = torch.where(valid, loc, loc.max())  # NOTE: padding reads a stored slot; the mask drops it
        rec = self.store.read_tokens(loc // self.S, loc % self.S, values=True)
        rec = rec.view(B, H, T, 2, -1).to(self.device, self.dtype)
        return rec[..., 0, :], rec[..., 1, :]

    def resident(self, q: Tensor, ledger: Any, scale: float, softcap: float | None = None
                 ) -> tuple[Tensor, Tensor]:
        """Dense attention over sinks + window: ``q`` ``[B, H_kv, G, D]`` -> (out, lse)."""
        keys, values, positions = self.resident_block(ledger.sink, ledger.window)
        return attend_with_lse(q, keys, values, positions >= 0, scale, softcap)
