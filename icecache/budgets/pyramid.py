"""PyramidKV's allocation: more budget in lower layers, less in higher ones, the same in total.

Based on PyramidKV (Cai et al., 2024, https://arxiv.org/abs/2406.02069): attention is spread wide in
the lower layers and concentrated in the higher ones, so the budget falls in an arithmetic
progression from the first sparse layer to the last. Here the first sparse layer gets about
``(1 + taper) * budget`` and the last ``(1 - taper) * budget`` (never below ``sink + window``, nor
below a page without sinks and window), rounded
so that the sparse layers' budgets sum exactly to ``budget`` times their number. PyramidKV also
selects by the observation window's attention; here only the allocation is taken, any selector can
use it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field

from icecache.budgets.base import BudgetPolicy, largest_remainder
from icecache.core.errors import ConfigError


def _taper(instance: object, attribute: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"taper must be a number in [0, 1), got {value!r}")


@define(kw_only=True, slots=False)
class PyramidBudget(BudgetPolicy):
    """Layer budgets falling linearly from ``(1 + taper) * budget`` to ``(1 - taper) * budget``."""

    name: ClassVar[str] = "pyramid"
    taper: float = field(default=0.5, validator=_taper)
    _cache: dict[int, list[int]] = field(factory=dict, init=False, repr=False)

    def budgets(self, num_layers: int) -> list[int]:
        """The sparse layers' budgets, first to last."""
        if num_layers not in self._cache:
            n = len(self.sparse_layers(num_layers))
            b = self.config.budget
            floor = min(self.layer_floor(), b)  # NOTE: a budget below it is refused by the selectors
            pos = torch.linspace(1.0, -1.0, n, dtype=torch.float64) if n > 1 else \
                torch.zeros(n, dtype=torch.float64)
            raw = b * (1 + self.taper * pos)  # [n], mean b
            got = largest_remainder((raw - floor).clamp_min(0), torch.tensor(n * b), floor)
            self._cache[num_layers] = got.tolist()
        return self._cache[num_layers]

    def layer_budget(self, layer_idx: int, num_layers: int) -> int:
        first = self.sparse_layers(num_layers).start
        return self.budgets(num_layers)[layer_idx - first] if layer_idx >= first else self.config.budget
