"""The kernel backend contract: every op matches plain float64 torch on generated inputs.

A backend factory is ``factory() -> KernelBackend`` (see :class:`icecache.kernels.base.KernelBackend`;
registered backends via :func:`registered_kernel_factory`). Properties:

``paged-attention``  ``paged_decode_attention`` equals masked dense attention over exactly the listed
                     tokens (random GQA ratios, partial pages anywhere, shuffled slots, unlisted slots
                     full of large garbage, empty rows give ``out = 0``, ``lse = -inf``);
``merge``            ``merge_attention_states`` of two disjoint token sets equals attention over both
                     (an empty side is a no-op);
``gather-scatter``   ``gather_pages`` / ``scatter_pages`` copy pages exactly (bit-identical), with and
                     without a preallocated ``out``;
``scoring``          ``score_pages`` equals ``q . c`` (centroid) or Quest's bound (bounds), masked pages
                     score ``-inf``, groups reduce by max / sum / none; ``topk_pages`` returns the best
                     scores, best first, with ids that score them (``-1`` for masked pages).

Tolerances come from :func:`icecache.testing.assert_close` for the dtype under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from icecache.testing.assertions import TOLERANCES, assert_close
from icecache.testing.conformance._runner import (
    ContractViolation,
    guarded,
    pick_properties,
    pytest_params,
    run_suite,
    suite_settings,
)

CONTRACT = "kernel"
KERNEL_PROPERTIES: tuple[str, ...] = ("paged-attention", "merge", "gather-scatter", "scoring")
KernelFactory = Callable[[], Any]


@frozen(kw_only=True)
class KernelCase:
    """One generated input set: a paged attention problem, a scoring problem, and the op options."""

    dtype: torch.dtype
    attention: Any  # icecache.testing.strategies.kernels.PagedCase | None
    scoring: Any  # icecache.testing.strategies.kernels.ScoringCase | None
    kind: str
    group_reduce: str
    k: int
    seed: int

    def __repr__(self) -> str:
        a, s = self.attention, self.scoring
        attn = "-" if a is None else (f"query {tuple(a.query.shape)}, keys {tuple(a.keys.shape)}, "
                                      f"page_size {a.table.page_size}, pages {a.table.nnz}")
        score = "-" if s is None else f"query {tuple(s.query.shape)}, centroids {tuple(s.centroids.shape)}"
        return (f"KernelCase(dtype={self.dtype}, attention=[{attn}], scoring=[{score}], kind={self.kind!r}, "
                f"group_reduce={self.group_reduce!r}, k={self.k}, seed={self.seed})")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # NOTE: hypothesis pretty-prints attrs by fields
        p.text(repr(self))


def _fail(prop: str, detail: str) -> None:
    raise ContractViolation(CONTRACT, prop, detail)


#: tolerance headroom over :data:`TOLERANCES` (a fast kernel sums in another order than the reference)
SLACK = 4.0


def _close(prop: str, what: str, actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    rtol, atol = TOLERANCES.get(dtype, (1e-4, 1e-5))
    try:
        assert_close(actual, expected, rtol=rtol * SLACK, atol=atol * SLACK, msg=what)
    except AssertionError as exc:
        raise ContractViolation(CONTRACT, prop, str(exc)) from None


def _check_attention(backend: Any, case: Any, dtype: torch.dtype) -> None:
    from icecache.kernels.paged_attention.synthetic import dense_masked_attention

    want_o, want_lse = dense_masked_attention(case.query, case.keys, case.values, case.token_mask)
    out = guarded(CONTRACT, "paged_decode_attention", backend.paged_decode_attention, case.query,
                  case.k_pool, case.v_pool, case.table)
    if not (isinstance(out, tuple) and len(out) == 2):
        _fail("paged-attention", "paged_decode_attention must return (out, lse)")
    o, lse = out
    if tuple(o.shape) != tuple(case.query.shape) or o.dtype != case.query.dtype:
        _fail("paged-attention", f"out is {o.dtype} {tuple(o.shape)}, expected "
              f"{case.query.dtype} {tuple(case.query.shape)}")
    if tuple(lse.shape) != tuple(case.query.shape[:2]) or lse.dtype != torch.float32:
        _fail("paged-attention", f"lse is {lse.dtype} {tuple(lse.shape)}, "
              f"expected float32 {tuple(case.query.shape[:2])}")
    _close("paged-attention", "out", o, want_o, dtype)
    _close("paged-attention", "lse", lse, want_lse, dtype)


def _check_merge(backend: Any, case: Any, dtype: torch.dtype, split_seed: int) -> None:
    from icecache.kernels.paged_attention.synthetic import dense_masked_attention

    g = torch.Generator().manual_seed(split_seed)
    side = torch.rand(case.token_mask.shape, generator=g) < 0.5
    side = side.to(case.token_mask.device)
    m1, m2 = case.token_mask & side, case.token_mask & ~side
    o1, l1 = dense_masked_attention(case.query, case.keys, case.values, m1)
    o2, l2 = dense_masked_attention(case.query, case.keys, case.values, m2)
    want_o, want_lse = dense_masked_attention(case.query, case.keys, case.values, case.token_mask)
    o, lse = guarded(CONTRACT, "merge_attention_states", backend.merge_attention_states, o1.to(dtype), l1,
                     o2.to(dtype), l2)
    _close("merge", "merged out", o, want_o, dtype)
    _close("merge", "merged lse", lse, want_lse, dtype)


def _check_gather_scatter(backend: Any, seed: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    slots, n = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(0, 12, (1,), generator=g))
    page = (2, int(torch.randint(1, 9, (1,), generator=g)), 8)
    pool = (torch.randn(slots, *page, generator=g) * 10).to(dtype)
    ids = torch.randint(0, slots, (n,), generator=g)
    got = guarded(CONTRACT, "gather_pages", backend.gather_pages, pool, ids)
    if not torch.equal(got.cpu(), pool[ids].cpu()):
        _fail("gather-scatter", f"gather_pages(pool[{slots}], {ids.tolist()}) "
              "differs from pool[ids]")
    out = torch.empty(n, *page, dtype=dtype)
    got = guarded(CONTRACT, "gather_pages(out=)", backend.gather_pages, pool, ids, out=out)
    if not torch.equal(out, pool[ids]):
        _fail("gather-scatter", "gather_pages(..., out=buf) did not fill buf")
    distinct = torch.randperm(slots, generator=g)[: min(n, slots)]
    src = (torch.randn(distinct.numel(), *page, generator=g) * 10).to(dtype)
    want = pool.clone()
    want[distinct] = src
    guarded(CONTRACT, "scatter_pages", backend.scatter_pages, pool, distinct, src)
    if not torch.equal(pool, want):
        bad = torch.nonzero((pool != want).flatten(1).any(1)).flatten().tolist()
        _fail("gather-scatter", f"scatter_pages into slots {distinct.tolist()} "
              f"left slots {bad} wrong")


def reference_scores(query: Tensor, first: Tensor, second: Tensor | None, *, page_mask: Tensor | None,
                     group_reduce: str) -> Tensor:
    """float64 page scores ``[..., H, P]``: ``q . c`` or Quest's ``sum_i max(q_i min_i, q_i max_i)``."""
    H_q, H_kv = query.shape[-2], first.shape[-3]
    G = H_q // H_kv
    q = query.double().unflatten(-2, (H_kv, G))  # [..., H_kv, G, D]
    if second is None:
        s = torch.einsum("...hgd,...hpd->...hgp", q, first.double())
    else:
        qe = q.unsqueeze(-2)  # [..., H_kv, G, 1, D]
        s = torch.maximum(qe * first.double().unsqueeze(-3), qe * second.double().unsqueeze(-3)).sum(-1)
    if page_mask is not None:
        s = s.masked_fill(~page_mask.unsqueeze(-2), float("-inf"))
    if group_reduce == "max":
        return s.amax(-2)
    if group_reduce == "sum":
        return s.sum(-2)
    return s.flatten(-3, -2)  # [..., H_q, P]


def _check_scoring(backend: Any, case: Any, dtype: torch.dtype, kind: str, reduce: str, k: int) -> None:
    summary = case.centroids if kind == "centroid" else (case.mins, case.maxs)
    first, second = (case.centroids, None) if kind == "centroid" else (case.mins, case.maxs)
    want = reference_scores(case.query, first, second, page_mask=case.page_mask, group_reduce=reduce)
    got = guarded(CONTRACT, f"score_pages(kind={kind!r}, group_reduce={reduce!r})", backend.score_pages,
                  case.query, summary, kind=kind, page_mask=case.page_mask, group_reduce=reduce)
    if tuple(got.shape) != tuple(want.shape):
        _fail("scoring", f"score_pages returned {tuple(got.shape)}, expected "
              f"{tuple(want.shape)}")
    _close("scoring", f"score_pages(kind={kind!r}, group_reduce={reduce!r})", got, want, dtype)
    k = min(k, want.shape[-1])
    scores, ids = guarded(CONTRACT, f"topk_pages(k={k})", backend.topk_pages, case.query, summary, k,
                          kind=kind, page_mask=case.page_mask, group_reduce=reduce)
    best = torch.topk(want, k, dim=-1).values
    _close("scoring", f"topk_pages(k={k}) scores", scores, best, dtype)
    masked = torch.isinf(best) & (best < 0)
    if not torch.equal(ids.cpu() < 0, masked):
        _fail("scoring", f"topk_pages(k={k}) ids must be -1 exactly where the "
              "score is -inf (masked pages)")
    at = torch.gather(want, -1, ids.cpu().clamp_min(0))
    _close("scoring", f"topk_pages(k={k}): reference score at the returned ids",
           torch.where(masked, float("-inf"), at), best, dtype)


def check_kernel(factory: KernelFactory, *, max_examples: int = 10, properties: Iterable[str] | None = None,
                 dtypes: Iterable[torch.dtype] = (torch.float32,), max_tokens: int = 40,
                 settings: Any = None, shrink: bool = True) -> None:
    """Run the kernel contract against ``factory() -> KernelBackend``; raise :class:`ContractViolation`
    (an ``AssertionError``) naming the op and the worst element. ``dtypes``: dtypes to test (fp16 /
    bf16 compare within their own tolerances). Keep ``max_tokens`` small for interpreted kernels."""
    from icecache.testing.strategies.kernels import paged_attention_cases, scoring_cases

    props = pick_properties(KERNEL_PROPERTIES, properties, CONTRACT)
    dtypes = tuple(dtypes)
    backend = guarded(CONTRACT, "factory()", factory)

    @st.composite
    def cases(draw: Any) -> KernelCase:
        dtype = draw(st.sampled_from(dtypes))
        attn = draw(paged_attention_cases(dtype=dtype, max_tokens=max_tokens)) \
            if props & {"paged-attention", "merge"} else None
        score = draw(scoring_cases(dtype=dtype, max_pages=12)) if "scoring" in props else None
        return KernelCase(dtype=dtype, attention=attn, scoring=score,
                          kind=draw(st.sampled_from(["centroid", "bounds"])),
                          group_reduce=draw(st.sampled_from(["max", "sum", "none"])),
                          k=draw(st.integers(1, 12)),
                          seed=draw(st.integers(0, 2**31 - 1)))

    @suite_settings(max_examples, settings, shrink=shrink)
    @given(case=cases())
    def kernel_contract(case: KernelCase) -> None:
        if "paged-attention" in props:
            _check_attention(backend, case.attention, case.dtype)
        if "merge" in props:
            _check_merge(backend, case.attention, case.dtype, case.seed)
        if "gather-scatter" in props:
            _check_gather_scatter(backend, case.seed, case.dtype)
        if "scoring" in props:
            _check_scoring(backend, case.scoring, case.dtype, case.kind, case.group_reduce, case.k)

    run_suite(CONTRACT, kernel_contract)


def kernel_contract_tests(factory: KernelFactory, **kwargs: Any) -> list[Any]:
    """``pytest.param`` per property of :func:`check_kernel`, for ``@pytest.mark.parametrize``."""
    return pytest_params(check_kernel, factory, KERNEL_PROPERTIES, **kwargs)


def registered_kernel_factory(name: str, *, plugin_manager: Any = None, **options: Any) -> KernelFactory:
    """A factory for the registered kernel backend ``name``."""
    from icecache.core.plugins import build_registry

    registry = build_registry(plugin_manager)
    registry.get("kernel", name)

    def factory() -> Any:
        return registry.create("kernel", name, **options)

    factory.__name__ = f"kernel[{name}]"
    return factory
