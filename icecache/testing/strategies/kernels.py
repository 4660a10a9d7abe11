"""Hypothesis strategies for kernel tests: paged attention problems with their dense ground truth,
and page scoring inputs. Tensors are built from a drawn seed, so shrinking stays cheap."""

from __future__ import annotations

import torch
from attrs import frozen
from hypothesis import strategies as st
from torch import Tensor

from icecache.core.page_table import PageTable
from icecache.kernels.paged_attention.synthetic import pages_from_dense


@frozen(kw_only=True)
class PagedCase:
    """Dense ``keys``/``values`` ``[B, H_kv, N, D]`` with ``token_mask`` ``[B, H_kv, N]`` (the tokens a
    row attends) and the same tokens packed into ``k_pool``/``v_pool`` ``[slots, S, D]`` via ``table``."""

    query: Tensor
    keys: Tensor
    values: Tensor
    token_mask: Tensor
    k_pool: Tensor
    v_pool: Tensor
    table: PageTable


@st.composite
def paged_attention_cases(draw, *, max_batch: int = 2, max_kv_heads: int = 3, max_group: int = 4,
                          head_dims: tuple[int, ...] = (4, 8, 16),
                          page_sizes: tuple[int, ...] = (1, 2, 4, 8, 16),
                          max_tokens: int = 48, dtype: torch.dtype = torch.float32,
                          allow_empty_rows: bool = True) -> PagedCase:
    """Random shapes, GQA ratios, page sizes, partial pages (anywhere in a row) and selection densities."""
    B = draw(st.integers(1, max_batch))
    H = draw(st.integers(1, max_kv_heads))
    G = draw(st.integers(1, max_group))
    D = draw(st.sampled_from(head_dims))
    S = draw(st.sampled_from(page_sizes))
    N = draw(st.integers(1, max_tokens))
    density = draw(st.sampled_from([0.1, 0.5, 1.0]))
    full_pages = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(B, H, N, D, generator=g).to(dtype)
    values = torch.randn(B, H, N, D, generator=g).to(dtype)
    query = (torch.randn(B, H * G, D, generator=g) * draw(st.sampled_from([0.5, 2.0, 8.0]))).to(dtype)
    mask = torch.rand(B, H, N, generator=g) < density
    if not allow_empty_rows:
        mask[..., 0] = True
    k_pool, v_pool, table = pages_from_dense(keys, values, mask, S, generator=g, full_pages=full_pages)
    return PagedCase(query=query, keys=keys, values=values, token_mask=mask, k_pool=k_pool, v_pool=v_pool,
                     table=table)


@frozen(kw_only=True)
class ScoringCase:
    """``query`` ``[L, B, H_q, D]``, ``centroids``/``mins``/``maxs`` ``[L, B, H_kv, P, D]``, ``page_mask``."""

    query: Tensor
    centroids: Tensor
    mins: Tensor
    maxs: Tensor
    page_mask: Tensor


@st.composite
def scoring_cases(draw, *, max_layers: int = 2, max_batch: int = 2, max_kv_heads: int = 3, max_group: int = 4,
                  max_pages: int = 40, head_dims: tuple[int, ...] = (4, 8, 16),
                  dtype: torch.dtype = torch.float32) -> ScoringCase:
    L = draw(st.integers(1, max_layers))
    B = draw(st.integers(1, max_batch))
    H = draw(st.integers(1, max_kv_heads))
    G = draw(st.integers(1, max_group))
    P = draw(st.integers(1, max_pages))
    D = draw(st.sampled_from(head_dims))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    query = torch.randn(L, B, H * G, D, generator=g).to(dtype)
    centroids = torch.randn(L, B, H, P, D, generator=g).to(dtype)
    a = torch.randn(L, B, H, P, D, generator=g)
    b = torch.randn(L, B, H, P, D, generator=g)
    mins, maxs = torch.minimum(a, b).to(dtype), torch.maximum(a, b).to(dtype)
    page_mask = torch.rand(L, B, H, P, generator=g) < draw(st.sampled_from([0.3, 1.0]))
    page_mask[..., 0] = True
    return ScoringCase(query=query, centroids=centroids, mins=mins, maxs=maxs, page_mask=page_mask)
