"""Small helpers shared by the kernel tests."""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.core.page_table import PageTable


def split_table(table: PageTable, keep: Tensor) -> PageTable:
    """The sub-table of the entries where ``keep`` (bool ``[nnz]``) is True, same rows."""
    row = table.row_of_entry()
    ones = torch.ones_like(row[keep])
    counts = torch.zeros(table.num_rows, dtype=torch.int64).index_add_(0, row[keep], ones)
    indptr = torch.zeros(table.num_rows + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    lens = table.lens()[keep]
    last = torch.zeros(table.num_rows, dtype=torch.int64)
    nonempty = counts > 0
    last[nonempty] = lens[(indptr[1:][nonempty] - 1)].long()
    return PageTable(indptr=indptr, indices=table.indices[keep], last_page_len=last,
                     page_size=table.page_size, page_lens=lens)
