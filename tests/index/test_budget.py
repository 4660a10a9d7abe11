"""The vectorized greedy page fill equals the sequential definition and never exceeds the budget."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.errors import BudgetError
from icecache.index.budget import as_budget, greedy_take


def sequential(scores, lens, budget):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    left, taken = budget, set()
    for i in order:
        if scores[i] > float("-inf") and 0 < lens[i] <= left:
            taken.add(i)
            left -= lens[i]
    return taken


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([float("-inf"), 0.0, 0.5, 1.0, 2.0, 3.5]), st.integers(0, 16)),
                min_size=0, max_size=24), st.integers(0, 80), st.sampled_from([None, 1, 3, 4]))
def test_greedy_take_matches_sequential_greedy(pages, budget, check_every):
    scores = torch.tensor([[s for s, _ in pages]], dtype=torch.float32).reshape(1, len(pages))
    lens = torch.tensor([[n for _, n in pages]], dtype=torch.int64).reshape(1, len(pages))
    order, taken = greedy_take(scores, lens, torch.tensor([budget]), check_every=check_every)
    got = set(order[0][taken[0]].tolist())
    assert got == sequential([s for s, _ in pages], [n for _, n in pages], budget)
    assert int(lens[0, list(got)].sum()) <= budget if got else True


def test_as_budget_checks_values():
    assert as_budget(5, (2, 3), torch.device("cpu")).shape == (2, 3)
    with pytest.raises(BudgetError, match="-1"):
        as_budget(-1, (1, 1), torch.device("cpu"))
    with pytest.raises(BudgetError, match="float"):
        as_budget(torch.tensor(1.5), (1, 1), torch.device("cpu"))
