"""Tiers whose slots are one in-memory tensor ``[num_slots, 2, S, D]`` (device and host).

The store reads such a tier's tensor directly in two places, each only where that is provably what
the tier's own methods would do:

* :meth:`MemoryTier.raw_records` (key and token reads, UVA loads): the tensor, when the class keeps
  the base class's ``read`` and memory (:data:`RAW_METHODS`: the tensor is then the one the base
  ``resize_storage`` made, records in ``spec.dtype``); else ``None`` and the store calls
  ``prepare_load`` / ``read``.
* :meth:`MemoryTier.fused_moves` (the fused load, :mod:`icecache.storage.fused_load`): when, in
  addition, the class overrides none of the protocol methods the fused load re-implements
  (:data:`FUSED_METHODS`). The eviction order is not among them: the fused load calls the tier's
  :class:`~icecache.storage.eviction.EvictionPolicy` hooks exactly as the protocol methods do, so a
  tier with ``eviction="lfu"`` keeps the fast path while a subclass that overrides ``touch`` does not.
"""

from __future__ import annotations

import torch
from attrs import define, field, setters
from torch import Tensor

from icecache.storage.layout import contiguous_run
from icecache.storage.slots import SlotTier

#: methods whose base-class versions make the tensor the records ``read`` returns
RAW_METHODS: tuple[str, ...] = ("read", "resize_storage", "view")
#: protocol and bookkeeping methods the fused load re-implements in a few array operations
FUSED_METHODS: tuple[str, ...] = (
    *RAW_METHODS, "write", "lookup", "slot_of", "prepare_load", "complete_load", "prepare_store",
    "complete_store", "touch", "victims", "evictable", "evictable_slots", "free", "evict", "ready_slots",
    "settled", "make_room", "admit", "stamp", "_release", "_take_slots", "_lookup_slots", "_present_slots",
)
_FLAGS: dict[type, tuple[bool, bool]] = {}


def _flags(cls: type) -> tuple[bool, bool]:
    """``(keeps RAW_METHODS, keeps FUSED_METHODS)``: whether ``cls`` inherits them from
    :class:`MemoryTier` unchanged (computed once per class; the load path asks every call)."""
    flags = _FLAGS.get(cls)
    if flags is None:
        def keeps(names: tuple[str, ...]) -> bool:
            return all(getattr(cls, n, None) is getattr(MemoryTier, n) for n in names)

        flags = _FLAGS[cls] = (keeps(RAW_METHODS), keeps(FUSED_METHODS))
    return flags


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

    def raw_records(self) -> Tensor | None:
        """All slots ``[num_slots, 2, S, D]`` when they are exactly what ``read`` returns (the class keeps
        :data:`RAW_METHODS`, so the tensor is the one its ``resize_storage`` made: records in
        ``spec.dtype``), else ``None``: the store may then gather from it in place of ``prepare_load`` /
        ``read`` / ``complete_load``."""
        return self._data if _flags(type(self))[0] else None

    def fused_moves(self) -> bool:
        """Whether the store's fused load may do this tier's bookkeeping and moves itself: the class
        overrides none of :data:`FUSED_METHODS` (checked once per class) and :meth:`raw_records` is
        the tensor. A subclass can refuse it outright by overriding this to return ``False``."""
        return _flags(type(self))[1] and self._data is not None

    def resize_storage(self, num_slots: int) -> None:
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
