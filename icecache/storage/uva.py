"""One-kernel page moves over unified virtual addressing (CUDA): the GPU reads pinned host pages.

``TieredStore(..., transfer="uva")`` moves host-resident pages with one Triton kernel that reads each
selected page straight from the (pinned) host tier and writes it into its device slot: no CPU gather,
no staging buffer, no separate scatter. Pinned host memory is mapped into the GPU's address space
(UVA), and Triton accepts such tensors as kernel arguments. Pages on disk still go through staging.

Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors (how the tests check it here).
Importing this module does not import ``triton``; the first call does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import Tensor

#: elements copied per program (a 16 x 128 fp16 page record, K and V, is 4096 elements)
BLOCK = 1024


@cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def copy_rows(src_ptr, dst_ptr, idx_ptr, row, BLOCK: tl.constexpr):
        i = tl.program_id(0)
        j = tl.program_id(1)
        s = tl.load(idx_ptr + 2 * i).to(tl.int64)  # idx[i, 0]: source row
        d = tl.load(idx_ptr + 2 * i + 1).to(tl.int64)  # idx[i, 1]: destination row
        offs = j * BLOCK + tl.arange(0, BLOCK)
        mask = offs < row
        x = tl.load(src_ptr + s * row + offs, mask=mask)
        tl.store(dst_ptr + d * row + offs, x, mask=mask)

    return copy_rows


def _words(t: Tensor) -> Tensor:
    """``t`` reinterpreted as integers of the same width (bit-exact copies whatever the dtype)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.view(width)


def copy_rows(src: Tensor, dst: Tensor, idx: Tensor) -> None:
    """``dst[idx[i, 1]] = src[idx[i, 0]]`` for every ``i``: one kernel launch.

    ``src`` ``[N, ...]`` (CUDA or pinned CPU), ``dst`` ``[M, ...]`` (CUDA) with the same row shape and
    dtype, both contiguous; ``idx`` int64 ``[n, 2]`` contiguous (CUDA, or pinned CPU: read over UVA).
    Rows must not repeat in ``idx[:, 1]``. Asynchronous on the current stream: keep ``src`` rows and
    ``idx`` alive and unchanged until the stream passes this point.
    """
    import triton

    n = idx.shape[0]
    if n == 0:
        return
    assert src.is_contiguous() and dst.is_contiguous() and idx.is_contiguous() and src.dtype == dst.dtype
    row = src[0].numel()
    block = min(BLOCK, triton.next_power_of_2(row))
    grid = (n, triton.cdiv(row, block))
    _kernel()[grid](_words(src), _words(dst), idx, row, BLOCK=block, num_warps=4)
