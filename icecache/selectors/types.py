"""What a selector returns, and the logical page layout it keeps.

Shapes: ``B`` batch rows, ``H_kv`` KV heads, ``H_q`` query heads (a multiple of ``H_kv``; query
head ``q`` belongs to KV head ``q // (H_q // H_kv)``), ``N`` tokens, ``P`` pages, ``S`` page size.
"""

from __future__ import annotations

import torch
from attrs import frozen
from torch import Tensor

from icecache.core.budget import BudgetLedger


@frozen(kw_only=True)
class PageLayout:
    """Logical pages of one layer: which token positions each page holds.

    ``token_ids``: int64 ``[B, H_kv, P, S]``; ``-1`` marks an empty slot. Valid slots of a page
    come first (a page with ``n`` tokens uses slots ``0..n-1``); a page with no token is padding.
    Every non-sink, non-window token of a row is in exactly one page.
    """

    token_ids: Tensor

    @property
    def page_lens(self) -> Tensor:
        """Valid slots per page, int64 ``[B, H_kv, P]``."""
        return (self.token_ids >= 0).sum(dim=-1)

    @property
    def num_pages(self) -> int:
        return self.token_ids.shape[2]


@frozen(kw_only=True)
class Selection:
    """The result of one decode step's selection for one layer.

    * ``token_ids``: int64 ``[B, H_kv, T]``, the token positions attended (sinks, window and every
      token of the selected pages), ``-1`` padding, no position twice in a row.
    * ``page_ids``: int64 ``[B, H_kv, K]``, the selected pages of the selector's
      :class:`PageLayout` (``-1`` padding); empty (``K == 0``) for token-level selectors.
    * ``ledger``: where the attended tokens came from; its invariants are checked on creation.
    """

    token_ids: Tensor
    page_ids: Tensor
    ledger: BudgetLedger

    def token_mask(self, num_tokens: int) -> Tensor:
        """Bool ``[B, H_kv, num_tokens]``: True where the token is attended."""
        B, H, _ = self.token_ids.shape
        mask = torch.zeros(B, H, num_tokens + 1, dtype=torch.bool, device=self.token_ids.device)
        # NOTE: padding (-1) is sent to the spare last column, then dropped.
        idx = torch.where(self.token_ids >= 0, self.token_ids, num_tokens)
        mask.scatter_(2, idx, True)
        return mask[..., :num_tokens]
