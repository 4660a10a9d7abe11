"""ShadowKV: chunk landmarks rank the chunks to fetch; outlier chunks are always attended."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define, field, frozen
from attrs.validators import ge
from torch import Tensor

from icecache.selectors.bases.page_score import PageScoreSelector
from icecache.selectors.plumbing.layout import gather_page_keys
from icecache.selectors.plumbing.merge import merge_heads

#: added to an outlier chunk's merged score: ranked before every other chunk. NOTE: finite on purpose
#: (``+inf`` means "never take"); merged scores are log-masses, far below it.
_OUTLIER = 1.0e6


@frozen(kw_only=True)
class ChunkSummaries:
    """Per chunk (page): ``landmarks`` float ``[B, H_kv, P, D]`` (the mean key) and ``similarity``
    float ``[B, H_kv, P]`` (the lowest cosine similarity of a key to its landmark; 1 for empty chunks)."""

    landmarks: Tensor
    similarity: Tensor


@define(kw_only=True, slots=False)
class ShadowKVSelector(PageScoreSelector):
    """Rank chunks of consecutive tokens by ``q . landmark``; the prompt's least self-similar chunks
    (outliers) are always attended.

    Based on https://arxiv.org/abs/2410.21465 (Sun et al., ICML 2025). A chunk (here: a page of
    ``page_size`` consecutive positions; the paper uses 8) is summarized by its landmark, the mean of its
    keys; per decode step the chunks with the largest estimated attention mass (``q . landmark`` plus
    the log of the chunk's length, the GQA group's heads merged by mass) are attended whole within the
    budget. At prefill the ``outliers`` chunks of each KV head whose keys are least similar to their
    landmark (lowest minimum cosine similarity) are marked; they are taken first every step, as
    ShadowKV keeps them resident.

    NOTE (simplifications): ShadowKV keeps a low-rank (SVD) projection of the *pre-RoPE* keys on the
    GPU and rebuilds the selected chunks' keys from it, fetching only their values from the CPU. The
    keys a selector reads here are post-RoPE (the layer's store holds those), landmarks are taken from
    them, and attention reads the selected chunks' exact keys and values from the store: the low-rank
    key approximation (and its small error) is not modelled, only ShadowKV's choice of chunks.
    """

    name: ClassVar[str] = "shadowkv"
    outliers: int = field(default=2, validator=ge(0))

    _outlier: Tensor | None = field(default=None, init=False, repr=False)  # bool [B, H_kv, P_prompt]

    def summarize(self, keys: Tensor, pages: Tensor) -> ChunkSummaries:
        k, valid = gather_page_keys(keys, pages)  # [B, H_kv, P, S, D]
        lens = valid.sum(-1).clamp(min=1)[..., None]
        landmarks = (k * valid[..., None]).sum(3) / lens  # [B, H_kv, P, D]
        cos = torch.nn.functional.cosine_similarity(k.float(), landmarks[:, :, :, None].float(), dim=-1)
        similarity = torch.where(valid, cos, 1.0).amin(-1)  # [B, H_kv, P]
        return ChunkSummaries(landmarks=landmarks, similarity=similarity)

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        super()._build(keys, token_ids, queries)
        sim = torch.where(self.page_lens() > 0, self._summaries.similarity, float("inf"))  # [B, H_kv, P]
        k = min(self.outliers, sim.shape[-1])
        self._outlier = torch.zeros_like(sim, dtype=torch.bool)
        if k:
            low = sim.topk(k, dim=-1, largest=False)
            self._outlier.scatter_(-1, low.indices, torch.isfinite(low.values))

    def score(self, query: Tensor, summaries: ChunkSummaries) -> Tensor:  # [B, H_kv, P]
        logits = torch.einsum("bhgd,bhpd->bhgp", query.float(), summaries.landmarks.float())
        lens = self.page_lens()
        merged = merge_heads(logits, "mass", scale=self.attention_scale(query.shape[-1]),
                             log_weight=torch.log(lens.clamp(min=1).float()),
                             resident_logits=self.resident_logits(query))
        P = merged.shape[-1]
        outlier = torch.zeros_like(merged, dtype=torch.bool)
        outlier[..., : self._outlier.shape[-1]] = self._outlier[..., :P]
        return torch.where(outlier, merged + _OUTLIER, merged)
