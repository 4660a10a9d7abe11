"""The budget ledger: where each attended token of a decode step came from.

One ledger per selection, with counts per (batch row, KV head). The invariant
``sink + window + selected + extra <= budget`` (and, under a per-head budget policy,
``<= limit[b, h]`` for each row) is checked at construction; a selector that breaks it raises
:class:`BudgetError` instead of silently attending more.
"""

from __future__ import annotations

import torch
from attrs import field, frozen
from torch import Tensor

from icecache.core.errors import BudgetError


def _as_counts(value: Tensor | int) -> Tensor:
    return torch.as_tensor(value, dtype=torch.int64)


@frozen(kw_only=True)
class BudgetLedger:
    """Token counts per ``[B, H_kv]``: ``sink``, ``window``, ``selected`` and ``extra``.

    ``extra`` holds tokens attended outside the three named parts (a selector's outliers, say).
    ``budget`` is the most tokens one KV head may attend. ``limit`` (int64 ``[B, H_kv]``, each
    ``<= budget``) is each row's own budget when a budget policy gives heads different ones
    (:mod:`icecache.budgets`); ``None``: ``budget`` everywhere. A dense step (layer kept dense, or
    the ``full`` selector) sets ``dense=True`` and its budget is the context length.

    ``kept`` (int64 ``[B, H_kv]``, selectors that evict only; ``None``: every token is kept) counts the
    tokens each row still holds, sinks and window included; a selection never attends more than that.
    The built-in evicting policies keep ``kept <= budget`` (the budget bounds what is *kept*; the
    selection is then everything kept).
    """

    budget: int
    sink: Tensor = field(converter=_as_counts)
    window: Tensor = field(converter=_as_counts)
    selected: Tensor = field(converter=_as_counts)
    extra: Tensor = field(converter=_as_counts, default=0)
    dense: bool = False
    limit: Tensor | None = field(default=None, converter=lambda v: None if v is None else _as_counts(v))
    kept: Tensor | None = field(default=None, converter=lambda v: None if v is None else _as_counts(v))

    def __attrs_post_init__(self) -> None:
        total = self.total
        # NOTE: one check in the usual case (every row within 1..budget, and its own limit and kept
        # count); the messages below are worked out only when one of them fails
        top = self.limit.clamp(max=self.budget) if self.limit is not None else self.budget
        if self.kept is not None:
            top = torch.minimum(torch.as_tensor(top), self.kept)
        if not bool(((total < 1) | (total > top)).any()):
            return
        if bool((total < 1).any()):
            raise BudgetError(f"empty selection: a KV head attends {int(total.min())} tokens")
        worst = int(total.max())
        if worst > self.budget:
            where = torch.nonzero(total == worst)[0].tolist()
            raise BudgetError(
                f"selection attends {worst} tokens at [batch, kv_head]={where}, over the budget of "
                f"{self.budget} (sink {int(self.sink.max())}, window {int(self.window.max())}, "
                f"selected {int(self.selected.max())}, extra {int(self.extra.max())})"
            )
        if self.kept is not None and bool((total > self.kept).any()):
            where = torch.nonzero(total > self.kept)[0].tolist()
            raise BudgetError(
                f"selection attends {int(total[tuple(where)])} tokens at [batch, kv_head]={where}, more than "
                f"the {int(self.kept[tuple(where)])} that row still keeps"
            )
        if self.limit is not None:
            over = total > self.limit
            if bool(over.any()):
                where = torch.nonzero(over)[0].tolist()
                raise BudgetError(
                    f"selection attends {int(total[tuple(where)])} tokens at [batch, kv_head]={where}, over "
                    f"that head's budget of {int(self.limit[tuple(where)])}"
                )

    @property
    def row_budget(self) -> Tensor:
        """Each row's budget, int64 ``[B, H_kv]`` (``limit``, else ``budget`` everywhere)."""
        return self.limit if self.limit is not None else torch.full_like(self.total, self.budget)

    @property
    def total(self) -> Tensor:
        """Tokens attended per ``[B, H_kv]``."""
        return self.sink + self.window + self.selected + self.extra

    def summary(self) -> dict[str, float | int | bool]:
        """Means over batch rows and heads, plus the worst total: for tables and JSON."""
        return {
            "budget": self.budget,
            "sink": float(self.sink.float().mean()),
            "window": float(self.window.float().mean()),
            "selected": float(self.selected.float().mean()),
            "extra": float(self.extra.float().mean()),
            "max_total": int(self.total.max()),
            "dense": self.dense,
        }
