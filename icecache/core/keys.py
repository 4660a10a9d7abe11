"""Reading a layer's keys by token position, wherever they live: the one interface through which
selectors and indexes see keys after the prefill.

A sparse layer's KV has one home. Inside an :class:`~icecache.integrations.hf.cache.IceCache` that is
the tiered store's pages (host tier, spilling to disk) plus the sinks and recent window on the device;
the layer hands its selector a :class:`KeyReader` over them, and the selector hands it to its index, so
neither keeps a second copy of the keys. A selector or index used on its own (unit tests, ``icecache
bench selectors``, a notebook) gets a :class:`KeyCopy`: the keys it was given, in memory, appended to as
tokens arrive. Both answer the same question the same way: the reads are bit-identical.

Shapes: ``B`` batch rows, ``H_kv`` KV heads, ``T`` positions asked for, ``D`` head dim.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from attrs import define, field
from torch import Tensor

from icecache.core.errors import TensorSpecError


@runtime_checkable
class KeyReader(Protocol):
    """Keys of one layer by token position.

    * :meth:`keys` ``token_ids`` int64 ``[B, H_kv, ...]`` (``-1`` padding) -> float ``[B, H_kv, ..., D]``,
      zeros at padding, on the reader's ``device``. Every position given to the owner so far
      (prefill and appends, paged or not) can be read.
    * ``num_tokens``: positions so far; ``device``: where :meth:`keys` returns them.
    * :meth:`nbytes`: bytes the reader itself holds (``0`` for a view onto storage counted elsewhere).

    A reader may also offer ``page_keys(page_ids [B, H_kv, K]) -> [B, H_kv, K, S, D]``: the keys of its
    layout's pages as last stored, in one gather of whole pages (an index's exact rescoring uses it);
    if it takes ``zero_missing=False``, the index asks for it and ``-1`` pages may then read as any finite
    values (the rescoring masks them). It may also offer ``resident_keys(token_ids [B, H_kv, R])``: the
    keys of sink and recent-window positions only (never paged ones), from wherever it keeps them apart
    (a selector's resident logits use it every step).
    """

    @property
    def num_tokens(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def keys(self, token_ids: Tensor) -> Tensor: ...

    def nbytes(self) -> int: ...


def gather_positions(keys: Tensor, token_ids: Tensor, *, zero_missing: bool = True) -> Tensor:
    """``keys`` ``[B, H_kv, N, D]`` at ``token_ids`` int64 ``[B, H_kv, ...]`` (``-1``: zeros), one gather.
    ``zero_missing=False``: the ``-1`` entries may hold any finite values (for a caller that masks them:
    the zeroing is a pass as large as the gather)."""
    B, H, N, D = keys.shape
    if token_ids.dim() < 2 or token_ids.shape[:2] != (B, H):
        raise TensorSpecError(f"token_ids must be [B={B}, H_kv={H}, ...], got {tuple(token_ids.shape)}")
    tail = token_ids.shape[2:]
    flat = token_ids.reshape(B, H, -1).to(keys.device)
    if flat.numel() and int(flat.max()) >= N:
        raise TensorSpecError(f"position {int(flat.max())} asked for, only {N} keys held")
    idx = flat.clamp_min(0)
    # NOTE: whole rows through one flat index_select: a gather with an index expanded over D is several
    # times slower on the CPU.
    rows = torch.arange(B * H, device=keys.device).view(B, H, 1) * N
    out = keys.reshape(B * H * N, D).index_select(0, (rows + idx).reshape(-1)).view(B, H, -1, D)
    if zero_missing:
        out = out.masked_fill((flat < 0)[..., None], 0)
    return out.view(B, H, *tail, D)


@define
class KeyCopy:
    """A :class:`KeyReader` over keys held in memory, ``[B, H_kv, n, D]`` with spare capacity so that
    one-token appends are amortized O(1). What a selector or index keeps when no storage reader is
    attached (standalone use); inside an ``IceCache`` the layer's store-backed reader replaces it."""

    _data: Tensor = field(alias="data")
    _n: int = field(alias="n")

    @classmethod
    def from_keys(cls, keys: Tensor) -> KeyCopy:
        return cls(data=keys.contiguous(), n=keys.shape[2])

    @property
    def num_tokens(self) -> int:
        return self._n

    @property
    def device(self) -> torch.device:
        return self._data.device

    @property
    def all(self) -> Tensor:
        """``[B, H_kv, n, D]`` view of the stored keys."""
        return self._data[:, :, : self._n]

    def keys(self, token_ids: Tensor) -> Tensor:
        return gather_positions(self.all, token_ids)

    def append(self, keys: Tensor) -> None:
        need = self._n + keys.shape[2]
        if need > self._data.shape[2]:
            cap = max(need, 2 * self._data.shape[2], 64)
            grown = self._data.new_empty(*self._data.shape[:2], cap, self._data.shape[3])
            grown[:, :, : self._n] = self._data[:, :, : self._n]
            self._data = grown
        self._data[:, :, self._n : need] = keys.to(self._data.dtype)
        self._n = need

    def nbytes(self) -> int:
        return self._data.numel() * self._data.element_size()


def tensor_nbytes(*tensors: Tensor | None) -> int:
    """Bytes held by ``tensors``: each distinct storage once, whole (``None`` skipped; a view or an
    expanded tensor counts what it keeps alive, not its element count)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
