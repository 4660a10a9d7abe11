"""The page-index contract: a search structure over the pages of one layer, per (batch row, KV head).

Shapes: ``B`` batch rows, ``H_kv`` KV heads, ``G`` query heads per KV head (GQA group), ``N`` keys,
``D`` head dim, ``P`` pages (leaves), ``S`` page size (slots), ``K`` pages returned by a query.

An index is built once at prefill (:meth:`PageIndex.build`), grows during decode
(:meth:`PageIndex.insert`, never rebuilt) and answers :meth:`PageIndex.query` with the best pages
within a token budget. Its leaves *are* the physical pages: :attr:`PageIndex.layout` lists the
token positions each page holds, and page ids are stable (a page keeps its id; new pages get new
ids at the end; inserts may add tokens to existing pages, reported as changed pages).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from attrs import frozen
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.selectors.types import PageLayout


@frozen(kw_only=True)
class PageSummaries:
    """Per-page summaries of the *raw* (untransformed) keys, all ``[B, H_kv, P, ...]``.

    * ``centroids``: float ``[B, H_kv, P, D]``, mean key of the page (zeros for empty pages).
    * ``key_min`` / ``key_max``: float ``[B, H_kv, P, D]``, element-wise bounds (Quest's cuboid).
    * ``radius``: float ``[B, H_kv, P]``, ``max_i |k_i - centroid|`` (ArkVale's sphere).
    * ``lens``: int64 ``[B, H_kv, P]``, valid tokens per page (0 for padding pages).

    A selector keeps only the fields its score reads (``PageScoreSelector.summary_fields``); the others
    are ``None``.
    """

    lens: Tensor
    centroids: Tensor | None = None
    key_min: Tensor | None = None
    key_max: Tensor | None = None
    radius: Tensor | None = None


@frozen(kw_only=True)
class PageHits:
    """The answer to one :meth:`PageIndex.query`.

    * ``page_ids``: int64 ``[B, H_kv, K]``, selected pages best first, ``-1`` padding.
    * ``scores``: float32 ``[B, H_kv, K]``, the merged page score (``-inf`` at padding).
    * ``page_lens``: int64 ``[B, H_kv, K]``, tokens in each selected page (0 at padding).
    * ``num_tokens``: int64 ``[B, H_kv]``, tokens in all selected pages, ``<= max_tokens``.
    * ``token_ids``: int64 ``[B, H_kv, T]``, every token position of the selected pages (page by
      page, best page first), ``-1`` padding; ``T <= max(max_tokens)``.
    """

    page_ids: Tensor
    scores: Tensor
    page_lens: Tensor
    num_tokens: Tensor
    token_ids: Tensor


@runtime_checkable
class PageIndex(Protocol):
    """One layer's page index, vectorized over batch rows and KV heads.

    Built by a factory registered through ``icecache_register_indexes``:
    ``factory(config: CacheConfig, **options)``.
    """

    name: str
    config: CacheConfig

    def build(self, keys: Tensor, token_ids: Tensor | None = None) -> None:
        """Index the prompt's keys (replacing any previous content).

        ``keys``: float ``[B, H_kv, N, D]`` (post-RoPE). ``token_ids``: int64 ``[B, H_kv, N]`` or
        ``[N]`` (broadcast), the token position of each key; ``-1`` means *do not index this key*
        (left padding, sinks). ``None``: positions ``0..N-1``.
        """

    def insert(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        """Add keys ``[B, H_kv, n, D]`` with positions ``token_ids`` (int64 ``[B, H_kv, n]`` or ``[n]``,
        ``-1`` = skip). Returns bool ``[B, H_kv, P]`` (``P`` after the insert): pages whose token
        list changed (new pages included), so storage can (re)write them."""

    def query(self, query: Tensor, max_tokens: int | Tensor, *, scale: float | None = None) -> PageHits:
        """Best pages for ``query`` float ``[B, H_kv, G, D]`` (the ``G`` query heads of each KV head
        are merged into one page ranking per KV head) whose token count sums to at most
        ``max_tokens`` (int, or int64 ``[B, H_kv]``). Pages are taken greedily by score, skipping
        a page that would overflow the budget. ``scale``: attention scale (default ``D**-0.5``)."""

    @property
    def layout(self) -> PageLayout:
        """Current pages: ``token_ids`` int64 ``[B, H_kv, P, S]``, ``-1`` padded, ``S = page_size``."""

    def page_summaries(self) -> PageSummaries:
        """Summaries of the current pages (see :class:`PageSummaries`)."""

    @property
    def num_tokens(self) -> Tensor:
        """int64 ``[B, H_kv]``: tokens held by the index."""
