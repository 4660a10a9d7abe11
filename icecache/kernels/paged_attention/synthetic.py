"""Synthetic paged attention problems for tests and benchmarks (torch only, no hypothesis).

:func:`pages_from_dense` lays the chosen tokens of dense ``[B, H_kv, N, D]`` keys/values into
shuffled, partly filled pages of a pool whose other slots hold large garbage, so a kernel that reads
an unlisted slot or a slot beyond a page's length gives a visibly wrong answer.
:func:`dense_masked_attention` is the ground truth: SDPA over the chosen tokens of the dense tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from attrs import frozen
from torch import Tensor

from icecache.core.page_table import PageTable

#: value of pool slots that no page lists (finite, so the torch reference's masked products stay finite)
GARBAGE = 1.0e3


@frozen(kw_only=True)
class PagedProblem:
    """``query`` ``[B, H_q, D]``, pools ``[num_slots, S, D]`` and a table of ``B * H_kv`` rows."""

    query: Tensor
    k_pool: Tensor
    v_pool: Tensor
    table: PageTable


def pages_from_dense(keys: Tensor, values: Tensor, token_mask: Tensor, page_size: int, *,
                     extra_slots: int = 3, generator: torch.Generator | None = None,
                     full_pages: bool = False) -> tuple[Tensor, Tensor, PageTable]:
    """Pack the masked tokens of each ``(b, h)`` row into pages (test helper: loops over rows).

    ``keys``/``values`` ``[B, H_kv, N, D]``, ``token_mask`` bool ``[B, H_kv, N]``. Each row's tokens
    are shuffled and cut into pages of random lengths in ``[1, page_size]`` (all full but the last when
    ``full_pages``); pages go to random slots. Returns ``(k_pool, v_pool, table)``.
    """
    B, H, N, D = keys.shape
    g = generator or torch.Generator().manual_seed(0)
    rows_tokens, rows_lens = [], []
    for r in range(B * H):
        toks = torch.nonzero(token_mask.reshape(B * H, N)[r].cpu()).flatten()
        toks = toks[torch.randperm(toks.numel(), generator=g)]
        lens = []
        left = toks.numel()
        while left > 0:
            n = page_size if full_pages else int(torch.randint(1, page_size + 1, (1,), generator=g))
            lens.append(min(n, left))
            left -= lens[-1]
        rows_tokens.append(toks)
        rows_lens.append(lens)
    num_pages = sum(len(lens) for lens in rows_lens)
    num_slots = num_pages + extra_slots
    slots = torch.randperm(num_slots, generator=g)[:num_pages]
    k_pool = torch.full((num_slots, page_size, D), GARBAGE, dtype=keys.dtype)
    v_pool = torch.full((num_slots, page_size, D), -GARBAGE, dtype=values.dtype)
    flat_k = keys.reshape(B * H, N, D).cpu()
    flat_v = values.reshape(B * H, N, D).cpu()
    k_max = max(1, max(len(lens) for lens in rows_lens))
    pages = torch.full((B * H, k_max), -1, dtype=torch.int64)
    page_lens = torch.zeros((B * H, k_max), dtype=torch.int64)
    i = 0
    for r in range(B * H):
        start = 0
        for j, n in enumerate(rows_lens[r]):
            s = int(slots[i])
            tok = rows_tokens[r][start:start + n]
            k_pool[s, :n] = flat_k[r, tok]
            v_pool[s, :n] = flat_v[r, tok]
            pages[r, j], page_lens[r, j] = s, n
            start += n
            i += 1
    table = PageTable.from_page_lists(pages, page_lens, page_size)
    dev = keys.device
    table = PageTable(indptr=table.indptr.to(dev), indices=table.indices.to(dev),
                      last_page_len=table.last_page_len.to(dev), page_size=page_size,
                      page_lens=table.page_lens.to(dev))
    return k_pool.to(dev), v_pool.to(dev), table


def dense_masked_attention(query: Tensor, keys: Tensor, values: Tensor, token_mask: Tensor, *,
                           scale: float | None = None, softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """SDPA of ``query`` ``[B, H_q, D]`` over the masked tokens of ``[B, H_kv, N, D]`` keys/values, in
    float64. Returns ``(out [B, H_q, D], lse [B, H_q])``; rows with no token give 0 and ``-inf``.
    ``softcap``: scores ``cap * tanh(s / cap)`` (a plain softmax then, SDPA has no softcap)."""
    B, H_q, D = query.shape
    H_kv = keys.shape[1]
    G = H_q // H_kv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q = query.double().reshape(B, H_kv, G, D)  # [B, H_kv, G, D]: the G query heads of a KV head
    k, v = keys.double(), values.double()
    mask = token_mask[:, :, None, :].expand(B, H_kv, G, keys.shape[2])  # [B, H_kv, G, N]
    scores = torch.einsum("bhgd,bhnd->bhgn", q, k) * scale
    if softcap is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    else:
        scores = torch.tanh(scores / softcap) * softcap
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out = torch.einsum("bhgn,bhnd->bhgd", torch.nan_to_num(probs), v)
    lse = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)  # [B, H_kv, G]
    out = torch.where(torch.isinf(lse)[..., None], 0.0, out)  # SDPA gives NaN for empty rows
    return out.reshape(B, H_q, D), lse.reshape(B, H_q).float()


def random_problem(*, batch: int, kv_heads: int, group: int, head_dim: int, page_size: int,
                   pages_per_row: int, num_slots: int, dtype: torch.dtype, device: torch.device | str,
                   seed: int = 0, partial: bool = True) -> PagedProblem:
    """A large random problem built on ``device`` without per-page loops (for GPU checks/benchmarks):
    every row lists ``pages_per_row`` distinct random slots; with ``partial`` each page holds a random
    number of valid slots in ``[1, page_size]``."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    R = batch * kv_heads
    nnz = R * pages_per_row
    if nnz > num_slots:
        raise ValueError(f"num_slots={num_slots} is smaller than the {nnz} pages listed")
    # NOTE: generated on the target device: GPU benchmarks build multi-GB pools in milliseconds.
    query = torch.randn(batch, kv_heads * group, head_dim, generator=g, device=device).to(dtype)
    k_pool = torch.randn(num_slots, page_size, head_dim, generator=g, device=device).to(dtype)
    v_pool = torch.randn(num_slots, page_size, head_dim, generator=g, device=device).to(dtype)
    indices = torch.randperm(num_slots, generator=g, device=device)[:nnz].to(torch.int32)
    if partial:
        lens = torch.randint(1, page_size + 1, (nnz,), generator=g, dtype=torch.int32, device=device)
    else:
        lens = torch.full((nnz,), page_size, dtype=torch.int32, device=device)
    indptr = torch.arange(0, nnz + 1, pages_per_row, dtype=torch.int32, device=device)
    table = PageTable(indptr=indptr, indices=indices,
                      last_page_len=lens.reshape(R, pages_per_row)[:, -1].contiguous(),
                      page_size=page_size, page_lens=lens)
    return PagedProblem(query=query, k_pool=k_pool, v_pool=v_pool, table=table)


def split_table(table: PageTable, keep: Tensor) -> PageTable:
    """The sub-table of the entries where ``keep`` (bool ``[nnz]``) is True, with the same rows (for
    checking that attention over two page subsets merges into attention over all)."""
    row = table.row_of_entry()
    counts = torch.zeros(table.num_rows, dtype=torch.int64, device=row.device)
    counts.index_add_(0, row[keep], torch.ones_like(row[keep]))
    indptr = torch.zeros(table.num_rows + 1, dtype=torch.int64, device=row.device)
    indptr[1:] = torch.cumsum(counts, 0)
    lens = table.lens()[keep]
    last = torch.zeros(table.num_rows, dtype=torch.int64, device=row.device)
    nonempty = counts > 0
    last[nonempty] = lens[(indptr[1:][nonempty] - 1)].long()
    return PageTable(indptr=indptr, indices=table.indices[keep], last_page_len=last,
                     page_size=table.page_size, page_lens=lens)
