"""Growable tensors: amortized appends without doubling (doubling left up to half of a buffer unused)."""

from __future__ import annotations

import torch
from torch import Tensor

#: a growth adds an eighth of the current size (at least ``MIN_GROWTH`` entries)
GROWTH, MIN_GROWTH = 8, 64


def grow(t: Tensor, dim: int, size: int, fill: float | int) -> Tensor:
    """``t`` padded with ``fill`` along ``dim`` to at least ``size`` entries (amortized O(1) appends)."""
    cur = t.shape[dim]
    if size <= cur:
        return t
    new = max(size, cur + max(cur // GROWTH, MIN_GROWTH))
    shape = list(t.shape)
    shape[dim] = new - cur
    return torch.cat([t, torch.full(shape, fill, dtype=t.dtype, device=t.device)], dim=dim)
