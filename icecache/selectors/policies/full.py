"""Full attention: every real token, every step."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define
from torch import Tensor

from icecache.selectors.bases.token_score import TokenScoreSelector
from icecache.selectors.plumbing.fill import compact
from icecache.selectors.types import Selection


@define(kw_only=True, slots=False)
class FullSelector(TokenScoreSelector):
    """Dense attention (layers kept dense, or the reference). The ledger is dense and its budget is
    the context length (the most real tokens of any row); all pages of the layout are listed."""

    name: ClassVar[str] = "full"

    def __attrs_post_init__(self) -> None:  # NOTE: no budget checks: a dense layer ignores the budget
        pass

    @property
    def effective_flush_tokens(self) -> int:
        return self.flush_tokens or self.config.page_size

    def select(self, query: Tensor) -> Selection:
        self._require_prefill("select")
        q = self._group(query)
        B, H = q.shape[:2]
        pos = self.positions
        paged = pos.paged_mask()  # [B, N]
        ids = torch.arange(pos.n, device=paged.device).expand(B, pos.n)
        tokens = compact(torch.where(paged, ids, -1))[:, None].expand(B, H, -1)
        count = paged.sum(1)[:, None].expand(B, H)
        pages = self.layout.token_ids
        page_ids = torch.arange(pages.shape[2], device=pages.device).expand(B, H, -1)
        page_ids = compact(torch.where((pages >= 0).any(-1), page_ids, -1))
        context = int((pos.n - pos.start).max())
        selection = self._assemble(
            tokens, page_ids, count, pos.sink_count(), pos.window_count(), budget=max(context, 1), dense=True
        )
        self._notify(selection)
        return selection
