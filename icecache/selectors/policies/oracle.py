"""Oracle: the exact top-k tokens by attention weight."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define
from torch import Tensor

from icecache.selectors.bases.token_score import TokenScoreSelector


@define(kw_only=True, slots=False)
class OracleSelector(TokenScoreSelector):
    """The ceiling: with exact ``q.k`` for every key, take the tokens with most attention.

    With the default ``mass`` merge a token ranks by its softmax weight summed over the GQA group's
    query heads (each head normalized over all its real tokens, sinks and window included): this is
    the selection of a given size that maximizes attention recall averaged over the group.
    """

    name: ClassVar[str] = "oracle"

    def token_scores(self, query: Tensor, keys: Tensor) -> Tensor:  # [B, H_kv, G, N]
        # NOTE: float32 on purpose. Half-precision logits round to ~1e-3 and the rounding differs
        # between CPU kernels, so near-ties at the budget's edge would rank differently per machine.
        return torch.einsum("bhgd,bhnd->bhgn", query.float(), keys.float())
