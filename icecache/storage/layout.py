"""Page layout shared by every tier, and the checks on tensors handed to storage.

A **page** holds ``S = page_size`` token slots of one (sequence, layer, KV head): keys and values,
``head_dim = D`` each. Every tier stores a page as one contiguous **record** ``[2, S, D]``
(``record[0]`` keys, ``record[1]`` values) in the config dtype, so a tier's memory is
``[num_slots, 2, S, D]`` (flashinfer's ``[pages, 2, page_size, heads, head_dim]`` layout with one head)
and a run of adjacent slots is one contiguous block of bytes: one gather, one copy, one file read.
"""

from __future__ import annotations

import numpy as np
import torch
from attrs import field, frozen
from torch import Tensor

from icecache.core.config import to_dtype
from icecache.core.errors import PageError, TensorSpecError
from icecache.core.validators import positive

# NOTE: ufunc reductions called directly: ``ndarray.any()`` and friends go through a Python wrapper,
# and the bookkeeping of one move calls them dozens of times.
np_any = np.logical_or.reduce
np_all = np.logical_and.reduce
np_min = np.minimum.reduce
np_max = np.maximum.reduce


@frozen(kw_only=True)
class PageSpec:
    """Geometry and dtype of one page; every tier of a store shares it."""

    page_size: int = field(validator=positive)
    head_dim: int = field(validator=positive)
    dtype: torch.dtype = field(default=torch.float32, converter=to_dtype)

    @property
    def record_shape(self) -> tuple[int, int, int]:
        """``(2, S, D)``: keys then values of one page."""
        return (2, self.page_size, self.head_dim)

    @property
    def page_nbytes(self) -> int:
        """Bytes of one page record (K and V)."""
        return 2 * self.page_size * self.head_dim * self.dtype.itemsize

    def empty(self, n: int, *, device: torch.device | str = "cpu", pin_memory: bool = False) -> Tensor:
        """An uninitialized ``[n, 2, S, D]`` record buffer."""
        return torch.empty((n, *self.record_shape), dtype=self.dtype, device=device, pin_memory=pin_memory)

    def check_kv(self, k: Tensor, v: Tensor, n: int, devices: tuple[torch.device, ...]) -> None:
        """Raise :class:`TensorSpecError` unless ``k`` and ``v`` are ``[n, S, D]`` in ``dtype`` on one of
        ``devices``."""
        want = (n, self.page_size, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, Tensor):
                raise TensorSpecError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != self.dtype:
                raise TensorSpecError(f"{name} has dtype {t.dtype}; pages store {self.dtype}")
            if tuple(t.shape) != want:
                raise TensorSpecError(f"{name} has shape {tuple(t.shape)}; expected [n, S, D] = {list(want)}")
            if not any(_same_device(t.device, d) for d in devices):
                raise TensorSpecError(
                    f"{name} is on device {t.device}; expected one of {[str(d) for d in devices]}"
                )

    def check_lens(self, lens: Tensor | None, n: int) -> Tensor:
        """Valid-slot counts as int32 CPU ``[n]``, each in ``[1, S]`` (``None``: full pages)."""
        if lens is None:
            return torch.full((n,), self.page_size, dtype=torch.int32)
        lens = torch.as_tensor(lens)
        if lens.dtype not in (torch.int32, torch.int64) or tuple(lens.shape) != (n,):
            raise TensorSpecError(f"lens must be an integer tensor of shape [{n}], got {lens.dtype} "
                                  f"{tuple(lens.shape)}")
        lens = lens.to("cpu", torch.int32)
        bad = (lens < 1) | (lens > self.page_size)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise TensorSpecError(f"lens[{i}] = {int(lens[i])} is outside [1, {self.page_size}]")
        return lens


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def as_page_ids(page_ids: Tensor | list[int] | int, *, unique: bool = True) -> Tensor:
    """Page ids as a 1-D int64 CPU tensor; raises :class:`PageError` naming a negative or repeated id
    (a repeat only when ``unique``) and :class:`TensorSpecError` for a non-integer tensor."""
    if isinstance(page_ids, Tensor) and page_ids.dtype == torch.int64 and page_ids.device.type == "cpu" \
            and page_ids.dim() == 1:
        ids = page_ids  # NOTE: the common case, kept free of conversions (this runs on every move)
    else:
        ids = torch.as_tensor(page_ids)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise TensorSpecError(f"page ids must be integers, got dtype {ids.dtype}")
        ids = ids.to("cpu", torch.int64).reshape(-1)
    a = ids.numpy()
    if a.size > 1 and unique:
        if np_all(a[1:] > a[:-1]):  # NOTE: ascending ids (the store sorts them) need no sort here
            low = int(a[0])
        else:
            s = np.sort(a)
            dup = s[1:] == s[:-1]
            if np_any(dup):
                raise PageError(f"page id {int(s[1:][dup][0])} is listed twice")
            low = int(s[0])
    else:
        low = int(np_min(a)) if a.size else 0
    if low < 0:
        raise PageError(f"page id {low} is out of range (negative)")
    return ids


def contiguous_run(slots: Tensor | np.ndarray) -> int | None:
    """The first slot if ``slots`` (int ``[n]``, n >= 1) is ``start, start+1, ...``, else ``None``."""
    a = slots.numpy() if isinstance(slots, Tensor) else slots
    if a.size == 0:
        return None
    start = int(a[0])
    if a.size == 1 or (int(a[-1]) - start == a.size - 1 and np_all(np.diff(a) == 1)):
        return start
    return None
