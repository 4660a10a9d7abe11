"""The two built-in backends. ``TritonBackend`` imports Triton only when it is built."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define
from torch import Tensor

from icecache.core.errors import ConfigError, TensorSpecError
from icecache.core.page_table import PageTable
from icecache.kernels import checks
from icecache.kernels.base import GroupReduce, ScoreKind, triton_available, triton_interpreting
from icecache.kernels.gather import reference as gather_ref
from icecache.kernels.merge import merge_attention_states
from icecache.kernels.paged_attention import reference as attn_ref
from icecache.kernels.scoring import reference as score_ref


@define
class ReferenceBackend:
    """Plain torch on any device: obviously correct, the ground truth of every test."""

    name: ClassVar[str] = "reference"

    def paged_decode_attention(self, query: Tensor, k_pool: Tensor, v_pool: Tensor, table: PageTable, *,
                               scale: float | None = None, max_pages_per_row: int | None = None,
                               softcap: float | None = None) -> tuple[Tensor, Tensor]:
        _, _, _, scale = checks.check_paged_attention(query, k_pool, v_pool, table, scale)
        softcap = checks.check_softcap(softcap)
        return attn_ref.paged_decode_attention(query, k_pool, v_pool, table, scale=scale, softcap=softcap)

    def merge_attention_states(self, o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor
                               ) -> tuple[Tensor, Tensor]:
        return merge_attention_states(o1, lse1, o2, lse2)

    def gather_pages(self, pool: Tensor, slot_ids: Tensor, *, out: Tensor | None = None,
                     check: bool = True) -> Tensor:
        slot_ids = checks.check_slots(pool, slot_ids, check_range=check)
        if out is not None:
            checks.check_page_buffer(pool, out, slot_ids.numel(), "out")
        return gather_ref.gather_pages(pool, slot_ids, out)

    def scatter_pages(self, pool: Tensor, slot_ids: Tensor, src: Tensor, *, check: bool = True) -> None:
        slot_ids = checks.check_slots(pool, slot_ids, check_range=check)
        checks.check_page_buffer(pool, src, slot_ids.numel(), "src")
        gather_ref.scatter_pages(pool, slot_ids, src)

    def _score(self, query, summary, kind, page_mask, group_reduce, impl) -> Tensor:
        first, second = checks.check_scoring(query, summary, kind, page_mask, group_reduce)
        return impl(query, first, second, kind=kind, page_mask=page_mask, group_reduce=group_reduce)

    def score_pages(self, query: Tensor, summary: Tensor | tuple[Tensor, Tensor], *,
                    kind: ScoreKind = "centroid", page_mask: Tensor | None = None,
                    group_reduce: GroupReduce = "max") -> Tensor:
        return self._score(query, summary, kind, page_mask, group_reduce, score_ref.score_pages)

    def topk_pages(self, query: Tensor, summary: Tensor | tuple[Tensor, Tensor], k: int, *,
                   kind: ScoreKind = "centroid", page_mask: Tensor | None = None,
                   group_reduce: GroupReduce = "max") -> tuple[Tensor, Tensor]:
        scores = self.score_pages(query, summary, kind=kind, page_mask=page_mask, group_reduce=group_reduce)
        if not isinstance(k, int) or k < 1 or k > scores.shape[-1]:
            raise TensorSpecError(f"k must be an int in [1, {scores.shape[-1]}] (pages per row), got {k!r}")
        return score_ref.topk_from_scores(scores, k)


@define
class TritonBackend(ReferenceBackend):
    """Triton kernels on CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``).

    Merging and top-k use torch (they are a few elementwise ops / ``torch.topk``); so do gather and
    scatter on host (CPU) pools. Attention and scoring refuse CPU tensors outside the interpreter.
    """

    name: ClassVar[str] = "triton"

    def __attrs_post_init__(self) -> None:
        if not triton_available():
            raise ConfigError("kernel backend 'triton' needs the triton package (pip install triton); "
                              "use kernel='reference' or 'auto' on machines without it")

    @staticmethod
    def _require_device(t: Tensor, what: str) -> None:
        if not t.is_cuda and not triton_interpreting():
            raise TensorSpecError(f"triton backend: {what} is on {t.device}; it needs CUDA tensors "
                                  "(or TRITON_INTERPRET=1 for the CPU interpreter)")

    def paged_decode_attention(self, query: Tensor, k_pool: Tensor, v_pool: Tensor, table: PageTable, *,
                               scale: float | None = None, max_pages_per_row: int | None = None,
                               softcap: float | None = None) -> tuple[Tensor, Tensor]:
        _, _, _, scale = checks.check_paged_attention(query, k_pool, v_pool, table, scale)
        softcap = checks.check_softcap(softcap)
        self._require_device(query, "query")
        if query.dtype == torch.float64:
            raise TensorSpecError("triton backend: float64 is not supported, got query dtype torch.float64")
        from icecache.kernels.paged_attention import triton as attn_triton

        return attn_triton.paged_decode_attention(query, k_pool, v_pool, table, scale=scale,
                                                  max_pages_per_row=max_pages_per_row, softcap=softcap)

    @staticmethod
    def _host(pool: Tensor) -> bool:
        # NOTE: host pools (a CPU tier gathering into pinned staging) are normal; torch does those.
        return not pool.is_cuda and not triton_interpreting()

    def gather_pages(self, pool: Tensor, slot_ids: Tensor, *, out: Tensor | None = None,
                     check: bool = True) -> Tensor:
        if self._host(pool):
            return super().gather_pages(pool, slot_ids, out=out, check=check)
        slot_ids = checks.check_slots(pool, slot_ids, check_range=check)
        if out is not None:
            checks.check_page_buffer(pool, out, slot_ids.numel(), "out")
        from icecache.kernels.gather import triton as gather_triton

        return gather_triton.gather_pages(pool, slot_ids, out)

    def scatter_pages(self, pool: Tensor, slot_ids: Tensor, src: Tensor, *, check: bool = True) -> None:
        if self._host(pool):
            return super().scatter_pages(pool, slot_ids, src, check=check)
        if not pool.is_contiguous():
            raise TensorSpecError(
                f"triton scatter_pages needs a contiguous pool, got strides {pool.stride()}")
        slot_ids = checks.check_slots(pool, slot_ids, check_range=check)
        checks.check_page_buffer(pool, src, slot_ids.numel(), "src")
        from icecache.kernels.gather import triton as gather_triton

        gather_triton.scatter_pages(pool, slot_ids, src)

    def score_pages(self, query: Tensor, summary: Tensor | tuple[Tensor, Tensor], *,
                    kind: ScoreKind = "centroid", page_mask: Tensor | None = None,
                    group_reduce: GroupReduce = "max") -> Tensor:
        self._require_device(query, "query")
        from icecache.kernels.scoring import triton as score_triton

        return self._score(query, summary, kind, page_mask, group_reduce, score_triton.score_pages)
