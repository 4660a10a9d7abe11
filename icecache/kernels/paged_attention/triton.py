"""Triton sparse paged decode attention, flash-decoding style.

Grid ``(R, num_splits)``: program ``(r, s)`` handles the query heads of one ``(batch row, KV head)``
row over the ``s``-th chunk of the row's page list, ``PAGES_PER_TILE`` pages per step, with an
online softmax (log2 domain). It writes a partial output and log-sum-exp per split; a second kernel
merges the splits. Splitting a row's pages keeps every SM busy when ``R`` (batch x KV heads) is small,
as it is for batch-1 decode. Importing this module imports ``triton``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from icecache.core.page_table import PageTable

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
#: programs to aim for per launch; NOTE: about two waves on a 132-SM H100.
TARGET_PROGRAMS = 264


@triton.jit
def _paged_decode_split_kernel(
    q_ptr, k_ptr, v_ptr, indptr_ptr, indices_ptr, lens_ptr, o_part_ptr, lse_part_ptr,
    scale_log2, softcap, pages_per_split, num_splits,
    stride_kp, stride_ks, stride_vp, stride_vs,
    G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE_BLOCK: tl.constexpr, PAGES_PER_TILE: tl.constexpr, IEEE: tl.constexpr, SOFTCAP: tl.constexpr,
):
    r = tl.program_id(0)
    s = tl.program_id(1)
    row_start = tl.load(indptr_ptr + r)
    row_end = tl.load(indptr_ptr + r + 1)
    split_start = row_start + s * pages_per_split
    split_end = tl.minimum(split_start + pages_per_split, row_end)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < G
    d_mask = offs_d < D
    q_rows = (r * G + offs_g).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * D + offs_d[None, :], mask=g_mask[:, None] & d_mask[None, :],
                other=0.0)  # [BLOCK_G, BLOCK_D]

    BLOCK_N: tl.constexpr = PAGES_PER_TILE * PAGE_BLOCK
    offs_n = tl.arange(0, BLOCK_N)
    tile_page = offs_n // PAGE_BLOCK
    slot = offs_n % PAGE_BLOCK

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for p0 in range(split_start, split_end, PAGES_PER_TILE):
        entry = p0 + tile_page
        in_range = entry < split_end
        page = tl.load(indices_ptr + entry, mask=in_range, other=0).to(tl.int64)
        plen = tl.load(lens_ptr + entry, mask=in_range, other=0)
        valid = in_range & (slot < plen)  # [BLOCK_N]
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + page[:, None] * stride_kp + slot[:, None] * stride_ks + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        v = tl.load(v_ptr + page[:, None] * stride_vp + slot[:, None] * stride_vs + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        if IEEE:
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))  # [BLOCK_G, BLOCK_N] fp32
        qk = qk * scale_log2
        if SOFTCAP:  # cap * tanh(s / cap) in the log2 domain: s2 = s * log2(e), cap2 = cap * log2(e)
            # NOTE: tanh(x) = 2 * sigmoid(2x) - 1 (no tanh in tl core); |2x| <= 40 keeps exp() finite
            # and tanh is 1 to float32 precision there.
            x2 = tl.minimum(tl.maximum(2.0 * qk / softcap, -40.0), 40.0)
            qk = softcap * (2.0 * tl.sigmoid(x2) - 1.0)
        qk = tl.where(valid[None, :], qk, float("-inf"))
        # NOTE: every tile holds at least one valid slot (slot 0 of its first page), so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))  # log2 domain
    part = (q_rows * num_splits + s)  # [BLOCK_G] rows of o_part viewed as [R*G*num_splits, D]
    tl.store(o_part_ptr + part[:, None] * D + offs_d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
    tl.store(lse_part_ptr + part, lse, mask=g_mask)


@triton.jit
def _combine_splits_kernel(
    o_part_ptr, lse_part_ptr, out_ptr, lse_ptr, num_splits,
    D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # one (b, q head)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    d_mask = offs_d < D
    lse_s = tl.load(lse_part_ptr + row * num_splits + offs_s, mask=s_mask, other=float("-inf"))
    m = tl.max(lse_s, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse_s - m_safe)  # [BLOCK_S]; 0 for empty splits
    total = tl.sum(w, axis=0)
    o_s = tl.load(o_part_ptr + (row * num_splits + offs_s)[:, None] * D + offs_d[None, :],
                  mask=s_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    denom = tl.where(total > 0, total, 1.0)
    out = tl.sum(o_s * (w / denom)[:, None], axis=0)
    lse = tl.where(total > 0, (m_safe + tl.log2(denom)) * 0.6931471805599453, float("-inf"))
    tl.store(out_ptr + row * D + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_mask)
    tl.store(lse_ptr + row, lse)


def plan_splits(max_pages: int, num_rows: int, pages_per_tile: int,
                target_programs: int = TARGET_PROGRAMS) -> tuple[int, int]:
    """``(num_splits, pages_per_split)`` so that ``num_rows * num_splits`` approaches
    ``target_programs`` without splitting below one tile of pages."""
    max_pages = max(1, max_pages)
    tiles = math.ceil(max_pages / pages_per_tile)
    num_splits = max(1, min(tiles, math.ceil(target_programs / max(1, num_rows))))
    tiles_per_split = math.ceil(tiles / num_splits)
    num_splits = math.ceil(tiles / tiles_per_split)
    return num_splits, tiles_per_split * pages_per_tile


def paged_decode_attention(query: Tensor, k_pool: Tensor, v_pool: Tensor, table: PageTable, *,
                           scale: float, max_pages_per_row: int | None = None,
                           pages_per_tile: int | None = None, out: Tensor | None = None,
                           lse: Tensor | None = None, softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """See :meth:`icecache.kernels.base.KernelBackend.paged_decode_attention` (inputs already checked).

    ``pages_per_tile`` overrides the pages loaded per loop step; ``out``/``lse`` are optional
    preallocated outputs (contiguous, ``[B, H_q, D]`` in ``query.dtype`` and ``[B, H_q]`` float32).
    """
    B, H_q, D = query.shape
    R, S = table.num_rows, table.page_size
    G = H_q // (R // B)
    device = query.device
    q = query.contiguous()
    if k_pool.stride(-1) != 1 or v_pool.stride(-1) != 1:
        k_pool, v_pool = k_pool.contiguous(), v_pool.contiguous()
    indptr = table.indptr.to(device=device, dtype=torch.int32)
    indices = table.indices.to(device=device, dtype=torch.int32)
    lens = table.lens().to(device=device, dtype=torch.int32)
    if max_pages_per_row is None:
        # NOTE: one device sync; callers that know an upper bound pass it.
        max_pages_per_row = int((indptr[1:] - indptr[:-1]).max()) if R else 0
    page_block = triton.next_power_of_2(S)
    if pages_per_tile is None:
        pages_per_tile = max(1, 64 // page_block)
    num_splits, pages_per_split = plan_splits(max_pages_per_row, R, pages_per_tile)
    block_d = max(16, triton.next_power_of_2(D))
    o_part = torch.empty(R * G * num_splits, D, dtype=torch.float32, device=device)
    lse_part = torch.empty(R * G * num_splits, dtype=torch.float32, device=device)
    _paged_decode_split_kernel[(R, num_splits)](
        q, k_pool, v_pool, indptr, indices, lens, o_part, lse_part,
        scale * LOG2E, (softcap or 1.0) * LOG2E, pages_per_split, num_splits,
        k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        G=G, D=D, BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_D=block_d,
        PAGE_BLOCK=page_block, PAGES_PER_TILE=pages_per_tile, IEEE=query.dtype == torch.float32,
        SOFTCAP=softcap is not None,
        num_warps=4,
    )
    if out is None:
        out = torch.empty(B, H_q, D, dtype=query.dtype, device=device)
    if lse is None:
        lse = torch.empty(B, H_q, dtype=torch.float32, device=device)
    _combine_splits_kernel[(B * H_q,)](
        o_part, lse_part, out, lse, num_splits,
        D=D, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), BLOCK_D=block_d, num_warps=4,
    )
    return out, lse
