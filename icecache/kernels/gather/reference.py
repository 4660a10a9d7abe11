"""Torch reference of page gather/scatter: ``index_select`` and ``index_copy_``."""

from __future__ import annotations

import torch
from torch import Tensor


def gather_pages(pool: Tensor, slot_ids: Tensor, out: Tensor | None = None) -> Tensor:
    """``out[i] = pool[slot_ids[i]]``; ``slot_ids`` int64 on ``pool.device`` (checked by the caller)."""
    if out is None:
        return torch.index_select(pool, 0, slot_ids)
    if out.device == pool.device:
        return torch.index_select(pool, 0, slot_ids, out=out)
    # NOTE: e.g. a device pool into a host staging buffer: gather on the pool's device, one copy.
    out.copy_(torch.index_select(pool, 0, slot_ids))
    return out


def scatter_pages(pool: Tensor, slot_ids: Tensor, src: Tensor) -> None:
    """In place ``pool[slot_ids[i]] = src[i]``."""
    pool.index_copy_(0, slot_ids, src.to(pool.device))
