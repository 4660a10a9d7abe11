"""GQA shapes: batch rows, KV heads, query heads per KV head, head dim."""

# ruff: noqa: B008
# NOTE: strategies are immutable, so they are safe (and idiomatic) as parameter defaults.
from __future__ import annotations

from typing import Any

from attrs import frozen
from hypothesis import strategies as st

from icecache.testing.strategies._util import draw_value


@frozen(kw_only=True)
class GQAShape:
    """``batch`` rows, ``num_kv_heads`` KV heads, ``group_size`` query heads per KV head, ``head_dim``."""

    batch: int
    num_kv_heads: int
    group_size: int
    head_dim: int

    @property
    def num_q_heads(self) -> int:
        return self.num_kv_heads * self.group_size

    def kv_shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        """``[B, H_kv, N, D]``."""
        return (self.batch, self.num_kv_heads, num_tokens, self.head_dim)

    def query_shape(self) -> tuple[int, int, int]:
        """``[B, H_q, D]`` (one decode position)."""
        return (self.batch, self.num_q_heads, self.head_dim)


@st.composite
def gqa_shapes(draw: Any, *, batch: Any = st.integers(1, 3), num_kv_heads: Any = st.integers(1, 3),
               group_size: Any = st.sampled_from([1, 2, 3, 4]),
               head_dim: Any = st.sampled_from([4, 8, 16, 32])) -> GQAShape:
    """A :class:`GQAShape`; ``group_size=1`` is multi-head attention, ``num_kv_heads=1`` multi-query."""
    return GQAShape(batch=draw_value(draw, batch), num_kv_heads=draw_value(draw, num_kv_heads),
                    group_size=draw_value(draw, group_size), head_dim=draw_value(draw, head_dim))
