"""A growable contiguous K/V buffer for one dense layer: ``[B, H_kv, capacity, D]`` with amortized appends.

NOTE: it grows by a 64th (at least 64 positions), not by doubling: a dense layer's KV is most of what a
dense cache holds, and doubling left up to half of it unused.
"""

from __future__ import annotations

import torch
from attrs import define
from torch import Tensor


@define
class GrowableKV:
    """Keys and values of positions ``0..length-1`` (left padding included) of one layer."""

    keys: Tensor  # [B, H_kv, capacity, D]
    values: Tensor  # [B, H_kv, capacity, D]
    length: int

    @classmethod
    def from_tensors(cls, keys: Tensor, values: Tensor, *, device: torch.device | str | None = None,
                     spare: int = 0) -> GrowableKV:
        """Copy ``keys``/``values`` ``[B, H_kv, N, D]`` into a buffer with room for ``spare`` more."""
        B, H, N, D = keys.shape
        device = keys.device if device is None else torch.device(device)
        k = torch.empty(B, H, N + spare, D, dtype=keys.dtype, device=device)
        v = torch.empty_like(k)
        k[:, :, :N].copy_(keys)
        v[:, :, :N].copy_(values)
        return cls(keys=k, values=v, length=N)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def append(self, keys: Tensor, values: Tensor) -> None:
        """Append ``[B, H_kv, n, D]``; grows the buffer by a 64th when full (amortized O(1) per token)."""
        n = keys.shape[2]
        if self.length + n > self.capacity:
            new_cap = max(self.capacity + max(64, self.capacity // 64), self.length + n)
            for name in ("keys", "values"):
                old = getattr(self, name)
                grown = torch.empty(*old.shape[:2], new_cap, old.shape[3], dtype=old.dtype, device=old.device)
                grown[:, :, : self.length].copy_(old[:, :, : self.length])
                setattr(self, name, grown)
        self.keys[:, :, self.length:self.length + n].copy_(keys)
        self.values[:, :, self.length:self.length + n].copy_(values)
        self.length += n

    def view(self) -> tuple[Tensor, Tensor]:
        """``(keys, values)`` ``[B, H_kv, length, D]`` (views, no copy)."""
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def gather(self, token_ids: Tensor, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """K/V of ``token_ids`` int64 ``[B, H_kv, T]`` (``-1`` padding reads position 0; mask it), moved to
        ``device``: ``[B, H_kv, T, D]`` each."""
        idx = token_ids.clamp_min(0).to(self.keys.device)
        idx = idx[..., None].expand(*idx.shape, self.keys.shape[-1])  # [B, H_kv, T, D]
        k = torch.gather(self.keys[:, :, : self.length], 2, idx)
        v = torch.gather(self.values[:, :, : self.length], 2, idx)
        if device is not None:
            k, v = k.to(device, non_blocking=True), v.to(device, non_blocking=True)
        return k, v

    def nbytes(self, *, used_only: bool = True) -> int:
        n = self.length if used_only else self.capacity
        return 2 * self.keys[:, :, :n].numel() * self.keys.element_size()
