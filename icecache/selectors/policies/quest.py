"""Quest: query-aware upper bounds over pages of consecutive tokens."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define
from torch import Tensor

from icecache.index.base import PageSummaries
from icecache.selectors.bases.page_score import PageScoreSelector


@define(kw_only=True, slots=False)
class QuestSelector(PageScoreSelector):
    """Rank position-contiguous pages by Quest's upper bound on q.k.

    Based on https://arxiv.org/abs/2406.10774 (Tang et al., ICML 2024). Each page keeps the
    element-wise min and max of its keys; ``sum_i max(q_i * min_i, q_i * max_i)`` bounds ``q.k`` for
    every key of the page. Pages hold ``page_size`` consecutive positions.
    """

    name: ClassVar[str] = "quest"
    summary_fields: ClassVar[tuple[str, ...]] = ("key_min", "key_max")

    def score(self, query: Tensor, summaries: PageSummaries) -> Tensor:  # [B, H_kv, G, P]
        q = query[:, :, :, None, :].to(summaries.key_min.dtype)  # [B, H_kv, G, 1, D]
        lo = q * summaries.key_min[:, :, None]  # [B, H_kv, G, P, D]
        hi = q * summaries.key_max[:, :, None]
        return torch.maximum(lo, hi).sum(-1)
