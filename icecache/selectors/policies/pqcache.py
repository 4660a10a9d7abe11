"""PQCache: product-quantized keys, tokens ranked by asymmetric distance to the query."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field
from attrs.validators import ge, le
from torch import Tensor

from icecache.core.errors import ConfigError
from icecache.core.keys import tensor_nbytes
from icecache.index.clustering.kmeans import kmeans
from icecache.selectors.bases.token_score import TokenScoreSelector


def pq_encode(keys: Tensor, codebooks: Tensor) -> Tensor:
    """Nearest centroid of each sub-vector: ``keys`` float ``[B, H, n, D]``, ``codebooks`` float
    ``[B, H, M, K, D/M]`` -> uint8 ``[B, H, n, M]``."""
    B, H, n, D = keys.shape
    M, K, d = codebooks.shape[2:]
    sub = keys.float().reshape(B, H, n, M, d).permute(0, 1, 3, 2, 4)  # [B, H, M, n, d]
    c2 = (codebooks * codebooks).sum(-1)[..., None, :]  # [B, H, M, 1, K]
    dist = c2 - 2 * sub @ codebooks.transpose(-1, -2)  # [B, H, M, n, K]
    return dist.argmin(-1).permute(0, 1, 3, 2).to(torch.uint8)


@define(kw_only=True, slots=False)
class PQCacheSelector(TokenScoreSelector):
    """Take the tokens whose product-quantized keys have the largest inner product with the query.

    Based on https://arxiv.org/abs/2407.12820 (Zhang et al., SIGMOD 2025). Keys are cut into
    ``subspaces`` sub-vectors; per KV head and sub-space a k-means codebook of ``centroids`` entries is
    learnt from the prompt's paged keys, and every paged key is stored as its code (one byte per
    sub-space). Per decode step a lookup table of ``q_m . c_{m,j}`` (asymmetric distance: the query is
    exact) gives every token's approximate ``q . k`` as a sum of table entries; the best tokens that fit
    the budget are attended (GQA: the group's approximate attention masses are summed).

    NOTE (simplifications): the codebook is learnt once from the first keys that go into pages (the
    prompt's; a prompt that pages nothing learns it from the first flush) and keys paged later are
    encoded with it, as PQCache does for generated tokens; PQCache runs the k-means on the CPU
    overlapped with the prefill, here it runs inside ``prefill``.
    """

    name: ClassVar[str] = "pqcache"
    needs_keys: ClassVar[bool] = False
    subspaces: int = field(default=4, validator=ge(1))
    centroids: int = field(default=64, validator=[ge(1), le(256)])
    iters: int = field(default=10, validator=ge(1))

    _codebooks: Tensor | None = field(default=None, init=False, repr=False)  # [B, H_kv, M, K, D/M]
    _codes: Tensor | None = field(default=None, init=False, repr=False)  # uint8 [B, H_kv, paged_end, M]

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        D = keys.shape[-1]
        if D % self.subspaces:
            raise ConfigError(f"subspaces={self.subspaces} does not divide the head dim {D}")
        self._codebooks, self._codes = None, None
        self._extend(keys[:, :, : self.positions.paged_end], token_ids[:, :, : self.positions.paged_end])

    def _learn(self, keys: Tensor, paged: Tensor) -> Tensor:
        """Codebooks ``[B, H, M, K, d]`` from ``keys`` ``[B, H, n, D]`` where ``paged`` bool ``[B, H, n]``."""
        B, H, n, D = keys.shape
        M = self.subspaces
        d = D // M
        sub = keys.float().reshape(B, H, n, M, d).permute(0, 1, 3, 2, 4).reshape(B * H * M, n, d)
        mask = paged[:, :, None].expand(B, H, M, n).reshape(B * H * M, n)
        gen = torch.Generator().manual_seed(self.config.seed + self.layer_idx)
        found = kmeans(sub, min(self.centroids, n), iters=self.iters, mask=mask, generator=gen)
        return found.centroids.reshape(B, H, M, -1, d)

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        if self._codebooks is not None:
            self._codes = torch.cat([self._codes, pq_encode(keys, self._codebooks)], dim=2)
            return
        paged = token_ids >= 0
        if bool(paged.any()):
            self._codebooks = self._learn(keys, paged)
            # every position so far (padding and sinks too: never ranked), so codes index by position
            every = self.keys_at(self._positions(0, self.positions.paged_end))
            self._codes = pq_encode(every, self._codebooks)

    def nbytes(self) -> dict[str, int]:
        out = super().nbytes()
        out["codes"] = tensor_nbytes(self._codes, self._codebooks)
        return out

    def token_scores(self, query: Tensor, keys: Tensor | None) -> Tensor:  # [B, H_kv, G, n]
        B, H, G, D = query.shape
        n = self.num_tokens
        if self._codes is None:
            return query.new_full((B, H, G, n), float("-inf"), dtype=torch.float32)
        M, K, d = self._codebooks.shape[2:]
        q = query.float().reshape(B, H, G, M, d)
        table = torch.einsum("bhgmd,bhmkd->bhgmk", q, self._codebooks)  # [B, H_kv, G, M, K]
        codes = self._codes.long().permute(0, 1, 3, 2)[:, :, None].expand(B, H, G, M, -1)  # [B,H,G,M,n']
        approx = table.gather(-1, codes).sum(3)  # [B, H_kv, G, n']
        pad = approx.new_full((B, H, G, n - approx.shape[-1]), float("-inf"))
        return torch.cat([approx, pad], dim=-1)
