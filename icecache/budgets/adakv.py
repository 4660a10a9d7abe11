"""Ada-KV's allocation: a layer's budget moves from heads whose attention is concentrated to heads
whose attention is spread.

Based on Ada-KV (Feng et al., 2024, https://arxiv.org/abs/2407.11550). Ada-KV selects the top
``H_kv * b`` attention weights of all heads of a layer together (each head's weights normalized on
its own) and gives every head as many tokens as it won, after a safeguard of ``alpha`` times the
uniform share per head. Here that happens once, at prefill: the weights are the prompt's last
``observe`` queries' attention over the prompt (averaged over the query heads of a GQA group, causal,
left padding masked), the budgets are per ``(batch row, KV head)``, each at most ``max_ratio`` times
the layer budget (what the cap cuts is not handed on, so a row never exceeds ``H_kv * b``).

Simplified: Ada-KV re-selects per step from the cached attention; here the per-head budgets are
fixed after prefill and any selector uses them. Runners hand the queries of the prompt's last
``observe`` positions (:attr:`prompt_query_window`, whatever the selector asks for itself; ``Q`` of them,
fewer for a shorter prompt or a snapshot kept with a smaller window: the last ``min(observe, Q)`` are
read). Without prompt queries (a runner that does not pass them, a snapshot kept without) the heads keep
the uniform share.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.budgets.base import BudgetPolicy, largest_remainder
from icecache.core.errors import ConfigError, TensorSpecError


def _alpha(instance: object, attribute: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"alpha must be a number in [0, 1], got {value!r}")


def _ratio(instance: object, attribute: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ConfigError(f"max_ratio must be a number >= 1, got {value!r}")


@define(kw_only=True, slots=False)
class AdaKVBudget(BudgetPolicy):
    """Per-head budgets from the prompt's attention concentration (``alpha`` safeguard share,
    ``max_ratio`` cap per head, ``observe`` last prompt queries)."""

    name: ClassVar[str] = "adakv"
    alpha: float = field(default=0.2, validator=_alpha)
    max_ratio: float = field(default=2.0, validator=_ratio)
    observe: int = field(default=32, validator=ge(1))

    @property
    def prompt_query_window(self) -> int:
        return self.observe

    def head_cap(self, layer_idx: int, num_layers: int) -> int:
        b = self.layer_budget(layer_idx, num_layers)
        return self.floor() + int((b - self.floor()) * self.max_ratio)

    def head_budgets(self, layer_idx: int, layer_budget: int, head_cap: int, *, keys: Tensor,
                     queries: Tensor | None = None, start: Tensor | None = None) -> Tensor | None:
        if queries is None:
            return None
        B, H, N, D = keys.shape
        if (queries.dim() != 4 or queries.shape[0] != B or queries.shape[2] > N or queries.shape[1] % H
                or queries.shape[3] != D):
            raise TensorSpecError(f"adakv budget policy: queries must be [B={B}, H_q (multiple of {H}), "
                                  f"Q <= N={N}, D={D}], got {tuple(queries.shape)}")
        Q = queries.shape[2]  # NOTE: the queries of the prompt's last Q positions, not of all N
        floor = self.floor()
        selected = layer_budget - floor  # the uniform share a head selects
        if selected <= 0 or Q == 0:
            return None
        w = min(self.observe, Q)
        q = queries[:, :, Q - w:].float()  # [B, H_q, w, D], positions N - w .. N - 1
        G = q.shape[1] // H
        q = q.reshape(B, H, G * w, D)  # [B, H_kv, G*w, D]
        logits = torch.einsum("bhqd,bhnd->bhqn", q, keys.float()) * D**-0.5  # [B, H_kv, G*w, N]
        qpos = (torch.arange(w, device=keys.device) + N - w).repeat(G)  # [G*w]
        kpos = torch.arange(N, device=keys.device)
        mask = kpos[None, :] > qpos[:, None]  # [G*w, N], causal
        if start is not None:
            mask = mask[None] | (kpos[None, None, :] < start.to(keys.device)[:, None, None])  # [B, G*w, N]
            mask = mask[:, None]
        logits = logits.masked_fill(mask, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(2)  # [B, H_kv, N], each head's weights
        guard = int(self.alpha * selected)
        pool = H * (selected - guard)  # tokens the heads compete for
        k = min(pool, H * N)
        won = torch.zeros(B, H, dtype=torch.float64, device=keys.device)
        if k > 0:
            top = torch.topk(probs.reshape(B, H * N), k, dim=-1).indices // N  # [B, k] head of each winner
            won.scatter_add_(1, top, torch.ones_like(top, dtype=torch.float64))
        total = torch.full((B,), H * layer_budget, dtype=torch.int64, device=keys.device)
        budgets = largest_remainder(won, total, floor + guard)  # [B, H_kv], rows sum to H * b exactly
        return budgets.clamp_max(head_cap)
