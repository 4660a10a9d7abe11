"""Small helpers shared by the strategy modules."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy


def draw_value(draw: Any, value: Any) -> Any:
    """``value`` itself, or a value drawn from it when it is a strategy (so parameters accept both)."""
    return draw(value) if isinstance(value, SearchStrategy) else value


#: the seed every synthetic tensor is generated from (shrinks towards 0)
seeds = st.integers(0, 2**31 - 1)
