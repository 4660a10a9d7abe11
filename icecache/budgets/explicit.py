"""Budgets given by hand: one per sparse layer, optionally one per KV head of each."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import define, field
from torch import Tensor

from icecache.budgets.base import BudgetPolicy
from icecache.core.errors import BudgetError, ConfigError


def _int_list(value: Any, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                       for v in value):
        raise ConfigError(f"{what} must be a list of integers, got {value!r}")
    return list(value)


@define(kw_only=True, slots=False)
class PerLayerBudget(BudgetPolicy):
    """``budgets``: one budget per sparse layer, first to last (their sum at most ``config.budget`` times
    their number); ``head_budgets``: optionally a list per sparse layer of one budget per KV head (each
    at least ``sink + window``, their mean at most that layer's budget)."""

    name: ClassVar[str] = "per-layer"
    budgets: list[int] = field(converter=lambda v: _int_list(v, "budgets"))
    head_budgets_: list[list[int]] | None = field(default=None, alias="head_budgets")

    def __attrs_post_init__(self) -> None:
        if self.head_budgets_ is not None:
            if not isinstance(self.head_budgets_, (list, tuple)):
                raise ConfigError(f"head_budgets must be a list (per sparse layer) of lists, got "
                                  f"{self.head_budgets_!r}")
            self.head_budgets_ = [_int_list(h, f"head_budgets[{i}]")
                                  for i, h in enumerate(self.head_budgets_)]

    def _index(self, layer_idx: int, num_layers: int) -> int:
        return layer_idx - self.sparse_layers(num_layers).start

    def layer_budget(self, layer_idx: int, num_layers: int) -> int:
        return self.budgets[self._index(layer_idx, num_layers)]

    def head_cap(self, layer_idx: int, num_layers: int) -> int:
        if self.head_budgets_ is None:
            return self.layer_budget(layer_idx, num_layers)
        heads = self.head_budgets_[self._index(layer_idx, num_layers)]
        return max(self.layer_budget(layer_idx, num_layers), *heads)

    def check(self, num_layers: int) -> None:
        n = len(self.sparse_layers(num_layers))
        if len(self.budgets) != n:
            raise BudgetError(f"per-layer budgets lists {len(self.budgets)} budgets for {n} sparse layers "
                              f"(layers {self.config.dense_layers}..{num_layers - 1}): {self.budgets}")
        if self.head_budgets_ is not None:
            if len(self.head_budgets_) != n:
                raise BudgetError(f"head_budgets lists {len(self.head_budgets_)} layers for {n} sparse "
                                  "layers")
            geo = self.config.geometry
            for i, heads in enumerate(self.head_budgets_):
                layer = self.config.dense_layers + i
                if geo is not None and len(heads) != geo.num_kv_heads:
                    raise BudgetError(f"head_budgets[{i}] (layer {layer}) lists {len(heads)} heads; the "
                                      f"model has {geo.num_kv_heads} KV heads")
                low = min(heads)
                if low < self.floor():
                    raise BudgetError(f"head_budgets[{i}] (layer {layer}) gives a KV head {low} tokens, "
                                      f"below sink_tokens + window_tokens = {self.config.sink_tokens} + "
                                      f"{self.config.window_tokens} = {self.floor()}")
                if sum(heads) > len(heads) * self.budgets[i]:
                    raise BudgetError(f"head_budgets[{i}] (layer {layer}) sum to {sum(heads)}, more than "
                                      f"{len(heads)} heads x the layer's budget {self.budgets[i]}")
        super().check(num_layers)

    def head_budgets(self, layer_idx: int, layer_budget: int, head_cap: int, *, keys: Tensor,
                     queries: Tensor | None = None, start: Tensor | None = None) -> Tensor | None:
        if self.head_budgets_ is None:
            return None
        first = self.config.dense_layers
        return torch.tensor(self.head_budgets_[layer_idx - first], dtype=torch.int64)
