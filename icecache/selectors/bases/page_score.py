"""``PageScoreSelector``: rank pages by a score of their summaries, fill the budget greedily.

A subclass writes ``score(query, summaries)``; optionally ``build_layout`` / ``extend_layout``
(default: pages of ``page_size`` consecutive positions) and ``summarize`` (default
:func:`~icecache.selectors.plumbing.layout.summarize_pages`: centroid, min, max, radius, lens).

``score`` gets ``query`` float ``[B, H_kv, G, D]`` and returns ``[B, H_kv, G, P]`` (one score per
query head: the base merges the group with ``merge``, see :mod:`~icecache.selectors.plumbing.merge`)
or ``[B, H_kv, P]`` (already one ranking per KV head). Pages without tokens are never taken.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from attrs import define, field
from torch import Tensor

from icecache.core.keys import tensor_nbytes
from icecache.selectors.bases.selector import SelectorBase
from icecache.selectors.plumbing.fill import greedy_fill
from icecache.selectors.plumbing.layout import contiguous_layout, summarize_pages
from icecache.selectors.plumbing.merge import check_merge, merge_heads
from icecache.selectors.types import PageLayout


@define(kw_only=True, slots=False)
class PageScoreSelector(SelectorBase):
    """Base of page-ranking selectors. ``merge``: GQA merge, one of ``mass``, ``max``, ``mean``."""

    #: the :class:`~icecache.index.base.PageSummaries` fields ``score`` reads (None: all); the others are
    #: not computed or kept (NOTE: Quest's min/max alone are 2/3 of the summaries' bytes)
    summary_fields: ClassVar[tuple[str, ...] | None] = None
    merge: str = field(default="mass", converter=check_merge)

    _pages: Tensor | None = field(default=None, init=False, repr=False)
    _summaries: Any = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ to override
    def score(self, query: Tensor, summaries: Any) -> Tensor:
        """``[B, H_kv, G, P]`` or ``[B, H_kv, P]`` page scores (higher is better)."""
        raise NotImplementedError

    def build_layout(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> Tensor:
        """Pages ``[B, H_kv, P, S]`` of the paged tokens (``token_ids >= 0``). Default: contiguous."""
        pos = self.positions
        return contiguous_layout(pos.first_unsunk, pos.paged_end, keys.shape[1], self.page_size)

    def extend_layout(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        """New layout once ``token_ids`` ``[B, H_kv, n]`` (keys ``[B, H_kv, n, D]``) joined the pages.
        Existing pages keep their ids (new pages go at the end) and their tokens (a page only gains
        tokens, after its valid slots: storage appends). Default: contiguous."""
        pos = self.positions
        return contiguous_layout(pos.first_unsunk, pos.paged_end, keys.shape[1], self.page_size)

    def summarize(self, keys: Tensor, pages: Tensor) -> Any:
        """Summaries of ``pages`` ``[B, H_kv, p, S]`` (an attrs instance whose tensor fields all have
        the page axis at dim 2, or None)."""
        return summarize_pages(keys, pages, self.summary_fields)

    def page_lens(self) -> Tensor:
        """int64 ``[B, H_kv, P]``: tokens per page (0 for a page evicted for good: never taken)."""
        valid = self._pages >= 0
        if self._evicted is not None:  # NOTE: pages are evicted whole, so a page is all kept or all gone
            B, H, P, S = self._pages.shape
            gone = self.evicted.gather(2, self._pages.clamp(min=0).reshape(B, H, P * S)).view(B, H, P, S)
            valid = valid & ~gone
        return valid.sum(-1)

    def nbytes(self) -> dict[str, int]:
        out = super().nbytes()
        out["pages"] = tensor_nbytes(self._pages)
        if self._summaries is not None:
            out["summaries"] = tensor_nbytes(*(getattr(self._summaries, f.name) for f in attrs.fields(
                type(self._summaries)) if isinstance(getattr(self._summaries, f.name), Tensor)))
        return out

    # ------------------------------------------------------------------ plumbing
    @property
    def layout(self) -> PageLayout:
        if self._pages is None:
            return self.empty_layout()
        return PageLayout(token_ids=self._pages)

    @property
    def summaries(self) -> Any:
        self._require_prefill("summaries")
        return self._summaries

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        self._pages = self.build_layout(keys, token_ids, queries)
        self._summaries = self.summarize(keys, self._pages)

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        old_p = self._pages.shape[2]
        pages = self.extend_layout(keys, token_ids)
        new = token_ids[token_ids >= 0]
        if new.numel() == 0 and pages.shape[2] == old_p:
            self._pages = pages
            return
        lo = int(new.min()) if new.numel() else self.positions.paged_end
        changed = (pages >= lo).any(-1).any(0).any(0)  # pages holding a new token, any row
        changed[old_p:] = True
        idx = torch.nonzero(changed).flatten()
        self._pages = pages
        self._summaries = self._update_summaries(idx, pages.shape[2])

    def _update_summaries(self, idx: Tensor, num_pages: int) -> Any:
        old = self._summaries
        if old is None:
            return None
        fresh = self.summarize(*self.local_page_keys(self._pages[:, :, idx]))
        updates = {}
        for f in attrs.fields(type(old)):
            cur, new = getattr(old, f.name), getattr(fresh, f.name)
            if cur is None:
                continue
            if cur.shape[2] < num_pages:
                pad = cur.new_zeros(*cur.shape[:2], num_pages - cur.shape[2], *cur.shape[3:])
                cur = torch.cat([cur, pad], dim=2)
            else:
                cur = cur.clone()
            cur[:, :, idx] = new
            updates[f.name] = cur
        return attrs.evolve(old, **updates)

    def _choose(self, query: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lens = self.page_lens()  # [B, H_kv, P]
        scores = self.score(query, self._summaries)
        if scores.dim() == 4:
            log_len = torch.log(lens.clamp(min=1).to(scores.dtype))
            resident = self.resident_logits(query) if self.merge == "mass" else None
            scores = merge_heads(
                scores,
                self.merge,
                scale=self.attention_scale(query.shape[-1]),
                log_weight=log_len,
                resident_logits=resident,
            )
        scores = torch.where(lens > 0, scores.float(), float("-inf"))
        page_ids, count = greedy_fill(scores, lens, max_tokens)
        return self.page_tokens(page_ids), page_ids, count

    def page_tokens(self, page_ids: Tensor) -> Tensor:
        """Token positions of ``page_ids`` int64 ``[B, H_kv, K]`` (``-1`` padded) -> ``[B, H_kv, K*S]``."""
        B, H, K = page_ids.shape
        S = self._pages.shape[3]
        idx = page_ids.clamp(min=0)[..., None].expand(B, H, K, S)
        toks = self._pages.gather(2, idx) if self._pages.shape[2] else idx.new_full(idx.shape, -1)
        toks = torch.where((page_ids >= 0)[..., None], toks, -1)
        return toks.reshape(B, H, K * S)
