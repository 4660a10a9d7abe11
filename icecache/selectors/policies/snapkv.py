"""SnapKV: the prompt's observation window votes for the tokens worth keeping."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.core.errors import ConfigError
from icecache.core.keys import tensor_nbytes
from icecache.selectors.bases.token_score import TokenScoreSelector

#: score of a token no window has voted on (decoded after the last vote): above any vote (votes are
#: sums of attention probabilities), newest first. NOTE: finite on purpose: ``+inf`` means "never take".
_UNVOTED = 1.0e6


def window_votes(queries: Tensor, query_pos: Tensor, keys: Tensor, start: Tensor, *, scale: float,
                 kernel_size: int) -> Tensor:
    """SnapKV's votes: each window query's softmax attention over the keys it sees (causal, padding
    excluded), summed over the window and the GQA group, then average-pooled over positions.

    ``queries`` float ``[B, H_kv, G, Q, D]`` at positions ``query_pos`` int64 ``[Q]``; ``keys`` float
    ``[B, H_kv, N, D]``; ``start`` int64 ``[B]``. Returns float32 ``[B, H_kv, N]``. Query rows at padding
    (before ``start``) vote nothing."""
    B, H, N, _ = keys.shape
    logits = torch.einsum("bhgqd,bhnd->bhgqn", queries.float(), keys.float()) * scale
    pos = torch.arange(N, device=keys.device)
    causal = (pos[None, :] <= query_pos[:, None])[None]  # [1, Q, N]
    seen = causal & (pos[None, None, :] >= start[:, None, None])  # [B, Q, N]
    logits = logits.masked_fill(~seen[:, None, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a query that sees nothing votes nothing
    real_q = (query_pos[None, :] >= start[:, None]).to(probs.dtype)  # [B, Q]
    votes = (probs * real_q[:, None, None, :, None]).sum((2, 3))  # [B, H_kv, N]
    pooled = torch.nn.functional.avg_pool1d(votes.reshape(B * H, 1, N), kernel_size, stride=1,
                                            padding=kernel_size // 2, count_include_pad=False)
    return pooled.reshape(B, H, N)


@define(kw_only=True, slots=False)
class SnapKVSelector(TokenScoreSelector):
    """Keep the tokens the prompt's last ``window`` queries attend to most.

    Based on https://arxiv.org/abs/2404.14469 (Li et al., NeurIPS 2024). At prefill the observation
    window (the prompt's last ``window`` queries, from every runner's ``prefill(queries=...)``) votes:
    each query's attention over the prompt, summed over the window and the GQA group's query heads,
    average-pooled over ``kernel_size`` neighbouring positions so that a chosen token keeps its
    context. Each decode step takes the best-voted paged tokens that fit the budget; tokens decoded
    after the vote rank above every voted token, newest first (SnapKV compresses the prompt and keeps
    what is generated).

    ``refresh_every`` (default 0: the votes are fixed at prefill, as published): every that many decode
    steps the last ``window`` decode queries vote again over every key (a variant for long
    generations; reads the layer's keys once per refresh).

    NOTE (framework): SnapKV evicts the unchosen prompt tokens; here they stay in the store and the
    selection is made per step from the same fixed votes (so the chosen set only changes as decoded
    tokens join). GQA: one token set per KV head from the group's summed votes (as SnapKV's GQA
    variants do). Without prompt queries (a runner that gives none) every token is unvoted: recency.
    """

    name: ClassVar[str] = "snapkv"
    needs_keys: ClassVar[bool] = False
    window: int = field(default=32, validator=ge(1))
    kernel_size: int = field(default=7, validator=ge(1))
    refresh_every: int = field(default=0, validator=ge(0))

    _votes: Tensor | None = field(default=None, init=False, repr=False)  # float32 [B, H_kv, n], NaN: unvoted
    _recent: list[Tensor] = field(factory=list, init=False, repr=False)  # decode queries [B, H_kv, G, D]
    _steps: int = field(default=0, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd (pooling keeps positions), got {self.kernel_size}")

    @property
    def prompt_query_window(self) -> int:  # NOTE: shadows the base's ClassVar (runners read it)
        return self.window

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        B, H, N, D = keys.shape
        self._votes = torch.full((B, H, N), float("nan"), device=keys.device)
        self._recent, self._steps = [], 0
        if queries is not None:
            Q = queries.shape[2]
            q = queries.reshape(B, H, -1, Q, D)  # [B, H_kv, G, Q, D]
            pos = torch.arange(N - Q, N, device=keys.device)
            self._votes = window_votes(q, pos, keys, self.positions.start, scale=self.attention_scale(D),
                                       kernel_size=self.kernel_size)

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        pass

    def nbytes(self) -> dict[str, int]:
        out = super().nbytes()
        out["votes"] = tensor_nbytes(self._votes, *self._recent)
        return out

    def token_scores(self, query: Tensor, keys: Tensor | None) -> Tensor:  # [B, H_kv, n]
        n = self.num_tokens
        if self._votes.shape[2] < n:
            grow = self._votes.new_full((*self._votes.shape[:2], n - self._votes.shape[2]), float("nan"))
            self._votes = torch.cat([self._votes, grow], dim=2)
        if self.refresh_every:
            self._recent = [*self._recent, query][-self.window:]
            self._steps += 1
            if self._steps % self.refresh_every == 0:
                q = torch.stack(self._recent, dim=3)  # [B, H_kv, G, W, D]
                pos = torch.arange(n - q.shape[3], n, device=q.device)
                self._votes = window_votes(q, pos, self.keys, self.positions.start,
                                           scale=self.attention_scale(q.shape[-1]),
                                           kernel_size=self.kernel_size)
        pos = torch.arange(n, device=self._votes.device, dtype=torch.float32)
        return torch.where(torch.isnan(self._votes), _UNVOTED + pos, self._votes)
