import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from icecache.core.budget import BudgetLedger
from icecache.core.errors import BudgetError


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 512), st.data())
def test_ledger_accepts_exactly_the_selections_within_budget(B, H, budget, data):
    rows = st.lists(st.lists(st.integers(0, budget), min_size=H, max_size=H), min_size=B, max_size=B)
    parts = [torch.tensor(data.draw(rows)) for _ in range(4)]
    total = sum(parts)
    make = lambda: BudgetLedger(budget=budget, sink=parts[0], window=parts[1], selected=parts[2],
                                extra=parts[3])
    if int(total.max()) > budget or int(total.min()) < 1:
        with pytest.raises(BudgetError):
            make()
    else:
        ledger = make()
        assert torch.equal(ledger.total, total)
        assert ledger.summary()["max_total"] == int(total.max())


def test_over_budget_error_names_where_and_how_much():
    sel = torch.tensor([[10, 300]])
    where = r"attends 304 tokens at \[batch, kv_head\]=\[0, 1\], over the budget of 256"
    with pytest.raises(BudgetError, match=where):
        BudgetLedger(budget=256, sink=4, window=0, selected=sel)


def test_empty_selection_is_an_error():
    with pytest.raises(BudgetError, match="empty selection"):
        BudgetLedger(budget=16, sink=torch.zeros(1, 2), window=0, selected=0)
