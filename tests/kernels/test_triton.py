"""Triton kernels against the torch references.

On CPU they run in the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``) at tiny
sizes, fp32/fp16 only (bf16 ``tl.dot`` is wrong in the interpreter). ``gpu``-marked tests repeat the
checks at real sizes on CUDA. Every output starts NaN-poisoned, so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.kernels import get_backend
from icecache.kernels.base import triton_available, triton_interpreting
from icecache.kernels.paged_attention.synthetic import (
    dense_masked_attention,
    pages_from_dense,
    random_problem,
)
from icecache.testing.assertions import assert_close
from icecache.testing.strategies.kernels import paged_attention_cases

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not triton_available() or not (CUDA or triton_interpreting()),
                                reason="needs triton and CUDA or TRITON_INTERPRET=1")
REF = get_backend("reference")


def _triton():
    return get_backend("triton")


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _attention(problem_q, k_pool, v_pool, table, **kw):
    from icecache.kernels.paged_attention import triton as attn_triton

    B, H_q, D = problem_q.shape
    out = _poisoned((B, H_q, D), problem_q.dtype, problem_q.device)
    lse = _poisoned((B, H_q), torch.float32, problem_q.device)
    got = attn_triton.paged_decode_attention(problem_q, k_pool, v_pool, table, scale=D ** -0.5, out=out,
                                             lse=lse, **kw)
    assert got[0] is out and got[1] is lse
    return out, lse


def _check_attention(out, lse, exp_out, exp_lse, **tol):
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "an output element was not written"
    assert_close(out, exp_out.to(out.dtype), **tol)
    fin = ~torch.isinf(exp_lse.cpu())
    assert bool((torch.isinf(lse.cpu()) == ~fin).all())
    assert_close(lse.cpu()[fin], exp_lse.cpu()[fin], rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- tiny, interpreter-friendly
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pages_per_tile", [None, 1])
def test_paged_attention_tiny(dtype, pages_per_tile):
    g = torch.Generator().manual_seed(7)
    B, H, G, N, D, S = 2, 2, 3, 24, 16, 4
    k, v = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, D, generator=g)
    q = torch.randn(B, H * G, D, generator=g)
    mask = torch.rand(B, H, N, generator=g) < 0.6
    mask[1, 0] = False  # a row without pages: out 0, lse -inf
    kp, vp, table = pages_from_dense(k.to(dtype), v.to(dtype), mask, S, generator=g)
    exp_out, exp_lse = dense_masked_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    out, lse = _attention(q.to(dtype), kp, vp, table, pages_per_tile=pages_per_tile)
    _check_attention(out, lse, exp_out, exp_lse)
    assert bool((out[1, :G] == 0).all())


@settings(max_examples=12, deadline=None)
@given(case=paged_attention_cases(max_tokens=32), pages_per_tile=st.sampled_from([None, 1, 2]))
def test_paged_attention_property(case, pages_per_tile):
    exp_out, exp_lse = dense_masked_attention(case.query, case.keys, case.values, case.token_mask)
    dev = "cuda" if CUDA else "cpu"
    out, lse = _attention(case.query.to(dev), case.k_pool.to(dev), case.v_pool.to(dev),
                          _table_to(case.table, dev), pages_per_tile=pages_per_tile)
    _check_attention(out.cpu(), lse.cpu(), exp_out, exp_lse)


@pytest.mark.parametrize("softcap", [0.5, 3.0])
def test_paged_attention_softcap_tiny(softcap):
    """Gemma 2's logit softcap inside the kernel (log2 domain) against the capped dense reference."""
    g = torch.Generator().manual_seed(8)
    B, H, G, N, D, S = 1, 2, 2, 20, 16, 4
    k, v = 3 * torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, D, generator=g)
    q = 3 * torch.randn(B, H * G, D, generator=g)
    mask = torch.rand(B, H, N, generator=g) < 0.7
    kp, vp, table = pages_from_dense(k, v, mask, S, generator=g)
    exp_out, exp_lse = dense_masked_attention(q, k, v, mask, softcap=softcap)
    out, lse = _attention(q, kp, vp, table, softcap=softcap)
    _check_attention(out, lse, exp_out, exp_lse)
    uncapped, _ = dense_masked_attention(q, k, v, mask)
    assert (uncapped.float() - out).abs().max() > 1e-2  # the cap changed the result: it was applied


def _table_to(table, device):
    from icecache.core.page_table import PageTable

    return PageTable(indptr=table.indptr.to(device), indices=table.indices.to(device),
                     last_page_len=table.last_page_len.to(device), page_size=table.page_size,
                     page_lens=table.page_lens.to(device))


def test_backend_attention_matches_reference_tiny():
    p = random_problem(batch=1, kv_heads=2, group=4, head_dim=16, page_size=8, pages_per_row=5, num_slots=12,
                       dtype=torch.float32, device="cuda" if CUDA else "cpu", seed=1)
    out, lse = _triton().paged_decode_attention(p.query, p.k_pool, p.v_pool, p.table, max_pages_per_row=5)
    r_out, r_lse = REF.paged_decode_attention(p.query, p.k_pool, p.v_pool, p.table)
    assert_close(out, r_out)
    assert_close(lse, r_lse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gather_scatter_tiny(dtype):
    from icecache.kernels.gather import triton as gather_triton

    g = torch.Generator().manual_seed(2)
    pool = torch.randn(9, 4, 8, generator=g).to(dtype)
    ids = torch.tensor([7, 0, 3, 4])
    staging = _poisoned((4, 4, 8), dtype, "cpu")
    assert gather_triton.gather_pages(pool, ids, staging) is staging
    assert_close(staging, REF.gather_pages(pool, ids))
    target = _poisoned((9, 4, 8), dtype, "cpu")
    _triton().scatter_pages(target, ids, staging)
    assert_close(target[ids], pool[ids])
    rest = torch.ones(9, dtype=torch.bool)
    rest[ids] = False
    assert bool(torch.isnan(target[rest]).all()), "scatter wrote outside its slots"


@pytest.mark.parametrize("kind,reduce", [("centroid", "max"), ("centroid", "none"), ("bounds", "sum")])
def test_scoring_tiny(kind, reduce):
    from icecache.kernels.scoring import triton as score_triton

    g = torch.Generator().manual_seed(5)
    L, B, H, G, P, D = 2, 1, 2, 3, 7, 8
    q = torch.randn(L, B, H * G, D, generator=g)
    a, b = torch.randn(L, B, H, P, D, generator=g), torch.randn(L, B, H, P, D, generator=g)
    summary = a if kind == "centroid" else (torch.minimum(a, b), torch.maximum(a, b))
    first, second = (summary, None) if kind == "centroid" else summary
    mask = torch.rand(L, B, H, P, generator=g) < 0.7
    expected = REF.score_pages(q, summary, kind=kind, page_mask=mask, group_reduce=reduce)
    out = _poisoned(expected.shape, torch.float32, "cpu")
    score_triton.score_pages(q, first, second, kind=kind, page_mask=mask, group_reduce=reduce, out=out)
    fin = ~torch.isinf(expected)
    assert bool((torch.isinf(out) == ~fin).all()) and not torch.isnan(out).any()
    assert_close(out[fin], expected[fin])
    vals, ids = _triton().topk_pages(q, summary, 3, kind=kind, page_mask=mask, group_reduce=reduce)
    r_vals, r_ids = REF.topk_pages(q, summary, 3, kind=kind, page_mask=mask, group_reduce=reduce)
    assert_close(vals.nan_to_num(neginf=-1e9), r_vals.nan_to_num(neginf=-1e9))


def test_cpu_tensors_without_interpreter_are_refused(monkeypatch):
    from icecache.core.errors import TensorSpecError

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    p = random_problem(batch=1, kv_heads=1, group=2, head_dim=8, page_size=4, pages_per_row=2, num_slots=3,
                       dtype=torch.float32, device="cpu")
    with pytest.raises(TensorSpecError, match="needs CUDA tensors"):
        _triton().paged_decode_attention(p.query, p.k_pool, p.v_pool, p.table)
    with pytest.raises(TensorSpecError, match="needs CUDA tensors"):
        _triton().score_pages(torch.randn(2, 8), torch.randn(1, 3, 8))
    # host pools gather/scatter with torch (a CPU tier filling pinned staging)
    pool = torch.randn(5, 2, 3)
    assert torch.equal(_triton().gather_pages(pool, torch.tensor([4, 1])), pool[[4, 1]])
    _triton().scatter_pages(pool, torch.tensor([0]), torch.zeros(1, 2, 3))
    assert bool((pool[0] == 0).all())


# ---------------------------------------------------------------- real sizes on CUDA
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,pages_per_row,page_size",
                         [(1, 16, 16), (2, 128, 16), (4, 300, 16), (1, 64, 32)])
def test_paged_attention_gpu(dtype, batch, pages_per_row, page_size):
    p = random_problem(batch=batch, kv_heads=8, group=4, head_dim=128, page_size=page_size,
                       pages_per_row=pages_per_row, num_slots=batch * 8 * pages_per_row + 100, dtype=dtype,
                       device="cuda", seed=pages_per_row)
    out, lse = _attention(p.query, p.k_pool, p.v_pool, p.table, max_pages_per_row=pages_per_row)
    r_out, r_lse = REF.paged_decode_attention(p.query, p.k_pool, p.v_pool, p.table)
    _check_attention(out, lse, r_out, r_lse)


@gpu
@needs_cuda
def test_paged_attention_gpu_against_dense_with_empty_rows():
    g = torch.Generator().manual_seed(11)
    B, H, G, N, D = 2, 8, 4, 3000, 128
    k, v = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, D, generator=g)
    q = torch.randn(B, H * G, D, generator=g)
    mask = torch.rand(B, H, N, generator=g) < 0.3
    mask[0, 3] = False
    kp, vp, table = pages_from_dense(k.half(), v.half(), mask, 16, generator=g)
    exp_out, exp_lse = dense_masked_attention(q.half(), k.half(), v.half(), mask)
    dev = lambda t: t.cuda()  # noqa: E731
    from icecache.core.page_table import PageTable

    t = PageTable(indptr=dev(table.indptr), indices=dev(table.indices),
                  last_page_len=dev(table.last_page_len), page_size=16, page_lens=dev(table.page_lens))
    out, lse = _attention(dev(q.half()), dev(kp), dev(vp), t)
    _check_attention(out.cpu(), lse.cpu(), exp_out, exp_lse)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gather_scatter_gpu(dtype):
    pool = torch.randn(5000, 16, 128, device="cuda").to(dtype)
    ids = torch.randperm(5000, device="cuda")[:1500]
    staging = _poisoned((1500, 16, 128), dtype, "cuda")
    _triton().gather_pages(pool, ids, out=staging)
    assert torch.equal(staging, pool[ids])
    target = _poisoned((5000, 16, 128), dtype, "cuda")
    _triton().scatter_pages(target, ids, staging)
    assert torch.equal(target[ids], pool[ids])
    assert int((~torch.isnan(target.float())).all(-1).all(-1).sum()) == 1500


@gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["centroid", "bounds"])
@pytest.mark.parametrize("reduce", ["max", "sum", "none"])
def test_scoring_gpu(kind, reduce):
    from icecache.kernels.scoring import triton as score_triton

    L, B, H, G, P, D = 4, 2, 8, 4, 2048, 128
    q = torch.randn(L, B, H * G, D, device="cuda", dtype=torch.float16)
    a, b = (torch.randn(L, B, H, P, D, device="cuda", dtype=torch.float16) for _ in range(2))
    summary = a if kind == "centroid" else (torch.minimum(a, b), torch.maximum(a, b))
    first, second = (summary, None) if kind == "centroid" else summary
    mask = torch.rand(L, B, H, P, device="cuda") < 0.9
    expected = REF.score_pages(q, summary, kind=kind, page_mask=mask, group_reduce=reduce)
    out = _poisoned(expected.shape, torch.float32, "cuda")
    score_triton.score_pages(q, first, second, kind=kind, page_mask=mask, group_reduce=reduce, out=out)
    fin = ~torch.isinf(expected)
    assert bool((torch.isinf(out) == ~fin).all()) and not torch.isnan(out).any()
    assert_close(out[fin], expected[fin], rtol=1e-3, atol=1e-3)
