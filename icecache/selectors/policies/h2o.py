"""H2O: heavy hitters, the tokens that have received the most attention so far."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.core.keys import tensor_nbytes
from icecache.selectors.bases.token_score import TokenScoreSelector
from icecache.selectors.plumbing.feedback import AttentionFeedback
from icecache.selectors.policies.snapkv import window_votes


@define(kw_only=True, slots=False)
class H2OSelector(TokenScoreSelector):
    """Attend the tokens with the largest attention accumulated over the steps that attended them.

    Based on https://arxiv.org/abs/2306.14048 (Zhang et al., NeurIPS 2023). Scores start from the
    prompt's attention (here: its last ``window`` queries, the observation window every runner hands
    ``prefill``; H2O sums every prompt query) and grow by each decode step's attention weights
    (summed over the GQA group), which the selector receives through the feedback hook
    (``wants_feedback``: :mod:`~icecache.selectors.plumbing.feedback`). Sinks and window are attended
    anyway, so a token leaves the window with the mass it gathered there.

    NOTE (framework): H2O evicts a token for good once it falls out of the kept set; here it stays in
    the store, but its score only grows while it is attended, so an unchosen token does not return
    unless the kept ones stop being chosen.
    """

    name: ClassVar[str] = "h2o"
    needs_keys: ClassVar[bool] = False
    wants_feedback: ClassVar[bool] = True
    window: int = field(default=32, validator=ge(0))

    _mass: Tensor | None = field(default=None, init=False, repr=False)  # float32 [B, H_kv, n]

    @property
    def prompt_query_window(self) -> int:  # NOTE: shadows the base's ClassVar (runners read it)
        return self.window

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        B, H, N, D = keys.shape
        self._mass = torch.zeros(B, H, N, device=keys.device)
        if queries is not None:
            Q = queries.shape[2]
            q = queries.reshape(B, H, -1, Q, D)  # [B, H_kv, G, Q, D]
            pos = torch.arange(N - Q, N, device=keys.device)
            self._mass = window_votes(q, pos, keys, self.positions.start, scale=self.attention_scale(D),
                                      kernel_size=1)

    def _grow(self) -> None:
        n = self.num_tokens
        if self._mass.shape[2] < n:
            self._mass = torch.nn.functional.pad(self._mass, (0, n - self._mass.shape[2]))

    def observe(self, feedback: AttentionFeedback) -> None:
        """Add one step's attention weights (what this selector chose) to the accumulated mass."""
        self._grow()
        self._mass = self._mass + feedback.mass_by_position(self.num_tokens).to(self._mass.device)

    def nbytes(self) -> dict[str, int]:
        out = super().nbytes()
        out["mass"] = tensor_nbytes(self._mass)
        return out

    def token_scores(self, query: Tensor, keys: Tensor | None) -> Tensor:  # [B, H_kv, n]
        self._grow()
        # NOTE: ties (tokens never attended) go to the newest position
        pos = torch.arange(self.num_tokens, device=self._mass.device, dtype=torch.float32)
        return self._mass + 1e-6 * pos / (self.num_tokens + 1)
