"""Strategies for CSR :class:`~icecache.core.page_table.PageTable` values that keep every invariant."""

# ruff: noqa: B008
# NOTE: strategies are immutable, so they are safe (and idiomatic) as parameter defaults.
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from icecache.core.page_table import PageTable
from icecache.testing.strategies._util import draw_value, seeds
from icecache.testing.synthetic import random_page_table


@st.composite
def page_tables(draw: Any, *, rows: Any = st.integers(1, 6), page_size: Any = st.sampled_from([1, 4, 16]),
                num_pages: Any = st.integers(1, 64), max_pages_per_row: Any = st.integers(0, 8),
                partial: Any = st.sampled_from(["any", "last", "none"]), allow_empty_rows: bool = True,
                ) -> PageTable:
    """A :class:`PageTable` that passes ``validate(num_pages)``; each pool page is listed at most once.

    ``rows`` is ``B * H_kv`` (fix it to match your batch and heads). ``partial``: ``"any"`` (pages
    partial anywhere, ``page_lens`` set), ``"last"`` (flashinfer: only the last page of a row) or
    ``"none"``. ``num_pages`` is the pool size; the table's pages are a random subset of it.
    """
    r = draw_value(draw, rows)
    n = draw_value(draw, num_pages)
    if not allow_empty_rows:
        n = max(n, r)
    per_row = draw_value(draw, max_pages_per_row)
    if not allow_empty_rows:
        per_row = max(1, per_row)
    return random_page_table(r, draw_value(draw, page_size), n, max_pages_per_row=per_row,
                             partial=draw_value(draw, partial), allow_empty_rows=allow_empty_rows,
                             seed=draw(seeds))
