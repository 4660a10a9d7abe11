"""Greedy, exact token-budget page selection shared by every index.

Pages are visited best score first; a page is taken when it still fits the remaining budget and
skipped otherwise (so the total never exceeds ``max_tokens``). Vectorized over rows: each round
takes the longest run of eligible pages that fits, so the loop runs once per *skip*, not per page.
"""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.core.errors import BudgetError


def as_budget(max_tokens: int | Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """``max_tokens`` (int or int tensor broadcastable to ``shape``) as int64 ``shape``; negative raises."""
    budget = torch.as_tensor(max_tokens, device=device)
    if budget.is_floating_point() or budget.dtype == torch.bool:
        raise BudgetError(f"max_tokens must be an int or an integer tensor, got {budget.dtype}")
    try:
        budget = budget.to(torch.int64).expand(shape)
    except RuntimeError:
        raise BudgetError(f"max_tokens of shape {tuple(budget.shape)} does not fit {shape}") from None
    if bool((budget < 0).any()):
        raise BudgetError(f"max_tokens must be >= 0, got {int(budget.min())}")
    return budget


def greedy_take(scores: Tensor, lens: Tensor, budget: Tensor, *,
                max_rounds: int = 64, check_every: int | None = None) -> tuple[Tensor, Tensor]:
    """Pick pages best score first within ``budget``, skipping pages that no longer fit.

    ``scores``: float ``[R, K]`` (``-inf`` = never take); ``lens``: int64 ``[R, K]``; ``budget``: int64
    ``[R]``. Returns ``(order [R, K], taken [R, K] bool in that order)``: ``order`` sorts pages by
    descending score, ``taken[r, j]`` says whether page ``order[r, j]`` was taken. ``check_every``: rounds
    between the checks for convergence (each a host sync); default 1 on the CPU, 4 on other devices.
    """
    order = scores.argsort(dim=-1, descending=True, stable=True)
    lens_o = lens.gather(-1, order)
    ok = (scores.gather(-1, order) > float("-inf")) & (lens_o > 0)
    pending = ok.clone()  # eligible pages not taken yet
    left = budget.clone()[:, None]
    # NOTE: each check is a host sync, which drains a GPU's queue; there a round with nothing eligible is a
    # cheap no-op, so the loop checks every 4th round (default). On the CPU a check costs nothing.
    if check_every is None:
        check_every = 1 if scores.device.type == "cpu" else 4
    for round_ in range(max_rounds):
        eligible = pending & (lens_o <= left)
        if round_ % check_every == 0 and not bool(eligible.any()):
            break
        size = lens_o * eligible
        take = eligible & (size.cumsum(-1) <= left)
        pending ^= take  # NOTE: take is a subset of pending
        left = left - (size * take).sum(-1, keepdim=True)
    # NOTE: hitting max_rounds only leaves budget unused; the total never exceeds it.
    return order, ok & ~pending
