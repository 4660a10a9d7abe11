"""Strategies for budget policies: configs with a model's layers, and the policy drawn by name."""

# ruff: noqa: B008
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry

#: the built-in budget policies a strategy draws from (``per-layer`` needs lists: drawn separately)
BUDGET_POLICIES = ("uniform", "pyramid", "adakv")


@st.composite
def budget_configs(draw: Any, *, layers: Any = st.integers(1, 8), kv_heads: Any = st.integers(1, 4),
                   group: Any = st.integers(1, 3), budget: Any = st.integers(8, 160)) -> CacheConfig:
    """A :class:`CacheConfig` with a geometry (``num_layers``, GQA heads), page size 4 or 8, a budget
    and sinks/window that fit it, and 0 to all layers dense."""
    L, H, G = draw(layers), draw(kv_heads), draw(group)
    b = draw(budget)
    sink = draw(st.integers(0, min(8, b // 4)))
    window = draw(st.integers(0, max(0, b // 2 - sink)))
    page_size = draw(st.sampled_from([4, 8]))
    if sink + window == 0 and b < page_size:
        sink = 1
    return CacheConfig(page_size=page_size, budget=b, sink_tokens=sink, window_tokens=window,
                       dense_layers=draw(st.integers(0, L - 1)),
                       geometry=ModelGeometry(num_layers=L, num_q_heads=H * G, num_kv_heads=H, head_dim=8))


@st.composite
def budget_options(draw: Any, name: str) -> dict[str, Any]:
    """Options of the built-in budget policy ``name`` (drawn within their valid ranges)."""
    if name == "pyramid":
        return {"taper": draw(st.floats(0.0, 0.95))}
    if name == "adakv":
        return {"alpha": draw(st.floats(0.0, 1.0)), "max_ratio": draw(st.floats(1.0, 4.0)),
                "observe": draw(st.integers(1, 16))}
    return {}
