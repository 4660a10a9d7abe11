"""The page-index contract, checked on clustered keys built, grown by inserts and queried.

An index factory is ``factory(config: CacheConfig) -> PageIndex`` (see
:class:`icecache.index.base.PageIndex`; registered indexes via :func:`registered_index_factory`).
Each generated case builds the index from a prompt (some positions marked ``-1``: padding and sinks
are not indexed), inserts a few batches of new keys, and queries with GQA queries and int or
per-row budgets. Checked after the build and after every insert:

``layout``        ``layout.token_ids`` is int64 ``[B, H_kv, P, S]``, ``S`` the index's ``page_size``
                  (default ``config.page_size``, never more), valid slots first; every
                  indexed position sits in exactly one page (leaf), nothing else does; ``num_tokens``
                  counts them;
``insert``        ``insert`` returns bool ``[B, H_kv, P]`` (``P`` after the insert); a page keeps its id
                  and its tokens; every page whose token list changed is flagged;
``summaries``     ``page_summaries()`` are the mean, min, max, radius and length of each page's keys;
``query``         ids valid and distinct, best first (scores non-increasing, ``-inf`` at padding),
                  ``page_lens`` and ``token_ids`` match the layout, ``num_tokens`` is their sum and
                  ``<= max_tokens``; a budget that holds the largest page selects at least one; a budget
                  that holds the whole row selects every page;
``deterministic`` a second index from the same config given the same calls has the same layout and
                  answers the same.

A factory may refuse a config (:class:`~icecache.core.errors.ConfigError`): that example is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.testing.assertions import assert_close
from icecache.testing.conformance._runner import (
    ContractViolation,
    build_or_reject,
    guarded,
    pick_properties,
    pytest_params,
    run_suite,
    suite_settings,
)
from icecache.testing.strategies.config import cache_configs
from icecache.testing.synthetic import left_padding, make_clustered_kv, query_for_cluster

CONTRACT = "index"
INDEX_PROPERTIES: tuple[str, ...] = ("layout", "insert", "summaries", "query", "deterministic")
IndexFactory = Callable[[CacheConfig], Any]


@frozen(kw_only=True)
class IndexCase:
    """One generated scenario; tensors come from ``seed`` (the repr reproduces the case)."""

    config: CacheConfig
    batch: int
    kv_heads: int
    group: int
    head_dim: int
    prompt_len: int
    inserts: tuple[int, ...]
    skip_first: int  # sinks: the first positions of each row are not indexed
    max_pad: int
    clusters: int
    budgets: tuple[int, ...]
    per_row_budget: bool
    seed: int

    def __repr__(self) -> str:
        c = self.config
        return (f"IndexCase(page_size={c.page_size}, seed={c.seed}, B={self.batch}, H_kv={self.kv_heads}, "
                f"G={self.group}, D={self.head_dim}, prompt_len={self.prompt_len}, inserts={self.inserts}, "
                f"skip_first={self.skip_first}, max_pad={self.max_pad}, clusters={self.clusters}, "
                f"budgets={self.budgets}, per_row_budget={self.per_row_budget}, data_seed={self.seed})")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # NOTE: hypothesis pretty-prints attrs by fields
        p.text(repr(self))

    def tensors(self) -> tuple[Tensor, Tensor, Any]:
        """``keys [B, H, N_total, D]``, token ids ``[B, H, N_total]`` (``-1``: not indexed), the data."""
        total = self.prompt_len + sum(self.inserts)
        kv = make_clustered_kv(self.batch, self.kv_heads, max(total, 1), self.head_dim,
                               num_clusters=self.clusters, spread=0.2, outlier_fraction=0.05, seed=self.seed)
        pos = torch.arange(total)
        start = left_padding(self.batch, max(self.prompt_len, 1), max_pad=self.max_pad, seed=self.seed + 1)
        skip = pos[None, :] < (start + self.skip_first)[:, None]  # [B, N]
        ids = torch.where(skip & (pos[None, :] < self.prompt_len), -1, pos[None, :])  # [B, N]
        return kv.keys[:, :, :total], ids[:, None, :].expand(self.batch, self.kv_heads, total).clone(), kv


@st.composite
def index_cases(draw: Any, *, configs: st.SearchStrategy[CacheConfig] | None = None,
                max_prompt: int = 120) -> IndexCase:
    """Generated :class:`IndexCase` values (some with an empty prompt: built empty, grown by inserts)."""
    config = draw(configs if configs is not None else cache_configs(page_size=st.sampled_from([4, 8, 16])))
    prompt = draw(st.one_of(st.just(0), st.integers(1, max_prompt)))
    inserts = tuple(draw(st.lists(st.sampled_from([1, 2, config.page_size, 2 * config.page_size + 1]),
                                  max_size=3)))
    budgets = tuple(draw(st.lists(st.sampled_from([0, 1, config.page_size, 3 * config.page_size, 10_000]),
                                  min_size=1, max_size=3)))
    return IndexCase(config=config, batch=draw(st.integers(1, 2)), kv_heads=draw(st.integers(1, 2)),
                     group=draw(st.integers(1, 3)), head_dim=draw(st.sampled_from([8, 16])),
                     prompt_len=prompt, inserts=inserts, skip_first=draw(st.integers(0, 4)),
                     max_pad=draw(st.sampled_from([0, 5])),
                     clusters=draw(st.integers(1, 6)), budgets=budgets, per_row_budget=draw(st.booleans()),
                     seed=draw(st.integers(0, 2**20)))


def _fail(prop: str, where: str, detail: str) -> None:
    raise ContractViolation(CONTRACT, prop, f"{where}: {detail}")


def _pages(ids: Tensor) -> list[list[list[set[int]]]]:
    """``[B][H][P]`` sets of positions (small; for readable checks)."""
    return [[[set(p[p >= 0].tolist()) for p in row] for row in b] for b in ids]


def _check_layout(index: Any, indexed: Tensor, config: CacheConfig, where: str) -> Tensor:
    """``indexed``: bool ``[B, H, N]``, positions that must be in the index. Returns the layout ids."""
    B, H, N = indexed.shape
    ids = guarded(CONTRACT, "layout", lambda: index.layout).token_ids.cpu()
    if ids.dtype != torch.int64 or ids.dim() != 4 or tuple(ids.shape[:2]) != (B, H):
        _fail("layout", where, f"layout.token_ids must be int64 [{B}, {H}, P, S], got {ids.dtype} "
                               f"{tuple(ids.shape)}")
    slots = getattr(index, "page_size", config.page_size)
    if ids.shape[2] and (ids.shape[3] != slots or slots > config.page_size):
        _fail("layout", where, f"pages have {ids.shape[3]} slots, the index's page_size is {slots} "
                               f"(at most config.page_size = {config.page_size})")
    v = ids >= 0
    if bool((v[..., 1:] & ~v[..., :-1]).any()):
        b, h, p, _ = torch.nonzero(v[..., 1:] & ~v[..., :-1])[0].tolist()
        _fail("layout", where, f"page {p} of row [b={b}, h={h}] has a valid slot after an empty one")
    if bool((v & (ids >= N)).any()):
        b, h, p, s = torch.nonzero(v & (ids >= N))[0].tolist()
        _fail("layout", where, f"page {p} of row [b={b}, h={h}] holds position {int(ids[b, h, p, s])} that "
                               f"was never inserted")
    count = torch.zeros(B, H, N + 1, dtype=torch.int64)
    flat = torch.where(v, ids, N).reshape(B, H, ids.shape[2] * ids.shape[3])  # [B, H, P * S]
    count.scatter_add_(2, flat, torch.ones_like(flat))
    count = count[..., :N]
    bad = count != indexed.long()
    if bool(bad.any()):
        b, h, i = torch.nonzero(bad)[0].tolist()
        what = "is in no page" if count[b, h, i] == 0 else (
            f"is in {int(count[b, h, i])} pages" if indexed[b, h, i] else "was marked -1 but is in a page")
        _fail("layout", where, f"position {i} of row [b={b}, h={h}] {what}")
    held = guarded(CONTRACT, "num_tokens", lambda: index.num_tokens)
    if not torch.equal(torch.as_tensor(held).cpu().long(), indexed.sum(-1)):
        _fail("layout", where, f"num_tokens {torch.as_tensor(held).tolist()} != indexed positions "
                               f"{indexed.sum(-1).tolist()}")
    return ids


def _check_summaries(index: Any, ids: Tensor, keys: Tensor, where: str) -> None:
    s = guarded(CONTRACT, "page_summaries()", index.page_summaries)
    B, H, P, S = ids.shape
    D = keys.shape[-1]
    v = ids >= 0
    k = torch.gather(keys.float()[:, :, None].expand(B, H, P, keys.shape[2], D), 3,
                     ids.clamp_min(0)[..., None].expand(B, H, P, S, D))  # [B, H, P, S, D]
    lens = v.sum(-1)
    cent = torch.where(v[..., None], k, 0.0).sum(3) / lens.clamp_min(1)[..., None]
    kmin = torch.where(v[..., None], k, float("inf")).amin(3)
    kmax = torch.where(v[..., None], k, float("-inf")).amax(3)
    rad = torch.where(v, (k - cent[:, :, :, None]).norm(dim=-1), 0.0).amax(-1)
    full = lens > 0
    if not torch.equal(torch.as_tensor(s.lens).cpu().long(), lens):
        _fail("summaries", where, f"page_summaries().lens {s.lens.tolist()} != page lengths {lens.tolist()}")
    for name, got, want in (("centroids", s.centroids, cent), ("key_min", s.key_min, kmin),
                            ("key_max", s.key_max, kmax), ("radius", s.radius, rad)):
        got = got.cpu().float()
        if tuple(got.shape) != tuple(want.shape):
            _fail("summaries", where, f"page_summaries().{name} has shape {tuple(got.shape)}, expected "
                                      f"{tuple(want.shape)}")
        try:
            assert_close(got[full], want[full], rtol=1e-4, atol=1e-4, msg=f"page_summaries().{name}")
        except AssertionError as exc:
            _fail("summaries", where, str(exc))


def _check_insert(changed: Any, before: Tensor, after: Tensor, where: str) -> None:
    B, H, P = after.shape[:3]
    changed = torch.as_tensor(changed).cpu()
    if changed.dtype != torch.bool or tuple(changed.shape) != (B, H, P):
        _fail("insert", where, f"insert must return bool [{B}, {H}, {P}], got {changed.dtype} "
                               f"{tuple(changed.shape)}")
    P0 = before.shape[2]
    if P < P0:
        _fail("insert", where, f"the index lost pages: {P0} before the insert, {P} after")
    old, new = _pages(before), _pages(after)
    for b in range(B):
        for h in range(H):
            for p in range(P):
                was = old[b][h][p] if p < P0 else set()
                if not was <= new[b][h][p]:
                    _fail("insert", where, f"page {p} of row [b={b}, h={h}] lost positions "
                                           f"{sorted(was - new[b][h][p])} (page ids must be stable)")
                if was != new[b][h][p] and not bool(changed[b, h, p]):
                    _fail("insert", where, f"page {p} of row [b={b}, h={h}] changed but insert did not "
                                           "flag it")


def _check_query(hits: Any, ids: Tensor, budget: Tensor, where: str) -> None:
    B, H, P, _ = ids.shape
    pid, lens, n, toks = (torch.as_tensor(x).cpu() for x in (hits.page_ids, hits.page_lens, hits.num_tokens,
                                                                hits.token_ids))
    scores = torch.as_tensor(hits.scores).cpu()
    if pid.dtype != torch.int64 or pid.dim() != 3 or tuple(pid.shape[:2]) != (B, H):
        _fail("query", where, f"page_ids must be int64 [{B}, {H}, K], got {pid.dtype} {tuple(pid.shape)}")
    if scores.shape != pid.shape or lens.shape != pid.shape:
        _fail("query", where, f"scores {tuple(scores.shape)} / page_lens {tuple(lens.shape)} must match "
                              f"page_ids {tuple(pid.shape)}")
    valid = pid >= 0
    if bool(((pid < -1) | (pid >= P)).any()):
        _fail("query", where, f"page ids out of [-1, {P}): {pid.unique().tolist()}")
    sp = torch.sort(pid, -1).values
    if bool(((sp[..., 1:] == sp[..., :-1]) & (sp[..., 1:] >= 0)).any()):
        _fail("query", where, "a page is selected twice")
    if bool((valid & torch.isnan(scores)).any()) or bool((~valid & (scores != float("-inf"))).any()):
        _fail("query", where, "scores must be real at selected pages and -inf at padding")
    s = torch.where(valid, scores.float(), float("-inf"))
    if bool((s[..., 1:] > s[..., :-1]).any()):
        b, h, i = torch.nonzero(s[..., 1:] > s[..., :-1])[0].tolist()
        _fail("query", where, f"row [b={b}, h={h}]: pages are not best first (score {float(s[b, h, i + 1])} "
                              f"after {float(s[b, h, i])})")
    page_len = (ids >= 0).sum(-1)  # [B, H, P]
    # NOTE: padding ids point at a spare zero-length column (P may be 0)
    padded = torch.nn.functional.pad(page_len, (0, 1))
    want_lens = torch.gather(padded, 2, torch.where(valid, pid, P))
    if not torch.equal(lens.long(), want_lens):
        _fail("query", where, f"page_lens {lens.tolist()} != layout lengths {want_lens.tolist()}")
    total = want_lens.sum(-1)
    if not torch.equal(n.long(), total):
        _fail("query", where, f"num_tokens {n.tolist()} != sum of selected page lengths {total.tolist()}")
    if bool((total > budget).any()):
        b, h = torch.nonzero(total > budget)[0].tolist()
        _fail("query", where, f"row [b={b}, h={h}] selects {int(total[b, h])} tokens, over max_tokens "
                              f"{int(budget[b, h])}")
    if toks.dim() != 3 or tuple(toks.shape[:2]) != (B, H) or toks.shape[-1] > max(1, int(budget.max())):
        _fail("query", where, f"token_ids must be [{B}, {H}, T <= max_tokens], got {tuple(toks.shape)} for "
                              f"max_tokens up to {int(budget.max())}")
    pages = _pages(ids)
    row_total = page_len.sum(-1)
    biggest = page_len.amax(-1) if P else torch.zeros(B, H, dtype=torch.int64)
    for b in range(B):
        for h in range(H):
            chosen = pid[b, h][valid[b, h]].tolist()
            want = set().union(*(pages[b][h][p] for p in chosen)) if chosen else set()
            got = toks[b, h][toks[b, h] >= 0].tolist()
            if len(got) != len(set(got)) or set(got) != want:
                _fail("query", where, f"row [b={b}, h={h}]: token_ids {sorted(got)} are not the tokens of "
                                      f"the selected pages {chosen}")
            if row_total[b, h] > 0 and budget[b, h] >= biggest[b, h] and not chosen:
                _fail("query", where, f"row [b={b}, h={h}] selects nothing with max_tokens "
                                      f"{int(budget[b, h])}, enough for any of its pages")
            if budget[b, h] >= row_total[b, h] and len(chosen) != int((page_len[b, h] > 0).sum()):
                _fail("query", where, f"row [b={b}, h={h}] holds {int(row_total[b, h])} tokens within "
                                      f"max_tokens {int(budget[b, h])} but selects {len(chosen)} of "
                                      f"{int((page_len[b, h] > 0).sum())} pages")


def run_index_case(factory: IndexFactory, case: IndexCase, props: frozenset[str]) -> None:
    """Run one :class:`IndexCase` through ``factory``'s indexes and check ``props``."""
    keys, token_ids, kv = case.tensors()
    copies = 2 if "deterministic" in props else 1
    indexes = [build_or_reject(CONTRACT, factory, case.config) for _ in range(copies)]
    name = getattr(indexes[0], "name", type(indexes[0]).__name__)
    N = case.prompt_len
    for ix in indexes:
        guarded(CONTRACT, f"{name}.build(keys[:, :, :{N}])", ix.build, keys[:, :, :N].clone(),
                token_ids[:, :, :N].clone())
    layouts = [_check_layout(ix, token_ids[:, :, :N] >= 0, case.config, f"{name} after build of {N} keys")
               for ix in indexes]
    g = torch.Generator().manual_seed(case.seed + 7)
    context = N
    for step, n in enumerate((0, *case.inserts)):
        if n:
            new = slice(context, context + n)
            changed = [guarded(CONTRACT, f"{name}.insert({n} keys)", ix.insert, keys[:, :, new].clone(),
                               token_ids[:, :, new].clone()) for ix in indexes]
            context += n
            before = layouts
            layouts = [_check_layout(ix, token_ids[:, :, :context] >= 0, case.config,
                                     f"{name} after insert {step} ({context} positions)") for ix in indexes]
            if "insert" in props:
                _check_insert(changed[0], before[0], layouts[0], f"{name}, insert {step}")
        where = f"{name}, {context} positions"
        if copies == 2 and not torch.equal(layouts[0], layouts[1]):
            _fail("deterministic", where, "two indexes from the same config and calls have different layouts")
        if "summaries" in props:
            _check_summaries(indexes[0], layouts[0], keys[:, :, :context], where)
        if "query" not in props and copies == 1:
            continue
        cluster = torch.randint(0, case.clusters, (case.batch, case.kv_heads), generator=g)
        q = query_for_cluster(kv, cluster, group_size=case.group, seed=case.seed + step)
        q = q.reshape(case.batch, case.kv_heads, case.group, case.head_dim)  # [B, H_kv, G, D]
        for bud in case.budgets:
            budget = torch.full((case.batch, case.kv_heads), bud, dtype=torch.int64)
            if case.per_row_budget:
                budget = budget + torch.randint(0, case.config.page_size + 1, budget.shape, generator=g)
            arg = budget.clone() if case.per_row_budget else bud
            hits = [guarded(CONTRACT, f"{name}.query(max_tokens={budget.tolist()})", ix.query, q.clone(), arg)
                    for ix in indexes]
            if "query" in props:
                _check_query(hits[0], layouts[0], budget, f"{where}, max_tokens {budget.tolist()}")
            if copies == 2 and not (torch.equal(hits[0].page_ids, hits[1].page_ids)
                                    and torch.equal(hits[0].num_tokens, hits[1].num_tokens)):
                _fail("deterministic", where, "two indexes from the same config and calls answer a query "
                                              "differently")


def check_index(factory: IndexFactory, *, max_examples: int = 15, properties: Iterable[str] | None = None,
                configs: st.SearchStrategy[CacheConfig] | None = None, settings: Any = None,
                shrink: bool = True) -> None:
    """Run the index contract against ``factory(config) -> PageIndex``; raise
    :class:`ContractViolation` (an ``AssertionError``) naming the property, row and step."""
    props = pick_properties(INDEX_PROPERTIES, properties, CONTRACT)

    @suite_settings(max_examples, settings, shrink=shrink)
    @given(case=index_cases(configs=configs))
    def index_contract(case: IndexCase) -> None:
        run_index_case(factory, case, props)

    run_suite(CONTRACT, index_contract)


def index_contract_tests(factory: IndexFactory, **kwargs: Any) -> list[Any]:
    """``pytest.param`` per property of :func:`check_index`, for ``@pytest.mark.parametrize``."""
    return pytest_params(check_index, factory, INDEX_PROPERTIES, **kwargs)


def registered_index_factory(name: str, *, plugin_manager: Any = None, **options: Any) -> IndexFactory:
    """A factory for the registered index ``name``: ``registry.create("index", name, config, **options)``."""
    from icecache.core.plugins import build_registry

    registry = build_registry(plugin_manager)
    registry.get("index", name)

    def factory(config: CacheConfig) -> Any:
        return registry.create("index", name, config, **options)

    factory.__name__ = f"index[{name}]"
    return factory
