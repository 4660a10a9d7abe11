"""Staging buffers for bulk moves: one contiguous (pinned on CUDA) buffer, one copy to the device.

The buffers are kept and grown, never allocated per move. On CUDA the host->device copy is
``non_blocking`` from pinned memory; a CUDA event recorded after it guards the host buffer, so the
next move waits only if it would overwrite bytes still in flight. Work queued on the current stream
after a move (attention kernels) sees the moved pages without a host synchronization.
"""

from __future__ import annotations

from typing import Any

import torch
from attrs import define, field, setters
from torch import Tensor

from icecache.storage.layout import PageSpec, contiguous_run


@define(eq=False, on_setattr=setters.NO_OP)
class Stager:
    """Staging for moves into a tier on ``device``."""

    spec: PageSpec
    device: torch.device = field(converter=torch.device)
    _host: Tensor | None = field(init=False, default=None)  # [cap, 2, S, D], pinned on CUDA
    _dev: Tensor | None = field(init=False, default=None)  # [cap, 2, S, D] on the device
    _idx: Tensor | None = field(init=False, default=None)  # [cap, 2] int64, pinned on CUDA
    _event: Any = field(init=False, default=None)
    _pending: bool = field(init=False, default=False)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def wait(self) -> None:
        """Block until the last move queued on the device has finished reading its sources."""
        if self._pending:
            self._event.synchronize()
            self._pending = False

    def record(self) -> None:
        """Mark the end of a move queued on the current CUDA stream (see :meth:`wait`)."""
        if self.cuda:
            if self._event is None:
                self._event = torch.cuda.Event()  # NOTE: one event, recorded again by every move
            self._event.record()
            self._pending = True

    def nbytes(self) -> int:
        """Bytes of the buffers kept for the next moves."""
        return sum(t.numel() * t.element_size() for t in (self._idx, self._host, self._dev) if t is not None)

    def index_buffer(self, n: int) -> Tensor:
        """A contiguous int64 ``[n, 2]`` CPU buffer (pinned on CUDA), safe to overwrite now."""
        self.wait()
        if self._idx is None or self._idx.shape[0] < n:
            cap = max(n, 2 * (0 if self._idx is None else self._idx.shape[0]), 256)
            self._idx = torch.empty(cap, 2, dtype=torch.int64, pin_memory=self.cuda)
        return self._idx[:n]

    def host_buffer(self, n: int) -> Tensor:
        """A contiguous ``[n, 2, S, D]`` CPU buffer (pinned on CUDA), safe to overwrite now."""
        self.wait()  # the previous copy out of the buffer has finished
        if self._host is None or self._host.shape[0] < n:
            cap = max(n, 2 * (0 if self._host is None else self._host.shape[0]), 64)
            self._host = self.spec.empty(cap, pin_memory=self.cuda)
        return self._host[:n]

    def upload(self, staged: Tensor, tier: Any, slots: Tensor) -> int:
        """Copy ``staged`` ``[n, 2, S, D]`` (from :meth:`host_buffer`) into ``slots`` of ``tier``: one
        copy (straight into the slots when they are one run, else into device staging and then one
        scatter, ``index_copy_``). Returns the number of host->device copies (1)."""
        if not self.cuda:
            tier.write(slots, staged)
            return 1
        n = staged.shape[0]
        start = contiguous_run(slots)
        target = tier.view(start, start + n) if start is not None else None
        if target is not None:
            target.copy_(staged, non_blocking=True)
        else:
            if self._dev is None or self._dev.shape[0] < n:
                cap = max(n, 2 * (0 if self._dev is None else self._dev.shape[0]), 64)
                self._dev = self.spec.empty(cap, device=self.device)
            dev = self._dev[:n]
            dev.copy_(staged, non_blocking=True)
            tier.write(slots, dev)
        self.record()
        return 1
