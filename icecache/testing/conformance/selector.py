"""The selector contract, checked on generated prompts, paddings, budgets and decode steps.

A selector factory is ``factory(config: CacheConfig) -> Selector`` (see
:class:`icecache.selectors.base.Selector`). For a registered selector use
:func:`registered_selector_factory`. Every generated case prefills a prompt of clustered keys
(left padded per row), then runs a few decode steps (``append`` one or more keys, ``select`` with a
query that favours one cluster) and checks, after every ``select``:

``shapes``         token_ids ``[B, H_kv, T]`` / page_ids ``[B, H_kv, K]`` int64, one row per KV head
                   (the GQA query heads of a KV head are merged), ledger counts ``[B, H_kv]``;
``valid-tokens``   attended positions lie in ``[0, context)``, no position twice in a row;
``left-padding``   no position before a row's ``start`` is attended;
``ledger``         the ledger's total equals the positions attended, row by row;
``budget``         a non-dense ledger has ``budget == config.budget`` and the row attends at most
                   that; a dense ledger attends the whole context;
``not-empty``      every row attends at least one position;
``sinks-recent``   the first ``sink_tokens`` real positions are attended, and the newest position is
                   when ``window_tokens >= 1``;
``attends-all``    a row whose real context fits in the budget attends all of it;
``pages``          the layout has the selector's ``page_size`` slots (``config.page_size`` unless the
                   selector sizes its own pages, never more), valid slots first, each real position in at
                   most one page, no padding position; selected page ids are valid, distinct, and
                   every token of a selected page is attended;
``deterministic``  a second selector built from the same config (same seed) given the same inputs
                   selects the same positions, pages and ledger;
``evictions``      a selector that evicts for good (``evicts``: :mod:`~icecache.selectors.plumbing.eviction`),
                   drained after ``prefill`` and after every step: each drained position is new (the set
                   only grows), real, neither a sink nor the newest position, and never attended again;
                   the ledger's ``kept`` counts the real positions not evicted.

A selector that declares a ``prompt_query_window`` gets the prompt's queries of that many last positions
at ``prefill`` (zeros at padding, as every runner hands them:
:mod:`~icecache.selectors.plumbing.prompt_queries`), so every property is checked with its prefill-time
scoring on. A selector that sets ``wants_feedback`` gets ``observe(feedback)`` after every ``select``
(:mod:`~icecache.selectors.plumbing.feedback`). ``append`` is covered by re-checking everything after
every decode step. A factory may refuse a
config it does not support by raising :class:`~icecache.core.errors.ConfigError`: that example is
skipped (the suite fails if every example is refused). Any other error is a violation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from attrs import evolve, frozen
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.selectors.plumbing.eviction import evicts
from icecache.selectors.plumbing.feedback import attention_feedback, wants_feedback
from icecache.selectors.plumbing.prompt_queries import observation_window, query_window
from icecache.selectors.types import Selection
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
from icecache.testing.strategies.shapes import GQAShape, gqa_shapes
from icecache.testing.synthetic import left_padding, make_clustered_kv, query_for_cluster

CONTRACT = "selector"
SELECTOR_PROPERTIES: tuple[str, ...] = (
    "shapes", "valid-tokens", "left-padding", "ledger", "budget", "not-empty", "sinks-recent",
    "attends-all", "pages", "deterministic", "evictions",
)
SelectorFactory = Callable[[CacheConfig], Any]


def usable_config(config: CacheConfig) -> bool:
    """A config under which a selector can always attend something: sinks or a window, or room for a
    full page. (``budget=3, sink=0, window=0, page_size=16`` leaves a page-based selector nothing.)"""
    return config.sink_tokens + config.window_tokens >= 1 or config.budget >= config.page_size


def selector_configs(max_budget: int = 96) -> st.SearchStrategy[CacheConfig]:
    """The default config strategy of the suite: small pages and budgets, always :func:`usable_config`."""
    return cache_configs(page_size=st.sampled_from([2, 4, 8, 16]), sink_tokens=st.integers(0, 4),
                         max_budget=max_budget).filter(usable_config)


@frozen(kw_only=True)
class SelectorCase:
    """One generated scenario; every tensor comes from ``seed``, so the repr reproduces it."""

    config: CacheConfig
    shape: GQAShape
    prompt_len: int
    steps: tuple[int, ...]          # keys appended before each select
    num_clusters: int
    spread: float
    max_pad: int
    seed: int

    def __repr__(self) -> str:
        c = self.config
        return (f"SelectorCase(page_size={c.page_size}, budget={c.budget}, sink={c.sink_tokens}, "
                f"window={c.window_tokens}, seed={c.seed}, shape={self.shape}, prompt_len={self.prompt_len}, "
                f"steps={self.steps}, clusters={self.num_clusters}, spread={self.spread}, "
                f"max_pad={self.max_pad}, data_seed={self.seed})")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # NOTE: hypothesis pretty-prints attrs by fields
        p.text(repr(self))

    def tensors(self) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``keys [B, H_kv, N_total, D]``, ``start [B]`` and one query ``[B, H_q, D]`` per step."""
        s = self.shape
        total = self.prompt_len + sum(self.steps)
        kv = make_clustered_kv(s.batch, s.num_kv_heads, total, s.head_dim, num_clusters=self.num_clusters,
                               spread=self.spread, dtype=self.config.dtype, seed=self.seed)
        start = left_padding(s.batch, self.prompt_len, max_pad=self.max_pad, seed=self.seed + 1)
        g = torch.Generator().manual_seed(self.seed + 2)
        queries = [
            query_for_cluster(kv, torch.randint(0, self.num_clusters, (s.batch, s.num_kv_heads), generator=g),
                              group_size=s.group_size, seed=self.seed + 3 + i)
            for i in range(len(self.steps))
        ]
        return kv.keys, start, queries

    def prompt_queries(self, window: int) -> Tensor | None:
        """The prompt's last ``min(window, prompt_len)`` queries ``[B, H_q, Q, D]`` (each favouring a
        random cluster; zeros at padding), or None for ``window == 0``."""
        if window <= 0:
            return None
        s = self.shape
        total = self.prompt_len + sum(self.steps)
        kv = make_clustered_kv(s.batch, s.num_kv_heads, total, s.head_dim, num_clusters=self.num_clusters,
                               spread=self.spread, dtype=self.config.dtype, seed=self.seed)
        start = left_padding(s.batch, self.prompt_len, max_pad=self.max_pad, seed=self.seed + 1)
        Q = min(window, self.prompt_len)
        g = torch.Generator().manual_seed(self.seed + 7)
        targets = torch.randint(0, self.num_clusters, (Q, s.batch, s.num_kv_heads), generator=g)
        q = torch.stack([query_for_cluster(kv, targets[i], group_size=s.group_size, seed=self.seed + 11 + i)
                         for i in range(Q)], dim=2)  # [B, H_q, Q, D]
        return observation_window(q, Q, start, num_positions=self.prompt_len)


@st.composite
def selector_cases(draw: Any, *, configs: st.SearchStrategy[CacheConfig] | None = None,
                   shapes: st.SearchStrategy[GQAShape] | None = None, max_prompt: int = 96,
                   max_steps: int = 3) -> SelectorCase:
    """Generated :class:`SelectorCase` values. Half of them use a budget that holds the whole
    context, so ``attends-all`` is exercised."""
    config = draw(configs if configs is not None else selector_configs())
    shape = draw(shapes if shapes is not None else gqa_shapes(batch=st.integers(1, 2),
                                                              num_kv_heads=st.integers(1, 2),
                                                              group_size=st.integers(1, 3),
                                                              head_dim=st.sampled_from([8, 16])))
    steps = tuple(draw(st.lists(st.sampled_from([1, 1, 1, 2, config.page_size]), min_size=1,
                                max_size=max_steps)))
    if draw(st.booleans()):
        # a context the budget holds entirely
        cap = max(1, config.budget - sum(steps))
        prompt = draw(st.integers(1, max(1, min(cap, max_prompt))))
    else:
        prompt = draw(st.integers(1, max_prompt))
    return SelectorCase(config=config, shape=shape, prompt_len=prompt, steps=steps,
                        num_clusters=draw(st.integers(1, 6)), spread=draw(st.sampled_from([0.0, 0.1, 0.5])),
                        max_pad=draw(st.sampled_from([0, 0, 3, 40])), seed=draw(st.integers(0, 2**20)))


def _fail(prop: str, where: str, detail: str) -> None:
    raise ContractViolation(CONTRACT, prop, f"{where}: {detail}")


def _mask(token_ids: Tensor, context: int) -> Tensor:
    """Bool ``[B, H, context]`` of attended positions; out-of-range ids are ignored (reported by
    ``valid-tokens``), so a broken selection cannot crash the checker."""
    B, H, _ = token_ids.shape
    ok = (token_ids >= 0) & (token_ids < context)
    mask = torch.zeros(B, H, context + 1, dtype=torch.bool)
    mask.scatter_(2, torch.where(ok, token_ids, context), True)
    return mask[..., :context]


def _counts(value: Tensor, B: int, H: int) -> Tensor:
    return torch.as_tensor(value).to(torch.int64).expand(B, H)


def check_selection(sel: Any, *, config: CacheConfig, shape: GQAShape, context: int, start: Tensor,
                    layout_ids: Tensor | None, props: frozenset[str], where: str,
                    page_size: int | None = None) -> None:
    """Check one ``select`` result against every property in ``props`` (see the module docstring).
    ``page_size``: the selector's (default ``config.page_size``)."""
    B, H = shape.batch, shape.num_kv_heads
    # NOTE: shapes are always checked: every other property relies on them
    if not isinstance(sel, Selection):
        _fail("shapes", where, f"select() returned {type(sel).__name__}, not a Selection")
    t, p = sel.token_ids, sel.page_ids
    if t.dtype != torch.int64 or t.dim() != 3 or tuple(t.shape[:2]) != (B, H):
        _fail("shapes", where, f"token_ids must be int64 [B={B}, H_kv={H}, T], got {t.dtype} "
                               f"{tuple(t.shape)}")
    if p.dtype != torch.int64 or p.dim() != 3 or tuple(p.shape[:2]) != (B, H):
        _fail("shapes", where, f"page_ids must be int64 [B={B}, H_kv={H}, K], got {p.dtype} "
                               f"{tuple(p.shape)}")
    for part in ("sink", "window", "selected", "extra"):
        v = getattr(sel.ledger, part)
        try:
            torch.broadcast_shapes(tuple(v.shape), (B, H))
        except RuntimeError:
            _fail("shapes", where, f"ledger.{part} has shape {tuple(v.shape)}, not broadcastable to "
                                   f"[{B}, {H}]")
    t = sel.token_ids.cpu()
    valid = t >= 0
    if "valid-tokens" in props:
        bad = valid & (t >= context)
        if bool(bad.any()) or bool((t < -1).any()):
            b, h, i = torch.nonzero(bad | (t < -1))[0].tolist()
            _fail("valid-tokens", where, f"row [b={b}, h={h}] attends position {int(t[b, h, i])}, outside "
                                         f"[0, {context}) (padding must be -1)")
        srt = torch.sort(torch.where(valid, t, -1), dim=-1).values
        dup = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
        if bool(dup.any()):
            b, h, i = torch.nonzero(dup)[0].tolist()
            _fail("valid-tokens", where, f"row [b={b}, h={h}] lists position {int(srt[b, h, i + 1])} twice")
    mask = _mask(t, context)  # [B, H, context]
    pos = torch.arange(context)
    real = pos[None, :] >= start[:, None]  # [B, context]
    if "left-padding" in props:
        leak = mask & ~real[:, None, :]
        if bool(leak.any()):
            b, h, i = torch.nonzero(leak)[0].tolist()
            _fail("left-padding", where,
                  f"row [b={b}, h={h}] attends padding position {i} (start={int(start[b])})")
    attended = mask.sum(-1)  # [B, H]
    total = _counts(sel.ledger.total, B, H)
    if "ledger" in props and not torch.equal(attended, total):
        b, h = torch.nonzero(attended != total)[0].tolist()
        _fail("ledger", where, f"row [b={b}, h={h}] attends {int(attended[b, h])} positions but its ledger "
                               f"totals {int(total[b, h])} ({sel.ledger.summary()})")
    n_real = real.sum(-1)  # [B]
    if "budget" in props:
        if sel.ledger.dense:
            missing = real[:, None, :] & ~mask
            if bool(missing.any()):
                b, h, i = torch.nonzero(missing)[0].tolist()
                _fail("budget", where, f"a dense ledger must attend the whole context; row [b={b}, h={h}] "
                                       f"misses position {i}")
        else:
            if sel.ledger.budget != config.budget:
                _fail("budget", where, f"ledger.budget={sel.ledger.budget} != config.budget={config.budget}")
            over = attended > config.budget
            if bool(over.any()):
                b, h = torch.nonzero(over)[0].tolist()
                _fail("budget", where, f"row [b={b}, h={h}] attends {int(attended[b, h])} positions, "
                                       f"over the budget of {config.budget}")
    if "not-empty" in props and bool((attended < 1).any()):
        b, h = torch.nonzero(attended < 1)[0].tolist()
        _fail("not-empty", where, f"row [b={b}, h={h}] attends nothing (real context {int(n_real[b])})")
    if "sinks-recent" in props:
        rank = pos[None, :] - start[:, None]  # [B, context], position among real tokens
        need = (rank >= 0) & (rank < config.sink_tokens)
        if config.window_tokens >= 1:
            need = need | (pos[None, :] == context - 1)
        missing = need[:, None, :] & ~mask
        if bool(missing.any()):
            b, h, i = torch.nonzero(missing)[0].tolist()
            what = "the newest position" if i == context - 1 else f"sink position {i}"
            _fail("sinks-recent", where,
                  f"row [b={b}, h={h}] does not attend {what} (start={int(start[b])}, "
                  f"sink_tokens={config.sink_tokens}, window_tokens={config.window_tokens})")
    if "attends-all" in props:
        fits = n_real <= config.budget  # [B]
        missing = (fits[:, None] & real)[:, None, :] & ~mask
        if bool(missing.any()):
            b, h, i = torch.nonzero(missing)[0].tolist()
            _fail("attends-all", where, f"row [b={b}, h={h}] has {int(n_real[b])} real positions, within the "
                                        f"budget of {config.budget}, but does not attend position {i}")
    if "pages" in props and layout_ids is not None:
        _check_pages(sel, layout_ids, mask, config=config, context=context, start=start, where=where,
                     page_size=config.page_size if page_size is None else page_size)


def _check_pages(sel: Any, ids: Tensor, mask: Tensor, *, config: CacheConfig, context: int, start: Tensor,
                 where: str, page_size: int) -> None:
    B, H = mask.shape[:2]
    if ids.dtype != torch.int64 or ids.dim() != 4 or tuple(ids.shape[:2]) != (B, H):
        _fail("pages", where, f"layout.token_ids must be int64 [B={B}, H_kv={H}, P, S], got {ids.dtype} "
                              f"{tuple(ids.shape)}")
    P, S = ids.shape[2], ids.shape[3]
    slots = page_size
    if P and (S != slots or slots > config.page_size):
        _fail("pages", where, f"layout pages have {S} slots, the selector's page_size is {slots} (at most "
                              f"config.page_size = {config.page_size})")
    v = ids >= 0
    if bool((v[..., 1:] & ~v[..., :-1]).any()):
        b, h, p, _ = torch.nonzero(v[..., 1:] & ~v[..., :-1])[0].tolist()
        _fail("pages", where, f"page {p} of row [b={b}, h={h}] has a valid slot after an empty one: "
                              f"{ids[b, h, p].tolist()}")
    pad = v & ((ids >= context) | (ids < start[:, None, None, None]))
    if bool(pad.any()):
        b, h, p, s = torch.nonzero(pad)[0].tolist()
        _fail("pages", where, f"page {p} of row [b={b}, h={h}] holds position {int(ids[b, h, p, s])}, "
                              f"padding or beyond the context {context} (start={int(start[b])})")
    flat = torch.where(v, ids, -1).reshape(B, H, P * S)
    srt = torch.sort(flat, dim=-1).values
    dup = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
    if bool(dup.any()):
        b, h, i = torch.nonzero(dup)[0].tolist()
        _fail("pages", where, f"position {int(srt[b, h, i + 1])} sits in two pages of row [b={b}, h={h}]")
    pid = sel.page_ids.cpu()
    if bool(((pid < -1) | (pid >= P)).any()):
        b, h, k = torch.nonzero((pid < -1) | (pid >= P))[0].tolist()
        _fail("pages", where, f"row [b={b}, h={h}] selects page {int(pid[b, h, k])}, layout has {P} pages")
    sp = torch.sort(pid, dim=-1).values
    dup = (sp[..., 1:] == sp[..., :-1]) & (sp[..., 1:] >= 0)
    if bool(dup.any()):
        b, h, i = torch.nonzero(dup)[0].tolist()
        _fail("pages", where, f"row [b={b}, h={h}] selects page {int(sp[b, h, i + 1])} twice")
    if pid.shape[-1] and P:
        K = pid.shape[-1]
        chosen = torch.gather(ids, 2, pid.clamp_min(0)[..., None].expand(B, H, K, S))  # [B, H, K, S]
        chosen = torch.where((pid >= 0)[..., None] & (chosen >= 0), chosen, -1)
        hit = torch.gather(torch.nn.functional.pad(mask, (0, 1)), 2,
                           torch.where(chosen >= 0, chosen, context).reshape(B, H, -1)).reshape(chosen.shape)
        missing = (chosen >= 0) & ~hit
        if bool(missing.any()):
            b, h, k, s = torch.nonzero(missing)[0].tolist()
            _fail("pages", where, f"row [b={b}, h={h}] selects page {int(pid[b, h, k])} but does not attend "
                                  f"its position {int(chosen[b, h, k, s])} (pages are attended whole)")


def _same(a: Any, b: Any, context: int, where: str) -> None:
    ma, mb = _mask(a.token_ids.cpu(), context), _mask(b.token_ids.cpu(), context)
    if not torch.equal(ma, mb):
        bb, h, i = torch.nonzero(ma != mb)[0].tolist()
        _fail("deterministic", where, f"two selectors with the same config and seed differ at row "
                                      f"[b={bb}, h={h}] position {i}")
    pa = torch.sort(a.page_ids, dim=-1).values
    pb = torch.sort(b.page_ids, dim=-1).values
    if pa.shape != pb.shape or not torch.equal(pa, pb):
        _fail("deterministic", where, "two selectors with the same config and seed select different pages")
    for part in ("sink", "window", "selected", "extra"):
        la, lb = torch.as_tensor(getattr(a.ledger, part)), torch.as_tensor(getattr(b.ledger, part))
        if not torch.equal(la, lb):
            _fail("deterministic", where, f"two selectors with the same config and seed report different "
                                          f"ledger.{part}")


def run_selector_case(factory: SelectorFactory, case: SelectorCase, props: frozenset[str]) -> None:
    """Run one :class:`SelectorCase` through ``factory``'s selectors and check ``props``."""
    keys, start, queries = case.tensors()
    copies = 2 if "deterministic" in props else 1
    sels = [build_or_reject(CONTRACT, factory, case.config) for _ in range(copies)]
    name = getattr(sels[0], "name", type(sels[0]).__name__)
    N = case.prompt_len
    window = query_window(sels[0])
    prompt_q = case.prompt_queries(window)
    extra = {} if prompt_q is None else {"queries": prompt_q}
    what = "" if prompt_q is None else f", queries=[{prompt_q.shape[2]} last positions]"
    for s in sels:
        guarded(CONTRACT, f"{name}.prefill(keys[:, :, :{N}], start={start.tolist()}{what})", s.prefill,
                keys[:, :, :N].clone(), start=start.clone(), **{k: v.clone() for k, v in extra.items()})
    context = N
    gone = None
    if "evictions" in props and evicts(sels[0]):
        gone = torch.zeros(*keys.shape[:2], keys.shape[2], dtype=torch.bool)
        _drain(sels, gone, context, start, case.config, f"{name} after prefill")
    for i, (n, q) in enumerate(zip(case.steps, queries, strict=True)):
        new = keys[:, :, context: context + n]
        for s in sels:
            guarded(CONTRACT, f"{name}.append({n} keys) at step {i}", s.append, new.clone())
        context += n
        where = f"{name}, decode step {i} (context {context})"
        results = [guarded(CONTRACT, f"{name}.select() at step {i}", s.select, q.clone()) for s in sels]
        for s, sel in zip(sels, results, strict=True):
            if wants_feedback(s) and isinstance(sel, Selection):
                ids = sel.token_ids.clamp(0, context - 1)
                picked = keys[:, :, :context].gather(2, ids[..., None].expand(*ids.shape, keys.shape[-1]))
                D = q.shape[-1]
                scale = s.attention_scale(D) if hasattr(s, "attention_scale") else D**-0.5
                feedback = attention_feedback(q, picked, sel.token_ids, scale)
                guarded(CONTRACT, f"{name}.observe() at step {i}", s.observe, feedback)
        if gone is not None:
            _check_not_evicted(results[0], gone, context, where)
            _drain(sels, gone, context, start, case.config, where)
        layout = guarded(CONTRACT, f"{name}.layout", lambda s=sels[0]: s.layout) if "pages" in props else None
        layout_ids = None if layout is None else layout.token_ids.cpu()
        check_selection(results[0], config=case.config, shape=case.shape, context=context, start=start,
                        layout_ids=layout_ids, props=props, where=where,
                        page_size=getattr(sels[0], "page_size", case.config.page_size))
        if copies == 2:
            _same(results[0], results[1], context, where)


def _drain(sels: list[Any], gone: Tensor, context: int, start: Tensor, config: CacheConfig,
           where: str) -> None:
    """Drain every copy's ``evictions()`` (the first one's into ``gone``, bool ``[B, H_kv, N]``) and check
    what was dropped."""
    drained = [guarded(CONTRACT, f"{where}: evictions()", s.evictions) for s in sels]
    ids = drained[0]
    if ids is None:
        return
    ids = ids.cpu().to(torch.int64)
    B, H = gone.shape[:2]
    if ids.dim() != 3 or tuple(ids.shape[:2]) != (B, H):
        _fail("evictions", where, f"evictions() must be int64 [B={B}, H_kv={H}, E], got {tuple(ids.shape)}")
    valid = ids >= 0
    pos = ids.clamp(min=0)
    first = (start[:, None, None] + config.sink_tokens).expand_as(ids)
    bad = valid & ((ids >= context - min(1, config.window_tokens)) | (ids < first))
    if bool(bad.any()):
        b, h, e = (int(x) for x in torch.nonzero(bad)[0])
        _fail("evictions", where, f"row [b={b}, h={h}] evicted position {int(ids[b, h, e])}: padding, a "
                                  f"sink or the newest position (context {context}, start {int(start[b])})")
    again = valid & gone.gather(2, pos)
    if bool(again.any()):
        b, h, e = (int(x) for x in torch.nonzero(again)[0])
        _fail("evictions", where, f"row [b={b}, h={h}] evicted position {int(ids[b, h, e])} a second time")
    N = gone.shape[2]
    new = torch.zeros(B, H, N + 1, dtype=torch.bool).scatter_(2, torch.where(valid, ids, N), True)
    gone |= new[..., :N]


def _check_not_evicted(selection: Any, gone: Tensor, context: int, where: str) -> None:
    t = selection.token_ids.cpu().to(torch.int64)
    hit = (t >= 0) & gone.gather(2, t.clamp(0, gone.shape[2] - 1))
    if bool(hit.any()):
        b, h, e = (int(x) for x in torch.nonzero(hit)[0])
        _fail("evictions", where, f"row [b={b}, h={h}] attends position {int(t[b, h, e])}, evicted before")
    kept_ledger = getattr(selection.ledger, "kept", None)
    if kept_ledger is not None and bool((selection.ledger.total > kept_ledger.cpu()).any()):
        _fail("evictions", where, "the ledger attends more tokens than it says the row keeps")


def check_selector(factory: SelectorFactory, *, max_examples: int = 20,
                   properties: Iterable[str] | None = None,
                   configs: st.SearchStrategy[CacheConfig] | None = None,
                   shapes: st.SearchStrategy[GQAShape] | None = None,
                   settings: Any = None, shrink: bool = True) -> None:
    """Run the selector contract against ``factory(config) -> Selector``; raise
    :class:`ContractViolation` (an ``AssertionError``) naming the property, the row and the step.

    ``properties``: a subset of :data:`SELECTOR_PROPERTIES` (default all). ``configs`` / ``shapes``:
    strategies to narrow what is generated (e.g. only ``page_size=16`` if that is all the selector
    supports). ``settings``: a ``hypothesis.settings`` to start from (``max_examples`` wins).
    ``shrink=False`` reports the first failure unshrunk (faster).
    """
    props = pick_properties(SELECTOR_PROPERTIES, properties, CONTRACT)

    @suite_settings(max_examples, settings, shrink=shrink)
    @given(case=selector_cases(configs=configs, shapes=shapes))
    def selector_contract(case: SelectorCase) -> None:
        run_selector_case(factory, case, props)

    run_suite(CONTRACT, selector_contract)


def selector_contract_tests(factory: SelectorFactory, **kwargs: Any) -> list[Any]:
    """``pytest.param`` per property, for ``@pytest.mark.parametrize("check", selector_contract_tests(f))``
    then ``def test_contract(check): check()``. ``kwargs`` go to :func:`check_selector`."""
    return pytest_params(check_selector, factory, SELECTOR_PROPERTIES, **kwargs)


def registered_selector_factory(name: str, *, layer_idx: int | None = None, plugin_manager: Any = None,
                                **policy_kwargs: Any) -> SelectorFactory:
    """A factory for the registered selector ``name`` built as a policy would build it (its policy
    composed once, its config swapped per example). ``layer_idx`` defaults to the first sparse layer."""
    from icecache.core.policy import compose_policy

    base = compose_policy(selector=name, plugin_manager=plugin_manager, **policy_kwargs)

    def factory(config: CacheConfig) -> Any:
        policy = evolve(base, config=config)
        layer = config.dense_layers if layer_idx is None else layer_idx
        return policy.registry.create("selector", name, config, layer_idx=layer, policy=policy,
                                      **policy.options.get("selector", {}))

    factory.__name__ = f"selector[{name}]"
    return factory
