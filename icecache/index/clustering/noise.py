"""Counter-based random numbers: a value per (seed, row key, position), not per draw.

The index clusters many rows (batch x KV heads) at once. With one generator stream, a row's random
numbers depend on how many rows come before it and on the padded width, so a sample's pages (and
its answer) would change with the samples it is batched with. Hashing ``(seed, key, position)``
gives each row the same numbers wherever it sits: callers key rows by what identifies them inside
one sequence (KV head, cell), never by batch position.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_MULT = 0x45D9F3B  # < 2**27, so a 32-bit value times it stays inside int64


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding 32-bit values."""
    x = (((x >> 16) ^ x) * _MULT) & _MASK
    x = (((x >> 16) ^ x) * _MULT) & _MASK
    return (x >> 16) ^ x


def hashed_uniform(seed: int, keys: Tensor, positions: Tensor) -> Tensor:
    """Floats in ``[0, 1)``, ``[R, n]``: a fixed function of ``seed``, ``keys`` int64 ``[R]`` (any
    non-negative value) and ``positions`` int64 ``[n]`` or ``[R, n]``."""
    keys = keys.to(torch.int64)
    seeded = _mix(torch.tensor(seed & _MASK, dtype=torch.int64, device=keys.device))
    row = _mix(_mix((keys >> 32) ^ seeded) ^ (keys & _MASK))  # [R]
    pos = positions.to(device=keys.device, dtype=torch.int64) & _MASK
    if pos.dim() == 1:
        pos = pos[None]
    return (_mix(row[:, None] ^ _mix(pos)).double() / float(1 << 32)).float()


def draw_seed(generator: torch.Generator | None) -> int:
    """One 31-bit seed from ``generator`` (fresh randomness when None): the only draw a hashed
    caller makes, so it does not depend on tensor shapes."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
