"""The prompt's observation window: the queries of its last positions, handed to ``prefill`` the same way
by every runner (``icecache run`` / ``eval`` through prefill snapshots, ``model.generate()`` through the
HF integration, ``icecache bench selectors``).

A selector says how many of the prompt's last queries it wants with its ``prompt_query_window``
attribute (an int, 0 or absent: none) and takes them as ``prefill(..., queries=...)``: float
``[B, H_q, Q, D]``, post-RoPE, the queries of positions ``N - Q .. N - 1`` with ``Q = min(window, N)``.
Rows are left padded like the keys; the queries of padding positions are zeros.

A budget policy that sets per-head budgets from the prompt's attention (``adakv``) says the same with its
own ``prompt_query_window`` and takes its window as ``prefill(..., budget_queries=...)``: a snapshot keeps
the larger of the two windows, and each gets its own (the selector's is never widened by the budget's).

NOTE: the window is bounded on purpose. A prefill snapshot keeps these queries for every layer until
the selectors are built; all of the prompt's queries would be ``H_q / H_kv`` times the keys' bytes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from icecache.core.signatures import accepts_keyword


def query_window(selector: Any) -> int:
    """How many of the prompt's last queries ``selector.prefill`` wants (0: none, or it takes no
    ``queries`` keyword)."""
    if not accepts_keyword(getattr(selector, "prefill", None), "queries"):
        return 0
    return max(0, int(getattr(selector, "prompt_query_window", 0) or 0))


def budget_query_window(selector: Any) -> int:
    """How many of the prompt's last queries the budget policy of ``selector``'s policy reads for its
    per-head budgets (0: none, a uniform policy, or ``prefill`` takes no ``budget_queries`` keyword)."""
    if not accepts_keyword(getattr(selector, "prefill", None), "budget_queries"):
        return 0
    budgets = getattr(getattr(selector, "policy", None), "budgets", None)
    if budgets is None or getattr(budgets, "uniform", True):
        return 0
    return max(0, int(getattr(budgets, "prompt_query_window", 0) or 0))


def policy_query_window(policy: Any) -> int:
    """The window the selector of ``policy``'s first sparse layer and its budget policy want (the larger;
    0 for an all-dense policy): how many queries a prefill snapshot must keep for them. Builds one
    throwaway selector."""
    config = policy.config
    layers = config.geometry.num_layers if config.geometry is not None else config.dense_layers + 1
    if policy.selector == "full" or config.dense_layers >= layers:
        return 0
    selector = policy.make_selector(config.dense_layers)
    return max(query_window(selector), budget_query_window(selector))


def observation_window(queries: Tensor | None, window: int, start: Tensor | None = None, *,
                       num_positions: int | None = None) -> Tensor | None:
    """``queries`` float ``[B, H_q, n, D]``, the queries of the prompt's last ``n`` positions (all of
    them by default; ``num_positions``: the prompt's length ``N`` when ``n < N``), left padded -> the last
    ``min(window, n)`` positions' ``[B, H_q, Q, D]`` with padding positions (before ``start`` int64
    ``[B]``) zeroed; ``None`` when there are no queries or ``window`` is 0. A copy: the caller's tensor
    is not kept alive by it."""
    if queries is None or window <= 0:
        return None
    n = queries.shape[2]
    N = n if num_positions is None else num_positions
    Q = min(window, n)
    out = queries[:, :, n - Q:].clone()
    if start is not None:
        pos = torch.arange(N - Q, N, device=out.device)
        real = pos[None, :] >= start.to(out.device)[:, None]  # [B, Q]
        out = out * real[:, None, :, None].to(out.dtype)
    return out


def prefill_queries(selector: Any, queries: Tensor | None, start: Tensor | None = None, *,
                    num_positions: int | None = None) -> dict[str, Tensor]:
    """``{"queries": window}`` for ``selector.prefill`` when it wants a window and ``queries``
    ``[B, H_q, n, D]`` are given (every position, or the last ``n`` of ``num_positions``), plus
    ``{"budget_queries": ...}`` when its policy's budget policy wants another window; else ``{}``."""
    own, budget = query_window(selector), budget_query_window(selector)
    out = {}
    window = observation_window(queries, own, start, num_positions=num_positions)
    if window is not None:
        out["queries"] = window
    if budget != own:  # NOTE: the same window serves both (prefill's budget_queries default to queries)
        window = observation_window(queries, budget, start, num_positions=num_positions)
        if window is not None:
            out["budget_queries"] = window
    return out
