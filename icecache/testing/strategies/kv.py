"""Strategies for the page index and clusterers: grouped clustered points and index histories.

Each draws parameters and a seed and calls :func:`icecache.testing.synthetic.make_clustered_kv`, so a
failing example is rebuilt by the same call without hypothesis.
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
from icecache.testing.synthetic import make_clustered_kv


@frozen(kw_only=True)
class PointGroups:
    """``points`` float32 ``[G, N, D]`` clustered per group, ``mask`` bool ``[G, N]`` (False: left out)."""

    points: Tensor
    mask: Tensor
    seed: int

    def __repr__(self) -> str:
        G, N, D = self.points.shape
        return f"PointGroups(G={G}, N={N}, D={D}, masked={int((~self.mask).sum())}, seed={self.seed})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


@st.composite
def point_groups(draw: Any, *, groups: Any = st.integers(1, 4), num_points: Any = st.integers(1, 80),
                 dim: Any = st.sampled_from([2, 8, 16]), clusters: Any = st.integers(1, 6),
                 masked: Any = st.booleans(), norm_range: Any = st.sampled_from([(1.0, 1.0), (0.1, 8.0)]),
                 outliers: Any = st.sampled_from([0.0, 0.05])) -> PointGroups:
    """Clustered ``[G, N, D]`` points (each group its own clusters), optionally with masked points."""
    G, N, D = draw_value(draw, groups), draw_value(draw, num_points), draw_value(draw, dim)
    seed = draw(seeds)
    kv = make_clustered_kv(1, G, N, D, num_clusters=draw_value(draw, clusters), spread=0.2,
                           norm_range=draw_value(draw, norm_range),
                           outlier_fraction=draw_value(draw, outliers), seed=seed)
    mask = torch.ones(G, N, dtype=torch.bool)
    if draw_value(draw, masked):
        mask = torch.rand(G, N, generator=torch.Generator().manual_seed(seed + 1)) > 0.3
    return PointGroups(points=kv.keys[0], mask=mask, seed=seed)


@frozen(kw_only=True)
class IndexHistory:
    """A prompt then inserts for a page index: ``keys`` ``[B, H_kv, N_total, D]``, ``token_ids`` int64
    ``[B, H_kv, N_total]`` (``-1``: not indexed), ``prompt`` keys built, then ``inserts`` (sizes)."""

    keys: Tensor
    token_ids: Tensor
    prompt: int
    inserts: tuple[int, ...]
    seed: int

    def __repr__(self) -> str:
        B, H, N, D = self.keys.shape
        return (f"IndexHistory(B={B}, H_kv={H}, N={N}, D={D}, prompt={self.prompt}, inserts={self.inserts}, "
                f"seed={self.seed})")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


@st.composite
def index_histories(draw: Any, *, max_prompt: int = 150, page_size: int = 16,
                    dim: Any = st.sampled_from([8, 16])) -> IndexHistory:
    """Clustered keys for a build of ``prompt`` keys followed by a few inserts (window pages, single
    tokens, odd sizes); some prompt positions are ``-1`` (sinks)."""
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    prompt = draw(st.integers(0, max_prompt))
    inserts = tuple(draw(st.lists(st.sampled_from([1, 3, page_size, 2 * page_size]), max_size=4)))
    total = max(1, prompt + sum(inserts))
    seed = draw(seeds)
    kv = make_clustered_kv(B, H, total, draw_value(draw, dim), num_clusters=draw(st.integers(1, 6)),
                           spread=0.2, outlier_fraction=0.05, seed=seed)
    ids = torch.arange(total).expand(B, H, total).clone()
    ids[..., :min(draw(st.integers(0, 4)), prompt)] = -1
    return IndexHistory(keys=kv.keys, token_ids=ids, prompt=prompt, inserts=inserts, seed=seed)
