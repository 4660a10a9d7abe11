"""``TokenScoreSelector``: rank single tokens (no pages), take the best that fit the budget.

A subclass writes ``token_scores(query, keys)``: ``query`` ``[B, H_kv, G, D]``, ``keys``
``[B, H_kv, N, D]`` (read through the selector's reader each step; ``None`` when the class sets
``needs_keys = False``) -> ``[B, H_kv, G, N]`` (merged by the base) or ``[B, H_kv, N]``. Only paged
tokens compete (sinks and window are attended anyway). ``page_ids`` of the selection are empty; the
``layout`` (pages of consecutive positions) tells storage how the tokens are kept.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from torch import Tensor

from icecache.selectors.bases.selector import SelectorBase
from icecache.selectors.plumbing.fill import topk_tokens
from icecache.selectors.plumbing.layout import contiguous_layout
from icecache.selectors.plumbing.merge import check_merge, merge_heads
from icecache.selectors.types import PageLayout


@define(kw_only=True, slots=False)
class TokenScoreSelector(SelectorBase):
    """Base of token-level selectors. ``merge``: GQA merge (``mass``, ``max`` or ``mean``)."""

    #: False: ``token_scores`` gets ``keys=None`` (a score of positions only: no keys are read)
    needs_keys: ClassVar[bool] = True
    token_level: ClassVar[bool] = True
    merge: str = field(default="mass", converter=check_merge)

    def token_scores(self, query: Tensor, keys: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def layout(self) -> PageLayout:
        if self._pos is None:
            return self.empty_layout()
        pos = self.positions
        return PageLayout(
            token_ids=contiguous_layout(
                pos.first_unsunk, pos.paged_end, self._shape[1], self.page_size
            )
        )

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        pass

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        pass

    def _choose(self, query: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        keys = self.keys if self.needs_keys else None
        paged = self.kept_paged_mask()  # [B, H_kv, N]: evicted positions never compete
        scores = self.token_scores(query, keys)
        if scores.dim() == 4:
            # NOTE: sinks and window join each head's normalizer once, through their exact logits.
            scores = torch.where(paged[:, :, None], scores, float("-inf"))
            resident = self.resident_logits(query) if self.merge == "mass" else None
            scores = merge_heads(
                scores, self.merge, scale=self.attention_scale(query.shape[-1]), resident_logits=resident
            )
        scores = torch.where(paged, scores.float(), float("-inf"))
        tokens, count = topk_tokens(scores, max_tokens)
        B, H = max_tokens.shape
        return tokens, torch.full((B, H, 0), -1, dtype=torch.int64, device=tokens.device), count
