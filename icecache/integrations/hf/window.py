"""The KV of a sliding-window layer: its last ``window - 1`` positions, nothing else (memory O(window)).

A sliding-window layer attends each query to itself and the ``window - 1`` positions before it
(transformers' ``sliding_window_causal_mask_function``: ``q - window < k <= q``), so older positions can
never be read again and are dropped; such a layer needs no selection. The layout and mask sizes follow
transformers' ``DynamicSlidingWindowLayer``, so the masks transformers builds for a multi-token update
line up with the keys returned.
"""

from __future__ import annotations

import torch
from torch import Tensor


class WindowKV:
    """``keys``/``values`` ``[B, H_kv, min(n, window - 1), D]``: the newest positions of ``n`` so far."""

    def __init__(self, window: int):
        self.window = window
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.n = 0

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``[B, H_kv, q, D]``; returns the cached positions followed by the new ones (what the
        queries of this update may attend) and keeps the last ``window - 1``."""
        if self.keys is None:
            full_k, full_v = keys, values
        else:
            full_k = torch.cat([self.keys, keys], dim=2)
            full_v = torch.cat([self.values, values], dim=2)
        self.n += keys.shape[2]
        keep = self.window - 1
        # NOTE: clone so the kept window does not pin a whole prompt's K/V through a view.
        self.keys = full_k[:, :, full_k.shape[2] - min(keep, full_k.shape[2]):].clone()
        self.values = full_v[:, :, full_v.shape[2] - min(keep, full_v.shape[2]):].clone()
        return full_k, full_v

    def mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of the keys the next update of ``query_length`` returns."""
        offset = max(self.n - self.window + 1, 0)
        return min(self.n, self.window - 1) + query_length, offset

    def positions(self, num_keys: int) -> Tensor:
        """Positions of the ``num_keys`` keys the last update returned, int64 ``[num_keys]``."""
        return torch.arange(self.n - num_keys, self.n)

    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return 2 * self.keys.numel() * self.keys.element_size()
