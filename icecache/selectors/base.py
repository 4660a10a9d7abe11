"""The selector contract. Concrete base classes (page scoring, budget, GQA merge) live beside it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.selectors.types import PageLayout, Selection


@runtime_checkable
class Selector(Protocol):
    """One layer's page selector, vectorized over batch rows and KV heads.

    Lifecycle: ``prefill`` once with the prompt's keys, then per decode step ``append`` the new
    token's key and ``select`` with its query. Built by a factory registered through
    ``icecache_register_selectors``: ``factory(config, *, layer_idx, policy, **options)``.
    """

    name: str
    config: CacheConfig

    def prefill(self, keys: Tensor, *, start: Tensor | None = None) -> None:
        """Index the prompt. ``keys``: ``[B, H_kv, N, D]``, post-RoPE. ``start``: int64 ``[B]``, the
        first real position of each row under left padding (``None``: all zeros). Positions before
        ``start`` are never attended; sinks are the first ``sink_tokens`` real positions.

        A selector may also accept ``queries=`` (float ``[B, H_q, N, D]``, the prompt's queries; the
        built-ins do, InfLLM and IceCache use them); callers pass it only where the signature has it."""

    def append(self, keys: Tensor) -> None:
        """Add keys of new positions, ``[B, H_kv, n, D]``: they join the window and, once they leave
        it, the index."""

    def select(self, query: Tensor) -> Selection:
        """Choose what one decode position attends. ``query``: ``[B, H_q, D]``."""

    @property
    def layout(self) -> PageLayout:
        """The current logical pages (storage writes each page's K/V into one physical page)."""
