"""ClusterKV: semantic clusters of keys, ranked by q.centroid."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.index.base import PageSummaries
from icecache.selectors.bases.page_score import PageScoreSelector
from icecache.selectors.plumbing.kmeans import spherical_kmeans
from icecache.selectors.plumbing.layout import append_pages, layout_from_groups


@define(kw_only=True, slots=False)
class ClusterKVSelector(PageScoreSelector):
    """Flat k-means clusters of the prompt's keys (cosine similarity), ranked by ``q . centroid``.

    Based on https://arxiv.org/abs/2412.03213 (Liu et al., DAC 2025). ``tokens_per_cluster`` sets the
    number of clusters (``ceil(paged tokens / tokens_per_cluster)``); a cluster larger than a page
    is split into pages of ``page_size`` tokens, each scored by its own centroid. Tokens that leave
    the window during decode form new pages of consecutive tokens (ClusterKV clusters decode tokens
    in batches of their own, never mixing them into prompt clusters). ``balanced`` (off by default: not
    ClusterKV's algorithm): the final assignment holds at most ``page_size`` keys per cluster, so
    clusters fill their pages. Free cluster sizes leave about a third of the page slots empty (held
    memory ~1.6x full KV at 4k); balanced ones fill 99.8% of them for 0.012 less attention recall at 4k,
    budget 256 (0.941 vs 0.953; docs/benchmarks.md, "Memory").
    """

    name: ClassVar[str] = "clusterkv"
    summary_fields: ClassVar[tuple[str, ...]] = ("centroids",)
    tokens_per_cluster: int = field(default=16, validator=ge(1))
    iters: int = field(default=10, validator=ge(0))
    balanced: bool = field(default=False)

    def build_layout(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> Tensor:
        B, H, N, D = keys.shape
        mask = (token_ids >= 0).reshape(B * H, N)
        n_paged = int(mask.sum(1).max()) if N else 0
        clusters = -(-n_paged // self.tokens_per_cluster)
        if clusters == 0:
            return torch.full((B, H, 0, self.config.page_size), -1, dtype=torch.int64, device=keys.device)
        groups = spherical_kmeans(
            keys.reshape(B * H, N, D),
            mask,
            clusters,
            iters=self.iters,
            seed=self.config.seed + self.layer_idx,
            capacity=self.page_size if self.balanced and clusters * self.page_size >= n_paged else None,
        )
        return layout_from_groups(groups.view(B, H, N), self.config.page_size)

    def extend_layout(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        return append_pages(self._pages, token_ids, self.config.page_size)

    def score(self, query: Tensor, summaries: PageSummaries) -> Tensor:  # [B, H_kv, G, P]
        return torch.einsum("bhgd,bhpd->bhgp", query.to(summaries.centroids.dtype), summaries.centroids)
