"""A growable key buffer: amortized appends along the token axis."""

from __future__ import annotations

from attrs import define, field
from torch import Tensor


@define
class KeyBuffer:
    """Keys ``[B, H_kv, n, D]`` with spare capacity so that one-token appends are O(1) amortized."""

    _data: Tensor = field(alias="data")
    _n: int = field(alias="n")

    @classmethod
    def from_keys(cls, keys: Tensor) -> KeyBuffer:
        return cls(data=keys.contiguous(), n=keys.shape[2])

    @property
    def keys(self) -> Tensor:
        """``[B, H_kv, n, D]`` view of the stored keys."""
        return self._data[:, :, : self._n]

    def append(self, keys: Tensor) -> None:
        need = self._n + keys.shape[2]
        if need > self._data.shape[2]:
            cap = max(need, 2 * self._data.shape[2], 64)
            grown = self._data.new_empty(*self._data.shape[:2], cap, self._data.shape[3])
            grown[:, :, : self._n] = self._data[:, :, : self._n]
            self._data = grown
        self._data[:, :, self._n : need] = keys
        self._n = need
