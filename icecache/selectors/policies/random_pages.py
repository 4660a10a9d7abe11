"""Random pages: a control that ignores the query."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import define, field
from torch import Tensor

from icecache.selectors.bases.page_score import PageScoreSelector


@define(kw_only=True, slots=False)
class RandomSelector(PageScoreSelector):
    """Pages of consecutive tokens drawn uniformly at random each step (seeded by ``config.seed`` and
    the layer), until the budget is full."""

    name: ClassVar[str] = "random"
    summary_fields: ClassVar[tuple[str, ...]] = ()  # scores no summary
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)

    def score(self, query: Tensor, summaries: Any) -> Tensor:  # [B, H_kv, P]
        if self._gen is None:
            self._gen = torch.Generator(device="cpu").manual_seed(
                self.config.seed * 1_000_003 + self.layer_idx
            )
        B, H = query.shape[:2]
        return torch.rand(B, H, self._pages.shape[2], generator=self._gen).to(query.device)
