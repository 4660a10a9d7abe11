"""``EvictingTokenSelector``: keep each row at its budget by evicting the lowest-scored tokens for good.

A subclass (usually mixed in front of a token selector: ``class H2OEvict(EvictingTokenSelector,
H2OSelector)``) writes ``keep_scores() -> [B, H_kv, n]`` (higher: kept longer; default: the selector's
``token_scores(None, None)``, for scores that read no query). After ``prefill`` and after every
``append`` the base evicts, per row, the lowest-scored kept paged tokens until sinks + window + kept
paged tokens fit the row's budget (``config.budget``, or the budget policy's per-head budget): so at
every ``select`` the cache holds at most the budget and the selection is everything kept (kvpress's
presses and H2O keep a fixed-size cache the same way). Sinks and window are never evicted.

Stored pages hold ``slots_per_page`` tokens (default 1: an evicted token's slot is freed at once;
larger pages of consecutive tokens are freed when all their tokens are gone).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from attrs.validators import and_, ge, instance_of
from torch import Tensor

from icecache.selectors.bases.token_score import TokenScoreSelector


def _power_of_two(instance: object, attribute: object, value: int) -> None:
    from icecache.core.errors import ConfigError

    if value & (value - 1):
        raise ConfigError(f"slots_per_page must be a power of two, got {value}")


@define(kw_only=True, slots=False)
class EvictingTokenSelector(TokenScoreSelector):
    """Token selector whose cache stays at the budget: the lowest ``keep_scores`` are evicted for good.

    ``slots_per_page``: token slots of each stored page (a power of two; 1: exact freeing)."""

    evicts: ClassVar[bool] = True
    slots_per_page: int = field(default=1, validator=and_(instance_of(int), ge(1), _power_of_two))

    @property
    def page_size(self) -> int:
        return self.slots_per_page

    def keep_scores(self) -> Tensor:
        """float ``[B, H_kv, n]``: how much each token is worth keeping (NaN: least). Default: the
        selector's query-free ``token_scores(None, None)``."""
        return self.token_scores(None, None)

    def kept_budget(self) -> Tensor:
        """int64 ``[B, H_kv]``: paged tokens each row may keep now (its budget less sinks and window)."""
        pos = self.positions
        B, H, _ = self._shape
        resident = (pos.sink_count() + pos.window_count())[:, None]  # [B, 1]
        if self._limit is None:
            return (self.config.budget - resident).expand(B, H)
        return self._limit - resident

    def _after_update(self) -> None:
        super()._after_update()
        kept = self.kept_paged_mask()  # [B, H_kv, n]
        over = kept.sum(-1) - self.kept_budget()  # [B, H_kv]
        k = int(over.max()) if over.numel() else 0
        if k <= 0:
            return
        scores = torch.nan_to_num(self.keep_scores().float(), nan=float("-inf"))
        scores = torch.where(kept, scores, float("inf"))  # only kept paged tokens are candidates
        low, idx = torch.topk(scores, k, dim=-1, largest=False)  # [B, H_kv, k], lowest first
        rank = torch.arange(k, device=idx.device)
        drop = (rank < over[..., None]) & (low < float("inf"))  # [B, H_kv, k]
        # NOTE: kept paged tokens only, never below the row's budget (sinks and window stay): what
        # ``evict`` would check holds by construction, so the mask is committed directly
        new = torch.zeros(*over.shape, kept.shape[2], dtype=torch.bool, device=idx.device)
        new.scatter_(2, idx, drop)
        self._commit_eviction(new, new | self.evicted)
