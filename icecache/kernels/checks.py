"""Input checks shared by every backend: bad shapes or dtypes raise TensorSpecError naming the value."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from icecache.core.errors import TensorSpecError
from icecache.core.page_table import PageTable

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_paged_attention(query: Tensor, k_pool: Tensor, v_pool: Tensor, table: PageTable,
                          scale: float | None) -> tuple[int, int, int, float]:
    """Validate a paged attention call; returns ``(B, H_kv, G, scale)``."""
    if query.dim() != 3:
        raise TensorSpecError(f"query must be [B, H_q, D], got shape {tuple(query.shape)}")
    if query.dtype not in FLOAT_DTYPES:
        raise TensorSpecError(f"query must be floating point, got {query.dtype}")
    B, H_q, D = query.shape
    for name, pool in (("k_pool", k_pool), ("v_pool", v_pool)):
        if pool.dim() != 3 or pool.shape[-1] != D:
            raise TensorSpecError(f"{name} must be [num_slots, page_size, D={D}], got {tuple(pool.shape)}")
        if pool.dtype != query.dtype:
            raise TensorSpecError(f"{name} dtype {pool.dtype} differs from query dtype {query.dtype}")
        if pool.device != query.device:
            raise TensorSpecError(f"{name} is on {pool.device}, query on {query.device}")
    if k_pool.shape != v_pool.shape:
        raise TensorSpecError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} differ")
    if k_pool.shape[1] != table.page_size:
        raise TensorSpecError(f"pool page size {k_pool.shape[1]} != table.page_size {table.page_size}")
    R = table.num_rows
    if R == 0 or B == 0 or R % B:
        raise TensorSpecError(f"page table has {R} rows, not a positive multiple of batch {B}")
    H_kv = R // B
    if H_q % H_kv:
        raise TensorSpecError(f"H_q={H_q} query heads is not a multiple of H_kv={H_kv} (table rows / batch)")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if not math.isfinite(scale) or scale <= 0:
        raise TensorSpecError(f"scale must be a positive finite number, got {scale!r}")
    return B, H_kv, H_q // H_kv, float(scale)


def check_softcap(softcap: float | None) -> float | None:
    """``softcap`` is ``None`` or a positive finite number."""
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float))
                                or not math.isfinite(softcap) or softcap <= 0):
        raise TensorSpecError(f"softcap must be None or a positive finite number, got {softcap!r}")
    return None if softcap is None else float(softcap)


def check_slots(pool: Tensor, slot_ids: Tensor, name: str = "slot_ids", *,
                check_range: bool = True) -> Tensor:
    """Validate page ids into ``pool``; returns them as int64 on the pool's device. The range check
    costs a device sync; ``check_range=False`` skips it (the caller vouches for the ids)."""
    if slot_ids.dim() != 1 or slot_ids.dtype not in (torch.int32, torch.int64):
        raise TensorSpecError(f"{name} must be a 1-D integer tensor, got {slot_ids.dtype} "
                              f"{tuple(slot_ids.shape)}")
    if pool.dim() < 1:
        raise TensorSpecError(f"pool must have a leading slot dim, got shape {tuple(pool.shape)}")
    if check_range and slot_ids.numel():
        lo, hi = int(slot_ids.min()), int(slot_ids.max())
        if lo < 0 or hi >= pool.shape[0]:
            raise TensorSpecError(f"{name} out of range [0, {pool.shape[0]}): min {lo}, max {hi}")
    return slot_ids.to(device=pool.device, dtype=torch.int64)


def check_page_buffer(pool: Tensor, buf: Tensor, n: int, name: str) -> None:
    if tuple(buf.shape) != (n, *pool.shape[1:]):
        raise TensorSpecError(f"{name} must have shape {(n, *pool.shape[1:])}, got {tuple(buf.shape)}")
    if buf.dtype != pool.dtype:
        raise TensorSpecError(f"{name} dtype {buf.dtype} differs from pool dtype {pool.dtype}")


def check_scoring(query: Tensor, summary: Tensor | tuple[Tensor, Tensor], kind: str,
                  page_mask: Tensor | None, group_reduce: str) -> tuple[Tensor, Tensor | None]:
    """Validate a scoring call; returns ``(first summary tensor, second or None)``."""
    if kind not in ("centroid", "bounds"):
        raise TensorSpecError(f"kind must be 'centroid' or 'bounds', got {kind!r}")
    if group_reduce not in ("max", "sum", "none"):
        raise TensorSpecError(f"group_reduce must be 'max', 'sum' or 'none', got {group_reduce!r}")
    if kind == "bounds":
        if not (isinstance(summary, (tuple, list)) and len(summary) == 2):
            raise TensorSpecError("kind='bounds' needs summary=(min, max), got "
                                  f"{type(summary).__name__}")
        a, b = summary
        if a.shape != b.shape:
            raise TensorSpecError(f"min {tuple(a.shape)} and max {tuple(b.shape)} summaries differ in shape")
    else:
        if not isinstance(summary, Tensor):
            raise TensorSpecError(f"kind='centroid' needs one centroid tensor, got {type(summary).__name__}")
        a, b = summary, None
    if query.dim() < 2 or a.dim() != query.dim() + 1:
        raise TensorSpecError(f"query [..., H_q, D] {tuple(query.shape)} and summary [..., H_kv, P, D] "
                              f"{tuple(a.shape)} do not match")
    if a.shape[:-3] != query.shape[:-2] or a.shape[-1] != query.shape[-1]:
        raise TensorSpecError(f"query {tuple(query.shape)} and summary {tuple(a.shape)} differ in leading "
                              "dims or D")
    H_q, H_kv = query.shape[-2], a.shape[-3]
    if H_kv == 0 or H_q % H_kv:
        raise TensorSpecError(f"H_q={H_q} is not a multiple of H_kv={H_kv}")
    if page_mask is not None and (page_mask.shape != a.shape[:-1] or page_mask.dtype != torch.bool):
        raise TensorSpecError(f"page_mask must be bool {tuple(a.shape[:-1])}, got {page_mask.dtype} "
                              f"{tuple(page_mask.shape)}")
    return a, b
