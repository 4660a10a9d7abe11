"""``BudgetPolicy``: the base every budget allocator subclasses, and the checks they share.

Guarantees (checked at composition by :meth:`BudgetPolicy.check`, and per step by the
:class:`~icecache.core.budget.BudgetLedger`):

* every sparse layer's budget is a valid budget for the config (at least ``sink + window``), and the
  layers together never exceed ``config.budget`` times the number of sparse layers;
* a layer's per-head budgets (``[B, H_kv]``, from :meth:`BudgetPolicy.head_budgets` at prefill) lie in
  ``[sink + window, layer budget]`` and sum, per batch row, to at most ``H_kv`` times the layer budget;
* the ledger of every selection checks each row against its own budget: never over, exactly counted.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import define, evolve, field
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import BudgetError, ConfigError


@define(kw_only=True, slots=False)
class BudgetPolicy:
    """Uniform: every sparse layer and KV head gets ``config.budget``. Subclass and override
    :meth:`layer_budget` (static, per layer) and/or :meth:`head_budgets` (at prefill, per head)."""

    name: ClassVar[str] = "uniform"

    config: CacheConfig = field()

    # ------------------------------------------------------------------ to override
    def layer_budget(self, layer_idx: int, num_layers: int) -> int:
        """Mean tokens per KV head (sinks and window included) of sparse layer ``layer_idx`` of a model
        with ``num_layers`` layers (the first ``config.dense_layers`` are dense): the layer's heads
        share ``H_kv`` times this."""
        return self.config.budget

    def head_cap(self, layer_idx: int, num_layers: int) -> int:
        """The most tokens one KV head of the layer may get (default: the layer budget). It is the
        budget of the layer's selector config and of its ledger; each row is checked against its own."""
        return self.layer_budget(layer_idx, num_layers)

    def head_budgets(self, layer_idx: int, layer_budget: int, head_cap: int, *, keys: Tensor,
                     queries: Tensor | None = None, start: Tensor | None = None) -> Tensor | None:
        """Per-head budgets ``int64 [B, H_kv]`` (or ``[H_kv]``) of a layer at prefill (``keys``
        ``[B, H_kv, N, D]``, ``queries`` ``[B, H_q, Q, D]`` the queries of the prompt's last ``Q <= N``
        positions when the runner hands them (:attr:`prompt_query_window` of them), ``start`` ``[B]``),
        or ``None`` for ``layer_budget`` everywhere. Each must lie in ``[sink + window, head_cap]`` and a
        row's heads may share at most ``H_kv * layer_budget``."""
        return None

    @property
    def prompt_query_window(self) -> int:
        """How many of the prompt's last queries :meth:`head_budgets` reads (0: none). Runners hand that
        many as ``queries`` (:mod:`~icecache.selectors.plumbing.prompt_queries`), whatever the selector
        asks for itself."""
        return 0

    # ------------------------------------------------------------------ shared
    @property
    def uniform(self) -> bool:
        """Whether this policy gives every layer and head ``config.budget`` (the selectors' fast path)."""
        return type(self) is BudgetPolicy

    def sparse_layers(self, num_layers: int) -> range:
        return range(min(self.config.dense_layers, num_layers), num_layers)

    def layer_config(self, layer_idx: int, num_layers: int) -> CacheConfig:
        """The config a layer's selector gets: ``config`` with the layer's head cap as its budget (the
        window kept as it is)."""
        budget = self.head_cap(layer_idx, num_layers)
        return self.config if budget == self.config.budget else evolve(self.config, budget=budget)

    def floor(self) -> int:
        """The least budget a KV head may have: its sinks and window."""
        return self.config.sink_tokens + self.config.window_tokens

    def layer_floor(self) -> int:
        """The least budget a sparse layer may have: its sinks and window, at least one token, and a
        page when there are neither (a selector refuses less: its selection could be empty)."""
        floor = self.floor()
        return max(floor, 1) if floor else self.config.page_size

    def check(self, num_layers: int) -> None:
        """Composition-time checks; :class:`BudgetError` / :class:`ConfigError` name the bad value."""
        layers = self.sparse_layers(num_layers)
        budgets = [self.layer_budget(i, num_layers) for i in layers]
        for i, b in zip(layers, budgets, strict=True):
            if not isinstance(b, int) or isinstance(b, bool) or b < self.layer_floor():
                raise BudgetError(f"{self.name} budget policy gives layer {i} a budget of {b!r}, below "
                                  f"{self._floor_words()}")
            try:
                evolve(self.config, budget=b)
            except ConfigError as exc:
                raise BudgetError(f"{self.name} budget policy: layer {i}'s budget {b} is unusable: "
                                  f"{exc}") from None
        for i, b in zip(layers, budgets, strict=True):
            cap = self.head_cap(i, num_layers)
            if not isinstance(cap, int) or cap < b:
                raise BudgetError(f"{self.name} budget policy gives layer {i} a head cap of {cap!r}, "
                                  f"below its budget {b}")
            try:
                evolve(self.config, budget=cap)
            except ConfigError as exc:
                raise BudgetError(f"{self.name} budget policy: layer {i}'s head cap {cap} is unusable: "
                                  f"{exc}") from None
        total, allowed = sum(budgets), len(budgets) * self.config.budget
        if total > allowed:
            raise BudgetError(f"{self.name} budget policy gives the {len(budgets)} sparse layers {total} "
                              f"tokens per KV head in all, more than {len(budgets)} x budget "
                              f"{self.config.budget} = {allowed} (layer budgets {budgets})")

    def _floor_words(self) -> str:
        if self.floor():
            return f"sink_tokens + window_tokens = {self.floor()}"
        return f"page_size = {self.config.page_size} (no sink or window tokens)"

    def checked_head_budgets(self, layer_idx: int, num_layers: int, *, keys: Tensor,
                             queries: Tensor | None = None, start: Tensor | None = None) -> Tensor | None:
        """:meth:`head_budgets`, checked: ``int64 [B, H_kv]`` within ``[floor, head cap]``, each row
        summing to at most ``H_kv * layer budget`` (:class:`BudgetError` otherwise)."""
        layer_budget = self.layer_budget(layer_idx, num_layers)
        cap = self.head_cap(layer_idx, num_layers)
        got = self.head_budgets(layer_idx, layer_budget, cap, keys=keys, queries=queries, start=start)
        if got is None:
            return None
        B, H = keys.shape[:2]
        got = torch.as_tensor(got, device=keys.device)
        if got.dtype.is_floating_point or tuple(got.shape) not in ((B, H), (H,)):
            raise BudgetError(f"{self.name} budget policy returned head budgets {got.dtype} "
                              f"{tuple(got.shape)}, expected integers [B={B}, H_kv={H}]")
        got = got.to(torch.int64).expand(B, H).contiguous()
        lo, hi = int(got.min()), int(got.max())
        if lo < self.floor() or hi > cap:
            raise BudgetError(f"{self.name} budget policy gave layer {layer_idx} head budgets {lo}..{hi}, "
                              f"outside [sink + window = {self.floor()}, head cap {cap}]")
        worst = int(got.sum(-1).max())
        if worst > H * layer_budget:
            raise BudgetError(f"{self.name} budget policy gave layer {layer_idx}'s {H} KV heads {worst} "
                              f"tokens, more than {H} x {layer_budget}")
        return got


def largest_remainder(weights: Tensor, total: Tensor, floor: int) -> Tensor:
    """Integers ``>= floor`` summing exactly to ``total`` along the last axis, proportional to
    ``weights`` beyond the floor (largest-remainder rounding; vectorized). ``weights`` float
    ``[..., n]`` (non-negative; all zero: an even split), ``total`` int64 ``[...]`` with
    ``total >= n * floor``."""
    n = weights.shape[-1]
    spare = (total - n * floor).to(torch.float64)  # [...]
    w = weights.to(torch.float64).clamp_min(0)
    s = w.sum(-1, keepdim=True)
    w = torch.where(s > 0, w / s.clamp_min(1e-300), torch.full_like(w, 1.0 / n))
    share = w * spare[..., None]
    base = share.floor()
    left = (spare - base.sum(-1)).round().to(torch.int64)  # [...], in [0, n)
    order = torch.argsort(share - base, dim=-1, descending=True, stable=True)
    bonus = (torch.arange(n, device=weights.device) < left[..., None]).to(torch.int64)
    extra = torch.zeros_like(bonus).scatter_(-1, order, bonus)
    return base.to(torch.int64) + extra + floor


def describe(policy: Any) -> str:
    return getattr(policy, "name", type(policy).__name__)
