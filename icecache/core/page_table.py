"""CSR page table, flashinfer semantics, extended with per-page lengths.

Rows are ``(batch row, KV head)`` pairs flattened row-major: row ``r = b * H_kv + h``.

* ``indptr``: int32 ``[R + 1]``; ``indptr[0] == 0``, non-decreasing, ``indptr[-1] == nnz``.
  Row ``r`` owns ``indices[indptr[r]:indptr[r + 1]]``.
* ``indices``: int32 ``[nnz]``; physical page ids (slots of a page pool), each ``< num_pages``.
* ``last_page_len``: int32 ``[R]``; valid slots of the row's last page, in ``[1, page_size]``
  (``0`` for a row with no pages). Every other page of the row is full.
* ``page_lens`` (optional, our extension): int32 ``[nnz]`` valid slots of every listed page,
  each in ``[1, page_size]``. Clustered pages are partial anywhere, not just last; when given it
  takes precedence over ``last_page_len``. Valid slots of a page are always its first ones.

The attention of row ``r`` covers exactly ``sum(lens(r))`` tokens.
"""

from __future__ import annotations

import torch
from attrs import field, frozen
from torch import Tensor

from icecache.core.errors import TensorSpecError


def _int32(name: str):
    def convert(value: Tensor) -> Tensor:
        t = torch.as_tensor(value)
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise TensorSpecError(f"{name} must be a 1-D integer tensor, got {t.dtype} {tuple(t.shape)}")
        return t.to(torch.int32)
    return convert


@frozen(kw_only=True)
class PageTable:
    indptr: Tensor = field(converter=_int32("indptr"))
    indices: Tensor = field(converter=_int32("indices"))
    last_page_len: Tensor = field(converter=_int32("last_page_len"))
    page_size: int
    page_lens: Tensor | None = field(
        default=None, converter=lambda t: None if t is None else _int32("page_lens")(t))

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def lens(self) -> Tensor:
        """Valid slots of every listed page, int32 ``[nnz]``."""
        if self.page_lens is not None:
            return self.page_lens
        lens = torch.full((self.nnz,), self.page_size, dtype=torch.int32, device=self.indices.device)
        counts = self.indptr[1:] - self.indptr[:-1]
        nonempty = counts > 0
        lens[(self.indptr[1:][nonempty] - 1).long()] = self.last_page_len[nonempty]
        return lens

    def tokens_per_row(self) -> Tensor:
        """Tokens attended by each row, int64 ``[R]``."""
        row = self.row_of_entry()
        return torch.zeros(self.num_rows, dtype=torch.int64, device=self.indices.device).index_add_(
            0, row, self.lens().long()
        )

    def row_of_entry(self) -> Tensor:
        """Row of every listed page, int64 ``[nnz]``."""
        counts = (self.indptr[1:] - self.indptr[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.num_rows, device=counts.device), counts)

    def validate(self, num_pages: int | None = None) -> None:
        """Raise :class:`TensorSpecError` naming the first broken invariant."""
        ip = self.indptr
        if ip.numel() < 1 or int(ip[0]) != 0:
            raise TensorSpecError(f"indptr must start at 0, got {ip[:1].tolist()}")
        if bool((ip[1:] < ip[:-1]).any()):
            raise TensorSpecError(f"indptr must be non-decreasing, got {ip.tolist()}")
        if int(ip[-1]) != self.nnz:
            raise TensorSpecError(f"indptr[-1]={int(ip[-1])} != len(indices)={self.nnz}")
        if self.last_page_len.numel() != self.num_rows:
            raise TensorSpecError(
                f"last_page_len has {self.last_page_len.numel()} entries for {self.num_rows} rows"
            )
        if num_pages is not None and self.nnz and (
            int(self.indices.min()) < 0 or int(self.indices.max()) >= num_pages
        ):
            raise TensorSpecError(
                f"page index out of range [0, {num_pages}): min {int(self.indices.min())}, "
                f"max {int(self.indices.max())}"
            )
        lens = self.lens()
        if lens.numel() != self.nnz:
            raise TensorSpecError(f"page_lens has {lens.numel()} entries for {self.nnz} pages")
        if self.nnz and (int(lens.min()) < 1 or int(lens.max()) > self.page_size):
            raise TensorSpecError(
                f"page lengths must lie in [1, {self.page_size}], got min {int(lens.min())}, "
                f"max {int(lens.max())}"
            )

    @classmethod
    def from_page_lists(cls, pages: Tensor, lens: Tensor, page_size: int) -> PageTable:
        """Build from padded lists: ``pages`` int ``[R, K]`` with ``-1`` padding, ``lens`` ``[R, K]``."""
        valid = pages >= 0
        counts = valid.sum(dim=1)
        indptr = torch.zeros(pages.shape[0] + 1, dtype=torch.int64, device=pages.device)
        indptr[1:] = torch.cumsum(counts, 0)
        last = torch.zeros(pages.shape[0], dtype=torch.int64, device=pages.device)
        # last valid entry of each row (valid entries need not be packed left)
        cols = torch.arange(pages.shape[1], device=pages.device)
        # NOTE: a padding column keeps amax defined when K == 0
        pos = torch.nn.functional.pad(torch.where(valid, cols, -1), (0, 1), value=-1).amax(dim=1)
        has = pos >= 0
        last[has] = lens[has, pos[has]].long()
        return cls(indptr=indptr, indices=pages[valid], last_page_len=last, page_size=page_size,
                   page_lens=lens[valid])
