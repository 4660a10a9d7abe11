"""Deliberately wrong kernel backends: each is the reference backend with one op broken."""

from __future__ import annotations

import torch
from attrs import define

from icecache.kernels.backends import ReferenceBackend


@define
class NoScaleBackend(ReferenceBackend):
    """Forgets the 1/sqrt(D) attention scale."""

    def paged_decode_attention(self, query, k_pool, v_pool, table, *, scale=None, max_pages_per_row=None):
        return super().paged_decode_attention(query, k_pool, v_pool, table, scale=1.0)


@define
class FullPagesBackend(ReferenceBackend):
    """Ignores partial pages: attends every slot of every listed page."""

    def paged_decode_attention(self, query, k_pool, v_pool, table, *, scale=None, max_pages_per_row=None):
        from icecache.core.page_table import PageTable

        full = PageTable(indptr=table.indptr, indices=table.indices,
                         last_page_len=torch.where(table.last_page_len > 0, table.page_size, 0),
                         page_size=table.page_size)
        return super().paged_decode_attention(query, k_pool, v_pool, full, scale=scale)


@define
class OffByOneGatherBackend(ReferenceBackend):
    """Gathers the slot after the one asked for (wrapping around)."""

    def gather_pages(self, pool, slot_ids, *, out=None, check=True):
        return super().gather_pages(pool, (slot_ids + 1) % pool.shape[0], out=out, check=check)


@define
class NaiveMergeBackend(ReferenceBackend):
    """Averages the two partial outputs instead of weighting them by their log-sum-exp."""

    def merge_attention_states(self, o1, lse1, o2, lse2):
        out, lse = super().merge_attention_states(o1, lse1, o2, lse2)
        both = torch.isfinite(lse1) & torch.isfinite(lse2)
        return torch.where(both[..., None], (o1 + o2) / 2, out), lse


@define
class MinScoreBackend(ReferenceBackend):
    """Reduces a GQA group by min where max was asked."""

    def score_pages(self, query, summary, *, kind="centroid", page_mask=None, group_reduce="max"):
        if group_reduce != "max":
            return super().score_pages(query, summary, kind=kind, page_mask=page_mask,
                                       group_reduce=group_reduce)
        s = super().score_pages(query, summary, kind=kind, page_mask=page_mask, group_reduce="none")
        H_kv = (summary if kind == "centroid" else summary[0]).shape[-3]
        s = s.unflatten(-2, (H_kv, -1))
        return torch.where(torch.isinf(s).all(-2), s.amax(-2), s.masked_fill(torch.isinf(s), 1e30).amin(-2))


#: broken backend -> the property the suite reports
BROKEN_KERNELS = {
    NoScaleBackend: "paged-attention",
    FullPagesBackend: "paged-attention",
    OffByOneGatherBackend: "gather-scatter",
    NaiveMergeBackend: "merge",
    MinScoreBackend: "scoring",
}
