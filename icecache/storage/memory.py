"""Tiers whose slots are one in-memory tensor ``[num_slots, 2, S, D]`` (device and host)."""

from __future__ import annotations

import torch
from attrs import define, field, setters
from torch import Tensor

from icecache.storage.layout import contiguous_run
from icecache.storage.slots import SlotTier


@define(eq=False, on_setattr=setters.NO_OP)
class MemoryTier(SlotTier):
    """Slots in a tensor on ``device`` (pinned host memory when ``pin_memory``)."""

    _device: torch.device = field(kw_only=True, factory=lambda: torch.device("cpu"), converter=torch.device)
    pin_memory: bool | None = field(kw_only=True, default=None)
    _data: Tensor | None = field(init=False, default=None)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def data(self) -> Tensor:
        """All slots, ``[num_slots, 2, S, D]``; replaced (not resized in place) when the tier grows."""
        assert self._data is not None
        return self._data

    def _resize_storage(self, num_slots: int) -> None:
        new = self.spec.empty(num_slots, device=self._device, pin_memory=bool(self.pin_memory))
        if self._data is not None and self._num_slots:
            new[: self._num_slots].copy_(self._data[: self._num_slots])
        self._data = new

    def read(self, slots: Tensor, *, out: Tensor | None = None) -> Tensor:
        """Gather ``[n, 2, S, D]``: one contiguous copy for a run of slots, else one ``index_select``."""
        data = self.data
        start = contiguous_run(slots)
        if start is not None:
            block = data[start:start + slots.numel()]
            return block.clone() if out is None else out.copy_(block)
        idx = slots.to(data.device)
        if out is None:
            return data.index_select(0, idx)
        if out.device == data.device and out.is_contiguous():
            return torch.index_select(data, 0, idx, out=out)
        return out.copy_(data.index_select(0, idx))

    def write(self, slots: Tensor, records: Tensor) -> None:
        """Scatter ``records`` ``[n, 2, S, D]``: one copy into a run of slots, else one ``index_copy_``."""
        data = self.data
        start = contiguous_run(slots)
        if start is not None:
            data[start:start + slots.numel()].copy_(records, non_blocking=True)
            return
        data.index_copy_(0, slots.to(data.device), records.to(data.device, non_blocking=True))

    def view(self, start: int, stop: int) -> Tensor:
        return self.data[start:stop]

    def close(self) -> None:
        self._data = None
        self._num_slots = 0
