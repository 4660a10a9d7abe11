"""``SelectorBase``: the plumbing every built-in selector shares.

It reads keys through a :class:`~icecache.core.keys.KeyReader` (the layer's store-backed reader inside an
``IceCache``: no copy of its own; else a :class:`~icecache.core.keys.KeyCopy` of the keys it was given),
keeps the positions (sinks, paged tokens, recent window; see
:mod:`icecache.selectors.plumbing.positions`), validates inputs, computes each row's token budget
for selected pages (``budget - sinks - window``, per KV head), assembles the :class:`Selection`
with its exact :class:`BudgetLedger`, and calls the ``icecache_selection_made`` observer hook.

A subclass writes three methods:

* ``_build(keys, token_ids, queries)`` at prefill: ``token_ids`` int64 ``[B, H_kv, N]`` is the
  position of each key that goes into pages, ``-1`` for the rest (padding, sinks, window);
* ``_extend(keys, token_ids)`` when tokens leave the window (same meaning, ``[B, H_kv, n]``);
* ``_choose(query, max_tokens)`` per decode step: ``query`` ``[B, H_kv, G, D]``, ``max_tokens``
  int64 ``[B, H_kv]`` -> ``(token_ids [B, H_kv, T], page_ids [B, H_kv, K], num_tokens [B, H_kv])``,
  the chosen paged tokens (``-1`` padded) and pages, ``num_tokens <= max_tokens``;

plus the ``layout`` property.

Eviction (``evicts = True``, :mod:`icecache.selectors.plumbing.eviction`): a subclass drops positions
for good with :meth:`SelectorBase.evict`; runners drain :meth:`SelectorBase.evictions`. The token and
page bases never select an evicted token; a subclass with its own ``_choose`` must skip
:attr:`SelectorBase.evicted` positions itself (``select`` raises :class:`SelectorStateError` otherwise).
``_after_update()`` runs at the end of ``prefill`` and of every ``append`` (a policy that keeps the cache
at its budget evicts there).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import define, field
from torch import Tensor

from icecache.core.budget import BudgetLedger
from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, EvictionError, IceCacheError, TensorSpecError
from icecache.core.keys import KeyCopy, KeyReader, tensor_nbytes
from icecache.selectors.plumbing.fill import compact
from icecache.selectors.plumbing.positions import Positions
from icecache.selectors.types import PageLayout, Selection


class SelectorStateError(IceCacheError, RuntimeError):
    """A selector method was called out of order (``select`` or ``append`` before ``prefill``)."""


def _check_flush(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"{attribute.name} must be a positive integer or None, got {value!r}")


@define(kw_only=True, slots=False)
class SelectorBase:
    """Shared state and plumbing; see the module docstring for what a subclass writes.

    ``flush_tokens``: how many tokens leave the window for pages at once (default: a page, or less
    when the budget left after sinks and window is smaller, so the ledger never overflows).
    ``scale``: attention scale (default ``head_dim ** -0.5``).
    """

    name: ClassVar[str] = "base"
    #: how many of the prompt's last queries ``prefill`` wants (0: none); see ``prefill``
    prompt_query_window: ClassVar[int] = 0
    #: True: drops tokens for good with :meth:`evict`; runners drain :meth:`evictions`
    evicts: ClassVar[bool] = False
    #: True: selects single tokens (any paged token may be evicted); False: whole pages of the layout
    token_level: ClassVar[bool] = False

    config: CacheConfig = field()
    layer_idx: int = 0
    policy: Any = field(default=None, repr=False)
    flush_tokens: int | None = field(default=None, validator=_check_flush)
    scale: float | None = None

    _reader: KeyReader | None = field(default=None, init=False, repr=False)
    _own: KeyCopy | None = field(default=None, init=False, repr=False)  # standalone: the keys given
    _shape: tuple[int, int, int] = field(default=(0, 0, 0), init=False, repr=False)  # (B, H_kv, D)
    _dtype: torch.dtype = field(default=torch.float32, init=False, repr=False)
    _pos: Positions | None = field(default=None, init=False, repr=False)
    #: per-(row, KV head) budgets from the policy's budget policy at prefill (None: config.budget)
    _limit: Tensor | None = field(default=None, init=False, repr=False)
    #: bool [B, H_kv, n'] positions evicted for good (None: none yet; n' <= n, later positions kept)
    _evicted: Tensor | None = field(default=None, init=False, repr=False)
    _pending: Tensor | None = field(default=None, init=False, repr=False)  # bool: evicted, not drained

    def __attrs_post_init__(self) -> None:
        c = self.config
        if c.sink_tokens + c.window_tokens == 0 and c.budget < c.page_size:
            # NOTE: with nothing always attended, a budget below one page could select nothing at all.
            raise ConfigError(
                f"budget={c.budget} is below page_size={c.page_size} with no sink or window "
                f"tokens: a selection could be empty"
            )
        _ = self.effective_flush_tokens  # validates flush_tokens against the budget

    # ------------------------------------------------------------------ protocol
    def prefill(self, keys: Tensor, *, start: Tensor | None = None, queries: Tensor | None = None,
                reader: KeyReader | None = None, budget_queries: Tensor | None = None) -> None:
        """Index the prompt. ``keys``: float ``[B, H_kv, N, D]`` post-RoPE; ``start``: int64 ``[B]``
        first real position per row (left padding); ``queries``: optional float ``[B, H_q, Q, D]``, the
        queries of the prompt's last ``Q <= N`` positions (the observation window; zeros at padding;
        runners pass ``prompt_query_window`` of them: :mod:`~icecache.selectors.plumbing.prompt_queries`);
        ``reader``: where every key of this layer (these and the appended ones) can be read back by
        position later; without one the selector keeps its own copy; ``budget_queries``: the same for
        the policy's budget policy (its ``prompt_query_window`` of them; ``None``: ``queries``), which
        sets the per-head budgets. NOTE: apart, so a budget policy's window never changes what the
        selector itself is given."""
        self._check_keys(keys, "keys")
        B, H, N, D = keys.shape
        start = self._check_start(start, B, N, keys.device)
        for name, q in (("queries", queries), ("budget_queries", budget_queries)):
            if q is not None and (
                q.dim() != 4 or q.shape[0] != B or q.shape[2] > N or q.shape[1] % H or q.shape[3] != D
            ):
                raise TensorSpecError(
                    f"{name} must be [B={B}, H_q (multiple of {H}), Q <= N={N}, D={D}], got "
                    f"{tuple(q.shape)}"
                )
        c = self.config
        self._shape, self._dtype = (B, H, D), keys.dtype
        self._own = KeyCopy.from_keys(keys) if reader is None else None
        self._reader = self._own if reader is None else reader
        self._limit = self._head_budgets(keys, queries if budget_queries is None else budget_queries, start)
        flush = self.effective_flush_tokens
        if self._limit is not None:  # NOTE: the window must fit the smallest head's budget
            flush = max(1, min(flush, int(self._limit.min()) - c.sink_tokens - c.window_tokens + 1))
        self._pos = Positions.after_prefill(
            start,
            N,
            sink_tokens=c.sink_tokens,
            window_tokens=c.window_tokens,
            flush_tokens=flush,
        )
        ids = self._pos.paged_ids(0, N)[:, None].expand(B, H, N)  # [B, H_kv, N]
        self._evicted = self._pending = None
        self._build(keys, ids, queries)
        self._after_update()

    def append(self, keys: Tensor) -> None:
        """Add keys ``[B, H_kv, n, D]`` of new positions; flush window tokens into pages when due."""
        self._require_prefill("append")
        self._check_keys(keys, "keys")
        B, H, D = self._shape
        if keys.shape[:2] != (B, H) or keys.shape[3] != D:
            raise TensorSpecError(f"appended keys must be [B={B}, H_kv={H}, n, D={D}], got "
                                  f"{tuple(keys.shape)}")
        if keys.shape[2] == 0:
            return
        if self._own is not None:
            self._own.append(keys)
        lo, hi = self._pos.advance(keys.shape[2])
        if hi > lo:
            ids = self._pos.paged_ids(lo, hi)[:, None].expand(B, H, hi - lo)
            self._extend(self.keys_at(self._positions(lo, hi)), ids)
        self._after_update()

    def select(self, query: Tensor) -> Selection:
        """Choose what one decode position attends. ``query``: float ``[B, H_q, D]``."""
        self._require_prefill("select")
        q = self._group(query)
        pos = self._pos
        B, H = q.shape[:2]
        sink_n, window_n = pos.sink_count(), pos.window_count()  # [B]
        if self._limit is None:
            max_tokens = (self.config.budget - sink_n - window_n)[:, None].expand(B, H)
        else:
            max_tokens = self._limit - (sink_n + window_n)[:, None]  # [B, H_kv]
        assert bool((max_tokens >= 0).all()), "flush size keeps sinks + window within the budget"
        tokens, pages, count = self._choose(q, max_tokens.contiguous())
        kept = None
        if self._evicted is not None or self.evicts:
            if self._evicted is not None:
                self._check_not_evicted(tokens)
            kept = ((sink_n + window_n)[:, None] + self.kept_paged_mask().sum(-1)).expand(B, H)  # [B, H_kv]
        selection = self._assemble(tokens, pages, count, sink_n, window_n, budget=self.config.budget,
                                   limit=self._limit, kept=kept)
        self._notify(selection)
        return selection

    @property
    def layout(self) -> PageLayout:
        raise NotImplementedError

    @property
    def page_size(self) -> int:
        """Slots per page of :attr:`layout`: ``config.page_size`` unless the selector sizes its own pages
        (IceCache's pages are sized to its index's leaves); storage stores pages of this size."""
        return self.config.page_size

    def empty_layout(self) -> PageLayout:
        """The layout before ``prefill``: no rows, no pages (``[0, 0, 0, page_size]``).

        NOTE: properties must not raise before prefill: ``isinstance(s, Selector)`` reads them."""
        return PageLayout(token_ids=torch.empty(0, 0, 0, self.page_size, dtype=torch.int64))

    def local_page_keys(self, pages: Tensor) -> tuple[Tensor, Tensor]:
        """The keys of ``pages`` int64 ``[B, H_kv, p, S]`` (token positions, ``-1`` padded), read once,
        as ``(keys [B, H_kv, p * S, D], local [B, H_kv, p, S])`` where ``local`` indexes ``keys`` the way
        ``pages`` indexes the layer's positions: what ``summarize(keys, pages)`` wants, without the
        whole layer's keys."""
        B, H, p, S = pages.shape
        keys = self.keys_at(pages.reshape(B, H, p * S))
        local = torch.arange(p * S, device=pages.device).view(1, 1, p, S).expand(B, H, p, S)
        return keys, torch.where(pages >= 0, local, -1)

    # ------------------------------------------------------------------ eviction
    def evict(self, token_ids: Tensor) -> None:
        """Drop positions ``token_ids`` int64 ``[B, H_kv, E]`` (``-1`` padded; already evicted ones are
        ignored) for good: they are never selected or read again, and storage frees them once a runner
        drains :meth:`evictions`.

        Raises :class:`~icecache.core.errors.EvictionError` naming the position for a sink, window or
        padding position (always kept), the page for part of a page when the selector selects whole
        pages (``token_level = False``), and the row when it would be left with nothing to attend;
        :class:`TensorSpecError` for a bad tensor or a position past the last. Nothing changes then."""
        self._require_prefill("evict")
        B, H, _ = self._shape
        n = self.num_tokens
        if not isinstance(token_ids, Tensor) or token_ids.dim() != 3 or tuple(token_ids.shape[:2]) != (B, H) \
                or token_ids.dtype not in (torch.int32, torch.int64):
            raise TensorSpecError(f"evicted positions must be an integer tensor [B={B}, H_kv={H}, E], got "
                                  f"{getattr(token_ids, 'dtype', type(token_ids))} "
                                  f"{tuple(getattr(token_ids, 'shape', ()))}")
        dev = self._pos.start.device
        ids = token_ids.to(dev, torch.int64)
        if bool((ids >= n).any()) or bool((ids < -1).any()):
            bad = int(ids[(ids >= n) | (ids < -1)][0])
            raise TensorSpecError(f"{self.name} selector of layer {self.layer_idx}: cannot evict position "
                                  f"{bad}: positions lie in [0, {n}) (-1: padding)")
        valid = ids >= 0
        paged = self._pos.paged_mask()[:, None].expand(B, H, n)  # [B, H_kv, n]
        if n:
            bad = valid & ~paged.gather(2, ids.clamp(0, n - 1))
            if bool(bad.any()):
                b, h, e = (int(x) for x in torch.nonzero(bad)[0])
                pos = int(ids[b, h, e])
                kind = ("padding" if pos < int(self._pos.start[b]) else
                        "sink" if pos < int(self._pos.first_unsunk[b]) else "window")
                raise EvictionError(f"{self.name} selector of layer {self.layer_idx}: cannot evict position "
                                    f"{pos} of row [b={b}, h={h}]: it is a {kind} token, which is always "
                                    "kept")
        old = self.evicted
        new = torch.zeros(B, H, n + 1, dtype=torch.bool, device=dev)
        new.scatter_(2, torch.where(valid, ids, n), True)
        new = new[..., :n] & ~old
        after = old | new
        if not self.token_level:
            self._check_whole_pages(new, after)
        kept = (self._pos.sink_count() + self._pos.window_count())[:, None] + (paged & ~after).sum(-1)
        if bool((kept < 1).any()):
            b, h = (int(x) for x in torch.nonzero(kept < 1)[0])
            raise EvictionError(f"{self.name} selector of layer {self.layer_idx}: evicting "
                                f"{int(new[b, h].sum())} tokens would leave row [b={b}, h={h}] with nothing "
                                "to attend")
        self._commit_eviction(new, after)

    def _commit_eviction(self, new: Tensor, after: Tensor) -> None:
        """Record ``new`` (bool ``[B, H_kv, n]``, disjoint from what was evicted) and ``after`` (the whole
        evicted set). NOTE: no checks: :meth:`evict` checks; a base that builds ``new`` from kept paged
        tokens only, within a row's budget, may call this directly."""
        self._evicted = after
        if self._pending is None:
            self._pending = new
        else:  # NOTE: a mask, not a list: bounded even when no runner drains it
            n = new.shape[2]
            self._pending = torch.nn.functional.pad(self._pending, (0, n - self._pending.shape[2])) | new

    def evictions(self) -> Tensor | None:
        """The positions evicted since the last call, int64 ``[B, H_kv, E]`` (``-1`` padded), or ``None``
        when there are none: what a runner hands storage."""
        pending, self._pending = self._pending, None
        if pending is None or not bool(pending.any()):
            return None
        B, H, n = pending.shape
        return compact(torch.where(pending, torch.arange(n, device=pending.device).expand(B, H, n), -1))

    @property
    def evicted(self) -> Tensor:
        """bool ``[B, H_kv, n]``: the positions evicted so far."""
        self._require_prefill("evicted")
        B, H, _ = self._shape
        n = self.num_tokens
        if self._evicted is None:
            return torch.zeros(B, H, n, dtype=torch.bool, device=self._pos.start.device)
        if self._evicted.shape[2] < n:
            self._evicted = torch.nn.functional.pad(self._evicted, (0, n - self._evicted.shape[2]))
        return self._evicted

    def kept_paged_mask(self) -> Tensor:
        """bool ``[B, H_kv, n]`` (``[B, 1, n]`` while nothing is evicted): paged positions not evicted
        (what a selection may take)."""
        paged = self.positions.paged_mask()[:, None]  # [B, 1, n]
        return paged & ~self.evicted if self._evicted is not None else paged

    def _after_update(self) -> None:
        """Hook, at the end of ``prefill`` and of every ``append``: a policy that evicts to keep the cache
        at its budget does it here. Default: nothing."""

    def _check_whole_pages(self, new: Tensor, after: Tensor) -> None:
        pages = self.layout.token_ids.to(new.device)  # [B, H_kv, P, S]
        if pages.numel() == 0 or not bool(new.any()):
            return
        B, H, P, S = pages.shape
        valid = pages >= 0
        idx = pages.clamp(min=0).reshape(B, H, P * S)
        hit = (new.gather(2, idx).view(B, H, P, S) & valid).any(-1)
        whole = (after.gather(2, idx).view(B, H, P, S) | ~valid).all(-1)
        bad = hit & ~whole
        if bool(bad.any()):
            b, h, p = (int(x) for x in torch.nonzero(bad)[0])
            raise EvictionError(f"{self.name} selector of layer {self.layer_idx} selects whole pages: "
                                f"evicting part of page {p} of row [b={b}, h={h}] (positions "
                                f"{pages[b, h, p][valid[b, h, p]].tolist()}) would leave it half kept; evict "
                                "every token of the page")

    def _check_not_evicted(self, tokens: Tensor) -> None:
        n = self.num_tokens
        if tokens.numel() == 0 or n == 0:
            return
        t = tokens.to(torch.int64)
        hit = (t >= 0) & self.evicted.gather(2, t.clamp(0, n - 1))
        if bool(hit.any()):
            b, h, e = (int(x) for x in torch.nonzero(hit)[0])
            raise SelectorStateError(f"{self.name} selector of layer {self.layer_idx} chose position "
                                     f"{int(t[b, h, e])} of row [b={b}, h={h}], which it evicted")

    # ------------------------------------------------------------------ subclass hooks
    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        raise NotImplementedError

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        raise NotImplementedError

    def _choose(self, query: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def keys(self) -> Tensor:
        """All keys so far, ``[B, H_kv, n, D]``. NOTE: read through the reader, so inside an ``IceCache``
        this materializes the layer's keys (a transient copy); prefer :meth:`keys_at`."""
        self._require_prefill("keys")
        if self._own is not None:
            return self._own.all
        return self.keys_at(self._positions(0, self._pos.n))

    def keys_at(self, token_ids: Tensor) -> Tensor:
        """Keys at positions ``token_ids`` int64 ``[B, H_kv, ...]`` (``-1``: zeros), ``[B, H_kv, ..., D]``."""
        self._require_prefill("keys_at")
        return self._reader.keys(token_ids).to(self._dtype)

    @property
    def reader(self) -> KeyReader:
        """Where this selector reads keys (pass it on to an index's ``build(reader=...)``)."""
        self._require_prefill("reader")
        return self._reader

    def _positions(self, lo: int, hi: int) -> Tensor:
        B, H, _ = self._shape
        return torch.arange(lo, hi, device=self._pos.start.device).expand(B, H, hi - lo)

    def nbytes(self) -> dict[str, int]:
        """Bytes this selector holds by part (``keys``: its own copy, standalone only; subclasses add)."""
        out = {"keys": self._own.nbytes() if self._own is not None else 0}
        if self._evicted is not None:
            out["evicted"] = tensor_nbytes(self._evicted, self._pending)
        return out

    @property
    def positions(self) -> Positions:
        self._require_prefill("positions")
        return self._pos

    @property
    def num_tokens(self) -> int:
        return 0 if self._pos is None else self._pos.n

    @property
    def effective_flush_tokens(self) -> int:
        if self.flush_tokens is not None:
            if self.flush_tokens > self.config.selected_budget + 1:
                raise ConfigError(
                    f"flush_tokens={self.flush_tokens} would let the window overflow the budget: at most "
                    f"budget - sink_tokens - window_tokens + 1 = {self.config.selected_budget + 1}"
                )
            return self.flush_tokens
        return max(1, min(self.config.page_size, self.config.selected_budget + 1))

    def attention_scale(self, head_dim: int) -> float:
        return self.scale if self.scale is not None else head_dim**-0.5

    def resident_ids(self) -> Tensor:
        """int64 ``[B, R]``: sink and window positions, ``-1`` padded (same for every KV head)."""
        return self._pos.resident_ids()

    def resident_logits(self, query: Tensor) -> Tensor:
        """Exact ``scale * q.k`` of the sink and window tokens: ``query`` ``[B, H_kv, G, D]`` ->
        ``[B, H_kv, G, R]``, one column per resident slot, ``-inf`` at slots holding none (padding).
        The columns follow :meth:`resident_ids`, or the reader's own block when it offers
        ``resident_block`` (an ``IceCache`` layer: sinks then its ring of recent positions); what
        consumes them (a softmax normalizer, :func:`~icecache.selectors.plumbing.merge.merge_heads`)
        does not depend on their order."""
        B, H, G, D = query.shape
        block = getattr(self._reader, "resident_block", None)
        if callable(block):
            # NOTE: the reader's sink buffer and ring as held: no per-position lookup, no copy
            k, _, positions = block(self._pos.sink_count(), self._pos.window_count())
            valid = positions >= 0  # [B, H_kv, R]
        else:
            ids = self.resident_ids()  # [B, R]
            k = self.keys_at(ids[:, None].expand(B, H, ids.shape[1]))  # [B, H_kv, R, D]
            valid = (ids >= 0)[:, None]
        logits = (query.to(k.dtype) @ k.transpose(-1, -2)) * self.attention_scale(D)
        return logits.masked_fill(~valid[:, :, None], float("-inf"))

    def _head_budgets(self, keys: Tensor, queries: Tensor | None, start: Tensor) -> Tensor | None:
        """Per-head budgets ``[B, H_kv]`` from the policy's budget policy (``None``: uniform)."""
        budgets = getattr(self.policy, "budgets", None)
        geo = self.config.geometry
        if budgets is None or budgets.uniform or geo is None or self.layer_idx < self.config.dense_layers:
            return None
        return budgets.checked_head_budgets(self.layer_idx, geo.num_layers, keys=keys, queries=queries,
                                            start=start)

    @property
    def head_budgets(self) -> Tensor | None:
        """int64 ``[B, H_kv]``: each row's budget set at prefill by the budget policy, or ``None`` when
        every row has ``config.budget``."""
        return self._limit

    def _group(self, query: Tensor) -> Tensor:
        if not isinstance(query, Tensor) or query.dim() != 3 or not query.is_floating_point():
            raise TensorSpecError(
                f"query must be a float tensor [B, H_q, D], got "
                f"{getattr(query, 'dtype', type(query))} {tuple(getattr(query, 'shape', ()))}"
            )
        B, H, D = self._shape
        if query.shape[0] != B or query.shape[2] != D or query.shape[1] % H:
            raise TensorSpecError(
                f"query must be [B={B}, H_q (a multiple of H_kv={H}), D={D}], got {tuple(query.shape)}"
            )
        return query.view(B, H, query.shape[1] // H, D)  # [B, H_kv, G, D]

    def _assemble(
        self,
        tokens: Tensor,
        pages: Tensor,
        count: Tensor,
        sink_n: Tensor,
        window_n: Tensor,
        *,
        budget: int,
        dense: bool = False,
        limit: Tensor | None = None,
        kept: Tensor | None = None,
    ) -> Selection:
        B, H = count.shape
        resident = self.resident_ids()[:, None].expand(B, H, -1)  # [B, H_kv, R]
        token_ids = compact(torch.cat([resident, tokens.to(torch.int64)], dim=2))
        ledger = BudgetLedger(
            budget=budget,
            sink=sink_n[:, None].expand(B, H),
            window=window_n[:, None].expand(B, H),
            selected=count,
            dense=dense,
            limit=limit,
            kept=kept,
        )
        return Selection(token_ids=token_ids, page_ids=pages.to(torch.int64), ledger=ledger)

    def _notify(self, selection: Selection) -> None:
        if self.policy is not None:
            caller = self.policy.hook.icecache_selection_made
            if caller.get_hookimpls():  # NOTE: no listener, no call (pluggy's dispatch costs every step)
                caller(layer_idx=self.layer_idx, selection=selection)

    def _require_prefill(self, what: str) -> None:
        if self._pos is None:
            raise SelectorStateError(
                f"{self.name} selector of layer {self.layer_idx}: {what}() before prefill()"
            )

    def _check_keys(self, keys: Tensor, what: str) -> None:
        if not isinstance(keys, Tensor) or keys.dim() != 4 or not keys.is_floating_point():
            raise TensorSpecError(
                f"{what} must be a float tensor [B, H_kv, N, D], got "
                f"{getattr(keys, 'dtype', type(keys))} {tuple(getattr(keys, 'shape', ()))}"
            )
        geo = self.config.geometry
        if geo is not None and (keys.shape[1] != geo.num_kv_heads or keys.shape[3] != geo.head_dim):
            raise TensorSpecError(
                f"{what} have {keys.shape[1]} KV heads of dim {keys.shape[3]}, the config's "
                f"geometry says {geo.num_kv_heads} of dim {geo.head_dim}"
            )

    @staticmethod
    def _check_start(start: Tensor | None, B: int, N: int, device: torch.device) -> Tensor:
        if start is None:
            return torch.zeros(B, dtype=torch.int64, device=device)
        start = torch.as_tensor(start, device=device)
        if start.dtype not in (torch.int32, torch.int64) or start.shape != (B,):
            raise TensorSpecError(
                f"start must be an integer tensor [B={B}], got {start.dtype} {tuple(start.shape)}"
            )
        start = start.to(torch.int64)
        if bool(((start < 0) | (start > N)).any()):
            raise TensorSpecError(f"start values must lie in [0, N={N}], got {start.tolist()}")
        return start
