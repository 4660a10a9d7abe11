"""StreamingLLM: attention sinks plus the most recent tokens."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define
from torch import Tensor

from icecache.selectors.bases.token_score import TokenScoreSelector


@define(kw_only=True, slots=False)
class StreamingLLMSelector(TokenScoreSelector):
    """Sinks plus a recent window as long as the budget allows; no query is looked at.

    Based on https://arxiv.org/abs/2309.17453 (Xiao et al., ICLR 2024). The budget left after the
    sinks and the configured window goes to the next most recent tokens, so the whole budget is one
    window: this is the floor every query-aware selector must beat.
    """

    name: ClassVar[str] = "streamingllm"
    needs_keys: ClassVar[bool] = False

    def token_scores(self, query: Tensor, keys: None) -> Tensor:  # [B, H_kv, N]
        B, H = query.shape[:2]
        N = self.num_tokens
        return torch.arange(N, device=query.device, dtype=torch.float32).expand(B, H, N)

    def _choose(self, query: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ``max_tokens`` most recent paged positions, newest first: what ranking every position by
        :meth:`token_scores` picks, in ``O(budget)`` instead of ``O(context)`` per step."""
        pos = self.positions
        B, H = max_tokens.shape
        dev = max_tokens.device
        k = max(0, min(int(max_tokens.max()) if max_tokens.numel() else 0, pos.paged_end))
        ids = pos.paged_end - 1 - torch.arange(k, device=dev)  # [k] newest first
        paged = ids[None, :] >= pos.first_unsunk.to(dev)[:, None]  # [B, k]
        ok = paged[:, None, :] & (torch.arange(k, device=dev) < max_tokens[..., None])  # [B, H_kv, k]
        tokens = torch.where(ok, ids.expand(B, H, k), -1)
        return tokens, torch.full((B, H, 0), -1, dtype=torch.int64, device=dev), ok.sum(-1)
