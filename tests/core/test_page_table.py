import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from icecache.core.errors import TensorSpecError
from icecache.core.page_table import PageTable


@st.composite
def page_lists(draw):
    rows = draw(st.integers(1, 6))
    width = draw(st.integers(0, 8))
    page_size = draw(st.sampled_from([1, 4, 16]))
    num_pages = draw(st.integers(max(1, rows * width), 64))
    ids = torch.randperm(num_pages)[: rows * width].reshape(rows, width)
    keep = torch.tensor(draw(st.lists(st.booleans(), min_size=rows * width, max_size=rows * width)),
                        dtype=torch.bool).reshape(rows, width)
    pages = torch.where(keep, ids, -1)
    lens = torch.randint(1, page_size + 1, (rows, width))
    return pages, lens, page_size, num_pages


@given(page_lists())
def test_from_page_lists_satisfies_csr_invariants_and_counts_tokens(case):
    pages, lens, page_size, num_pages = case
    table = PageTable.from_page_lists(pages, lens, page_size)
    table.validate(num_pages)
    expected = torch.where(pages >= 0, lens, 0).sum(dim=1)
    assert torch.equal(table.tokens_per_row(), expected)
    for r in range(pages.shape[0]):
        row = table.indices[table.indptr[r]: table.indptr[r + 1]].long()
        assert torch.equal(row, pages[r][pages[r] >= 0])


def test_last_page_len_semantics_without_page_lens():
    table = PageTable(indptr=torch.tensor([0, 2, 2, 3]), indices=torch.tensor([5, 1, 7]),
                      last_page_len=torch.tensor([3, 0, 16]), page_size=16)
    table.validate(8)
    assert table.lens().tolist() == [16, 3, 16]
    assert table.tokens_per_row().tolist() == [19, 0, 16]


@pytest.mark.parametrize("kwargs,match", [
    (dict(indptr=[1, 2], indices=[0, 1], last_page_len=[1]), "indptr must start at 0"),
    (dict(indptr=[0, 2, 1], indices=[0], last_page_len=[1, 1]), "non-decreasing"),
    (dict(indptr=[0, 3], indices=[0, 1], last_page_len=[1]), r"indptr\[-1\]=3 != len\(indices\)=2"),
    (dict(indptr=[0, 2], indices=[0, 9], last_page_len=[1]), r"out of range \[0, 4\)"),
    (dict(indptr=[0, 1], indices=[0], last_page_len=[17]), r"page lengths must lie in \[1, 16\]"),
])
def test_validate_names_the_broken_invariant(kwargs, match):
    table = PageTable(page_size=16, **{k: torch.tensor(v) for k, v in kwargs.items()})
    with pytest.raises(TensorSpecError, match=match):
        table.validate(4)


def test_non_integer_index_tensor_rejected():
    with pytest.raises(TensorSpecError, match="indices must be a 1-D integer tensor"):
        PageTable(indptr=torch.tensor([0, 1]), indices=torch.tensor([0.5]), last_page_len=torch.tensor([1]),
                  page_size=16)
