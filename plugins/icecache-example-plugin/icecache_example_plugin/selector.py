"""A third-party selector in a few dozen lines: Quest's bound plus a bonus for recent pages."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from torch import Tensor

from icecache.index.base import PageSummaries
from icecache.selectors.bases.page_score import PageScoreSelector


@define(kw_only=True, slots=False)
class RecencyQuestSelector(PageScoreSelector):
    """Rank position-contiguous pages by Quest's upper bound on ``q.k``, plus ``recency_bonus`` times
    how recent the page is (0 for the oldest page, 1 for the newest).

    The base class handles sinks, the window, the budget ledger, GQA merging and top-k; this class
    only scores pages. Options: ``recency_bonus`` (float, >= 0).
    """

    name: ClassVar[str] = "recency-quest"
    summary_fields: ClassVar[tuple[str, ...]] = ("key_min", "key_max")  # what score reads (less memory)
    recency_bonus: float = field(default=0.5)

    def __attrs_post_init__(self) -> None:
        if not self.recency_bonus >= 0:
            raise ValueError(f"recency_bonus must be >= 0, got {self.recency_bonus!r}")
        super().__attrs_post_init__()

    def score(self, query: Tensor, summaries: PageSummaries) -> Tensor:  # [B, H_kv, G, P]
        q = query[:, :, :, None, :].to(summaries.key_min.dtype)  # [B, H_kv, G, 1, D]
        bound = torch.maximum(q * summaries.key_min[:, :, None], q * summaries.key_max[:, :, None]).sum(-1)
        num_pages = summaries.lens.shape[-1]
        recency = torch.linspace(0.0, 1.0, num_pages, device=bound.device, dtype=bound.dtype)  # [P]
        return bound + self.recency_bonus * bound.abs().mean(-1, keepdim=True) * recency


def make_recency_quest(config, *, layer_idx: int = 0, policy=None, **options) -> RecencyQuestSelector:
    return RecencyQuestSelector(config=config, layer_idx=layer_idx, policy=policy, **options)
