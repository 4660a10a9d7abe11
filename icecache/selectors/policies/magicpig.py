"""MagicPIG: locality-sensitive hashing (SimHash) finds the keys that collide with the query."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from attrs.validators import ge, le
from torch import Tensor

from icecache.core.keys import tensor_nbytes
from icecache.selectors.bases.token_score import TokenScoreSelector


def simhash(x: Tensor, planes: Tensor) -> Tensor:
    """SimHash codes: ``x`` float ``[..., D]``, ``planes`` float ``[D, L, K]`` (``L`` tables of ``K``
    random hyperplanes) -> int32 ``[..., L]``, bit ``k`` of table ``l`` = ``x . planes[:, l, k] > 0``."""
    L, K = planes.shape[1:]
    bits = torch.einsum("...d,dlk->...lk", x.float(), planes) > 0  # [..., L, K]
    weights = 2 ** torch.arange(K, device=x.device, dtype=torch.int32)
    return (bits.to(torch.int32) * weights).sum(-1, dtype=torch.int32)


@define(kw_only=True, slots=False)
class MagicPIGSelector(TokenScoreSelector):
    """Take the tokens whose keys share the query's SimHash bucket in the most hash tables.

    Based on https://arxiv.org/abs/2410.16179 (Chen et al., ICLR 2025). Every paged key is hashed by
    ``tables`` SimHash functions of ``bits`` random hyperplanes each (the same hyperplanes for every
    head of a layer, drawn from ``config.seed`` and the layer index); a key collides with the query in
    a table when both fall on the same side of its ``bits`` hyperplanes, which happens with probability
    ``(1 - angle / pi) ** bits``: the more tables collide, the larger ``q . k`` is likely to be.

    NOTE (simplification): MagicPIG *samples* the colliding keys (at least two collisions) and
    *estimates* attention with importance weights ``1 / p(collision)``; this framework's kernels attend
    an exact selection, so here the tokens that collide in the most tables (summed over the GQA group's
    query heads; ties by position, newest first) fill the budget and are attended exactly. The
    hashes (one int32 per table and token) are what the selector keeps; keys are read only when paged.
    """

    name: ClassVar[str] = "magicpig"
    needs_keys: ClassVar[bool] = False
    bits: int = field(default=8, validator=[ge(1), le(30)])
    tables: int = field(default=75, validator=ge(1))

    _planes: Tensor | None = field(default=None, init=False, repr=False)  # [D, L, K]
    _codes: Tensor | None = field(default=None, init=False, repr=False)  # int32 [B, H_kv, paged_end, L]

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        D = keys.shape[-1]
        gen = torch.Generator().manual_seed(self.config.seed * 1000 + self.layer_idx)
        self._planes = torch.randn(D, self.tables, self.bits, generator=gen).to(keys.device)
        self._codes = simhash(keys[:, :, : self.positions.paged_end], self._planes)

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        self._codes = torch.cat([self._codes, simhash(keys, self._planes)], dim=2)

    def nbytes(self) -> dict[str, int]:
        out = super().nbytes()
        out["hashes"] = tensor_nbytes(self._codes, self._planes)
        return out

    def token_scores(self, query: Tensor, keys: Tensor | None) -> Tensor:  # [B, H_kv, n]
        B, H, G, _ = query.shape
        n = self.num_tokens
        q = simhash(query, self._planes)  # [B, H_kv, G, L]
        hits = (self._codes[:, :, None] == q[:, :, :, None]).sum(-1, dtype=torch.int32).sum(2)  # [B,H_kv,n']
        # NOTE: ties go to the newest position (a fraction below one collision)
        pos = torch.arange(hits.shape[-1], device=hits.device, dtype=torch.float32)
        scores = hits.float() + pos / (n + 1)
        pad = scores.new_full((B, H, n - scores.shape[-1]), float("-inf"))
        return torch.cat([scores, pad], dim=-1)
