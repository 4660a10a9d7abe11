"""Pages touched and contiguous copy runs against Python references."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.metrics import copy_runs, pages_touched, touched_page_ids


def runs_reference(ids: list[int]) -> int:
    pages = sorted({i for i in ids if i >= 0})
    return sum(1 for j, p in enumerate(pages) if j == 0 or p != pages[j - 1] + 1)


@settings(max_examples=80, deadline=None, database=None)
@given(rows=st.lists(st.lists(st.integers(-1, 20), min_size=0, max_size=12), min_size=1, max_size=4))
def test_copy_runs_and_pages_touched_match_references(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64).view(
        1, len(rows), width
    )
    assert copy_runs(ids)[0].tolist() == [runs_reference(r) for r in rows]
    assert pages_touched(ids)[0].tolist() == [len({i for i in r if i >= 0}) for r in rows]


def test_copy_runs_examples():
    assert copy_runs(torch.tensor([[[5, 3, 4, 9, -1]]])).tolist() == [[2]]
    assert copy_runs(torch.tensor([[[-1, -1]]])).tolist() == [[0]]


def test_touched_pages_follow_the_layout():
    layout = torch.tensor([[[[4, 5], [9, -1], [6, 7]]]])  # [1, 1, P=3, S=2]
    tokens = torch.tensor([[[0, 1, 9, 7, -1]]])  # sinks 0, 1 are in no page
    assert touched_page_ids(tokens, layout).tolist() == [[[False, True, True]]]
