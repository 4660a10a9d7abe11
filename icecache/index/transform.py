"""The MIPS -> nearest-neighbour transform (IceFormer / M-DCI).

With ``M^2 = max_i |k_i|^2``: ``T_K(k) = [k; sqrt(M^2 - |k|^2)]`` (every transformed key has norm
``M``) and ``T_Q(q) = [q / |q|; 0]``, so ``|T_Q(q) - T_K(k)|^2 = 1 + M^2 - 2 q.k / |q|``: the nearest
transformed key is the one with the largest inner product.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mips_keys(keys: Tensor, mask: Tensor | None = None,
              max_norm_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Transform keys ``[..., N, D]`` to ``[..., N, D + 1]``.

    ``mask``: bool ``[..., N]`` of keys that count towards ``M`` (others are transformed too, but
    their extra coordinate is clamped at 0). ``max_norm_sq``: ``[...]``, a lower bound on ``M^2``
    (the running maximum grows lazily: pass the previous value). Returns ``(transformed, M^2)``.
    """
    norm_sq = (keys * keys).sum(-1)  # [..., N]
    counted = norm_sq if mask is None else norm_sq.masked_fill(~mask, 0.0)
    m2 = counted.amax(-1)
    if max_norm_sq is not None:
        m2 = torch.maximum(m2, max_norm_sq.to(m2.dtype))
    extra = (m2[..., None] - norm_sq).clamp_min(0.0).sqrt()
    return torch.cat([keys, extra[..., None]], dim=-1), m2


def mips_queries(queries: Tensor) -> Tensor:
    """Transform queries ``[..., D]`` to ``[..., D + 1]``: unit direction, extra coordinate 0."""
    unit = queries / queries.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.cat([unit, torch.zeros_like(unit[..., :1])], dim=-1)
