"""Triton page gather/scatter: one program copies one block of one page (pages are contiguous rows).

Importing this module imports ``triton``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: elements copied per program (a 16-slot x 128-dim fp16 page is 2048 elements, 4 KiB)
BLOCK = 2048


@triton.jit
def _copy_pages_kernel(src_ptr, dst_ptr, idx_ptr, page_elems, GATHER: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    slot = tl.load(idx_ptr + i).to(tl.int64)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    mask = offs < page_elems
    if GATHER:  # dst[i] = src[slot]
        x = tl.load(src_ptr + slot * page_elems + offs, mask=mask)
        tl.store(dst_ptr + i * page_elems + offs, x, mask=mask)
    else:  # dst[slot] = src[i]
        x = tl.load(src_ptr + i * page_elems + offs, mask=mask)
        tl.store(dst_ptr + slot * page_elems + offs, x, mask=mask)


def _launch(src: Tensor, dst: Tensor, slot_ids: Tensor, gather: bool) -> None:
    n = slot_ids.numel()
    if n == 0:
        return
    page_elems = src[0].numel() if src.shape[0] else dst[0].numel()
    block = min(BLOCK, triton.next_power_of_2(page_elems))
    grid = (n, triton.cdiv(page_elems, block))
    _copy_pages_kernel[grid](src, dst, slot_ids, page_elems, GATHER=gather, BLOCK=block, num_warps=4)


def gather_pages(pool: Tensor, slot_ids: Tensor, out: Tensor | None = None) -> Tensor:
    """``out[i] = pool[slot_ids[i]]`` with ``pool`` and ``out`` contiguous on one device."""
    pool = pool.contiguous()
    if out is None:
        out = torch.empty((slot_ids.numel(), *pool.shape[1:]), dtype=pool.dtype, device=pool.device)
    target = out if out.is_contiguous() and out.device == pool.device else \
        torch.empty(out.shape, dtype=out.dtype, device=pool.device)
    _launch(pool, target, slot_ids, gather=True)
    if target is not out:
        out.copy_(target)
    return out


def scatter_pages(pool: Tensor, slot_ids: Tensor, src: Tensor) -> None:
    """In place ``pool[slot_ids[i]] = src[i]``; ``pool`` must be contiguous."""
    src = src.to(pool.device).contiguous()
    _launch(src, pool, slot_ids, gather=False)
