"""Triton page scoring: one program scores ``BLOCK_P`` pages of one (leading index, KV head) row for
the row's ``G`` query heads, then reduces over the group. Importing this module imports ``triton``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_REDUCE = {"max": 0, "sum": 1, "none": 2}


@triton.jit
def _score_pages_kernel(
    q_ptr, a_ptr, b_ptr, mask_ptr, out_ptr, P,
    G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    BOUNDS: tl.constexpr, HAS_MASK: tl.constexpr, REDUCE: tl.constexpr, IEEE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # flattened (leading..., KV head)
    pb = tl.program_id(1)
    offs_g = tl.arange(0, BLOCK_G)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < G
    p_mask = offs_p < P
    d_mask = offs_d < D
    q = tl.load(q_ptr + (row * G + offs_g)[:, None] * D + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]
    s_off = (row * P + offs_p)[:, None] * D + offs_d[None, :]
    s_mask = p_mask[:, None] & d_mask[None, :]
    a = tl.load(a_ptr + s_off, mask=s_mask, other=0.0)  # [BLOCK_P, BLOCK_D]
    if BOUNDS:
        qf = q.to(tl.float32)
        b = tl.load(b_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        af = a.to(tl.float32)
        scores = tl.sum(tl.maximum(qf[:, None, :] * af[None, :, :], qf[:, None, :] * b[None, :, :]),
                        axis=2)  # [BLOCK_G, BLOCK_P]
    elif IEEE:  # NOTE: centroid scores are a small matmul; BLOCK_G >= 16 pads the group for tl.dot
        scores = tl.dot(q, tl.trans(a), input_precision="ieee")  # [BLOCK_G, BLOCK_P] fp32
    else:
        scores = tl.dot(q, tl.trans(a))  # [BLOCK_G, BLOCK_P] fp32
    if HAS_MASK:
        keep = tl.load(mask_ptr + row * P + offs_p, mask=p_mask, other=0) != 0
        scores = tl.where(keep[None, :], scores, float("-inf"))
    if REDUCE == 0:
        red = tl.max(tl.where(g_mask[:, None], scores, float("-inf")), axis=0)
        tl.store(out_ptr + row * P + offs_p, red, mask=p_mask)
    elif REDUCE == 1:
        red = tl.sum(tl.where(g_mask[:, None], scores, 0.0), axis=0)
        tl.store(out_ptr + row * P + offs_p, red, mask=p_mask)
    else:
        tl.store(out_ptr + (row * G + offs_g)[:, None] * P + offs_p[None, :], scores,
                 mask=g_mask[:, None] & p_mask[None, :])


def score_pages(query: Tensor, first: Tensor, second: Tensor | None, *, kind: str,
                page_mask: Tensor | None, group_reduce: str, out: Tensor | None = None) -> Tensor:
    """See :meth:`icecache.kernels.base.KernelBackend.score_pages` (inputs already checked); ``out``
    is an optional preallocated contiguous float32 result."""
    *lead, H_q, D = query.shape
    H_kv, P = first.shape[-3], first.shape[-2]
    G = H_q // H_kv
    rows = H_kv
    for n in lead:
        rows *= n
    q = query.contiguous()
    a = first.contiguous()
    b = second.contiguous() if second is not None else a
    mask = page_mask.contiguous().view(torch.uint8) if page_mask is not None else a
    out_heads = H_q if group_reduce == "none" else H_kv
    if out is None:
        out = torch.empty((*lead, out_heads, P), dtype=torch.float32, device=query.device)
    if rows == 0 or P == 0:
        return out
    bounds = kind == "bounds"
    if bounds:
        block_g, block_d = triton.next_power_of_2(G), triton.next_power_of_2(D)
        # NOTE: keep the [G, P, D] elementwise product under ~16K elements per program (registers).
        block_p = max(1, min(triton.next_power_of_2(P), 16384 // (block_g * block_d), 64))
    else:
        # NOTE: tl.dot needs every block dim >= 16.
        block_g, block_d = max(16, triton.next_power_of_2(G)), max(16, triton.next_power_of_2(D))
        block_p = max(16, min(128, triton.next_power_of_2(P)))
    if a.dtype != q.dtype:  # NOTE: tl.dot wants one dtype; mixed inputs meet in float32
        q, a = q.float(), a.float()
    grid = (rows, triton.cdiv(P, block_p))
    _score_pages_kernel[grid](
        q, a, b, mask, out, P, G=G, D=D, BLOCK_G=block_g, BLOCK_P=block_p, BLOCK_D=block_d,
        BOUNDS=bounds, HAS_MASK=page_mask is not None, REDUCE=_REDUCE[group_reduce],
        IEEE=q.dtype == torch.float32, num_warps=4,
    )
    return out
