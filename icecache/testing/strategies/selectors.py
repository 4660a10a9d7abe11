"""Hypothesis strategies for selector plumbing: budget-fill problems and page groupings.

Scenario-level strategies (prompts, paddings, budgets, decode steps) are
:func:`icecache.testing.conformance.selector_cases`; these cover the pieces below them.
"""

# ruff: noqa: B008
# NOTE: strategies are immutable, so they are safe (and idiomatic) as parameter defaults.
from __future__ import annotations

from typing import Any

import torch
from attrs import frozen
from hypothesis import strategies as st
from torch import Tensor

from icecache.testing.strategies._util import draw_value, seeds


@frozen(kw_only=True)
class FillProblem:
    """Pages to fill a budget with: ``scores`` float ``[R, P]`` (some ``-inf``), ``lens`` int64 ``[R, P]``
    (some 0), ``max_tokens`` int64 ``[R]``."""

    scores: Tensor
    lens: Tensor
    max_tokens: Tensor

    def __repr__(self) -> str:
        return (
            f"FillProblem(scores={self.scores.tolist()}, lens={self.lens.tolist()}, "
            f"max_tokens={self.max_tokens.tolist()})"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # NOTE: hypothesis pretty-prints attrs by fields
        p.text(repr(self))


@st.composite
def fill_problems(
    draw: Any,
    *,
    rows: Any = st.integers(1, 4),
    pages: Any = st.integers(0, 24),
    page_size: Any = st.sampled_from([1, 2, 4, 16]),
    ties: Any = st.booleans(),
) -> FillProblem:
    """Random budget-fill problems: partial and empty pages, ``-inf`` (never take), ``+inf`` (take
    first) and NaN (never take) scores, tied scores, budgets from 0 to more than every page together."""
    R, P, S = draw_value(draw, rows), draw_value(draw, pages), draw_value(draw, page_size)
    g = torch.Generator().manual_seed(draw(seeds))
    scores = torch.randn(R, P, generator=g)
    if draw_value(draw, ties):
        scores = scores.round()  # many equal scores
    special = torch.rand(R, P, generator=g)
    scores = torch.where(special < 0.1, float("-inf"), scores)
    scores = torch.where((special >= 0.1) & (special < 0.15), float("inf"), scores)
    scores = torch.where((special >= 0.15) & (special < 0.2), float("nan"), scores)
    lens = torch.randint(0, S + 1, (R, P), generator=g)
    lens = torch.where(torch.rand(R, P, generator=g) < 0.6, S, lens)  # mostly full pages
    max_tokens = torch.randint(0, max(1, S * P + S), (R,), generator=g)
    return FillProblem(scores=scores, lens=lens, max_tokens=max_tokens)


@st.composite
def token_groups(
    draw: Any,
    *,
    batch: Any = st.integers(1, 2),
    heads: Any = st.integers(1, 3),
    tokens: Any = st.integers(0, 64),
    groups: Any = st.integers(1, 8),
) -> Tensor:
    """int64 ``[B, H_kv, N]`` group (cluster) of every token, ``-1`` for tokens left out."""
    B, H, N, C = (draw_value(draw, v) for v in (batch, heads, tokens, groups))
    g = torch.Generator().manual_seed(draw(seeds))
    out = torch.randint(0, C, (B, H, N), generator=g)
    return torch.where(torch.rand(B, H, N, generator=g) < 0.15, -1, out)
