"""Strategies for keys with cluster structure and queries that favour one cluster.

Each strategy draws parameters and a seed, then calls the plain-torch generators of
:mod:`icecache.testing.synthetic`, so any example can be rebuilt without hypothesis.
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
from icecache.testing.strategies.shapes import GQAShape, gqa_shapes
from icecache.testing.synthetic import ClusteredKV, left_padding, make_clustered_kv, query_for_cluster


@st.composite
def clustered_kv(
    draw: Any, *,
    shape: Any = None,
    num_tokens: Any = st.integers(1, 96),
    num_clusters: Any = st.integers(1, 8),
    spread: Any = st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]),
    norm_range: Any = st.sampled_from([(1.0, 1.0), (0.5, 2.0), (0.1, 8.0)]),
    outlier_fraction: Any = st.sampled_from([0.0, 0.0, 0.02, 0.1]),
    outlier_scale: Any = 8.0,
    contiguous: Any = st.booleans(),
    dtype: Any = torch.float32,
) -> ClusteredKV:
    """A :class:`~icecache.testing.synthetic.ClusteredKV` (keys, values, centroids, assignments).

    ``shape``: a :class:`GQAShape` or a strategy of them (default :func:`gqa_shapes`). The number of
    clusters, their ``spread`` (relative noise), centroid norms, the outlier fraction and scale,
    and whether clusters are position-contiguous are all drawn unless given.
    """
    s: GQAShape = draw_value(draw, shape if shape is not None else gqa_shapes())
    return make_clustered_kv(
        s.batch, s.num_kv_heads, draw_value(draw, num_tokens), s.head_dim,
        num_clusters=draw_value(draw, num_clusters), spread=draw_value(draw, spread),
        norm_range=draw_value(draw, norm_range), outlier_fraction=draw_value(draw, outlier_fraction),
        outlier_scale=draw_value(draw, outlier_scale), contiguous=draw_value(draw, contiguous),
        dtype=draw_value(draw, dtype), seed=draw(seeds),
    )


@frozen(kw_only=True)
class ClusterQuery:
    """A query ``[B, H_q, D]`` and the cluster each KV head's group favours (int64 ``[B, H_kv]``)."""

    query: Tensor
    cluster: Tensor

    def __repr__(self) -> str:
        return f"ClusterQuery(shape={tuple(self.query.shape)}, cluster={self.cluster.tolist()})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # NOTE: hypothesis pretty-prints attrs by fields
        p.text(repr(self))


@st.composite
def cluster_queries(draw: Any, kv: ClusteredKV, *, group_size: Any = st.integers(1, 4),
                    noise: Any = st.sampled_from([0.0, 0.1, 0.5]), scale: Any = st.sampled_from([1.0, 4.0]),
                    ) -> ClusterQuery:
    """A query per decode position that favours a drawn cluster of ``kv`` on every KV head.

    Use with ``st.data()`` or ``flatmap``: ``clustered_kv().flatmap(lambda kv: st.tuples(st.just(kv),
    cluster_queries(kv)))``.
    """
    B, H, C, _ = kv.centroids.shape
    g = torch.Generator().manual_seed(draw(seeds))
    cluster = torch.randint(0, C, (B, H), generator=g)
    q = query_for_cluster(kv, cluster, group_size=draw_value(draw, group_size), noise=draw_value(draw, noise),
                          scale=draw_value(draw, scale), seed=draw(seeds))
    return ClusterQuery(query=q, cluster=cluster)


@st.composite
def left_paddings(draw: Any, batch: int, num_tokens: int, *, max_pad: int | None = None) -> Tensor:
    """int64 ``[batch]`` start positions for left padding: zeros half the time, else random."""
    if draw(st.booleans()):
        return torch.zeros(batch, dtype=torch.int64)
    return left_padding(batch, num_tokens, max_pad=max_pad, seed=draw(seeds))
