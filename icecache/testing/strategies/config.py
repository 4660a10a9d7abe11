"""Strategies for valid :class:`~icecache.core.config.CacheConfig` and its parts."""

# ruff: noqa: B008
# NOTE: strategies are immutable, so they are safe (and idiomatic) as parameter defaults.
from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.testing.strategies._util import draw_value


@st.composite
def model_geometries(draw: Any, *, num_layers: Any = st.integers(1, 4), num_kv_heads: Any = st.integers(1, 4),
                     group_size: Any = st.integers(1, 4), head_dim: Any = st.sampled_from([8, 16, 32, 64]),
                     ) -> ModelGeometry:
    """A :class:`ModelGeometry` whose query heads are a multiple of its KV heads (GQA/MQA/MHA)."""
    kv = draw_value(draw, num_kv_heads)
    return ModelGeometry(num_layers=draw_value(draw, num_layers),
                         num_q_heads=kv * draw_value(draw, group_size), num_kv_heads=kv,
                         head_dim=draw_value(draw, head_dim))


@st.composite
def tier_configs(draw: Any, *, max_pages: int = 64, disk_dir: Any = None) -> TierConfig:
    """A :class:`TierConfig` with bounded or unbounded (``None``) capacities.

    ``disk_dir`` is passed through (strategies must not create directories; give a temp dir)."""
    cap = st.one_of(st.none(), st.integers(1, max_pages))
    return TierConfig(device_pages=draw(cap), host_pages=draw(cap), disk_dir=disk_dir,
                      disk_pages=draw(cap) if disk_dir is not None else None,
                      eviction=draw_value(draw, "lru"))


@st.composite
def cache_configs(
    draw: Any, *,
    page_size: Any = st.sampled_from([1, 2, 4, 8, 16]),
    budget: Any = None,
    sink_tokens: Any = st.integers(0, 4),
    window_tokens: Any = None,
    dense_layers: Any = st.integers(0, 2),
    dtype: Any = torch.float32,
    geometry: Any = None,
    seed: Any = st.integers(0, 2**16),
    max_budget: int = 256,
) -> CacheConfig:
    """A valid :class:`CacheConfig`. Every parameter takes a value or a strategy.

    ``budget`` (default: drawn in ``[sink_tokens + window + 1, max_budget]`` for an explicit window,
    else ``[sink_tokens + 1, max_budget]``, favouring multiples of the page
    size) always leaves room for the sinks; ``window_tokens`` ``None`` draws either the config's
    default or an explicit window in ``[0, budget - sink_tokens]``. ``geometry`` ``None`` leaves it
    unset; pass :func:`model_geometries` to draw one (``dense_layers`` is then clipped to it).
    """
    ps = draw_value(draw, page_size)
    sink = draw_value(draw, sink_tokens)
    # NOTE: an explicit window is drawn first so a drawn budget always holds sinks + window + 1.
    fixed_window = None if window_tokens is None else draw_value(draw, window_tokens)
    if budget is None:
        lo = sink + (fixed_window or 0) + 1
        budget_value = draw(st.one_of(
            st.integers(max(1, -(-lo // ps)), max(1, max_budget // ps)).map(lambda k: k * ps),
            st.integers(lo, max(lo, max_budget)),
        ))
        budget_value = max(budget_value, lo)
    else:
        budget_value = draw_value(draw, budget)
    kwargs: dict[str, Any] = {}
    if window_tokens is None:
        if draw(st.booleans()):
            kwargs["window_tokens"] = draw(st.integers(0, max(0, budget_value - sink)))
    else:
        kwargs["window_tokens"] = fixed_window
    geo = draw_value(draw, geometry)
    dense = draw_value(draw, dense_layers)
    if geo is not None:
        dense = min(dense, geo.num_layers)
    return CacheConfig(page_size=ps, budget=budget_value, sink_tokens=sink, dense_layers=dense,
                       dtype=draw_value(draw, dtype), geometry=geo, seed=draw_value(draw, seed), **kwargs)
