"""The query of a :class:`~icecache.index.hierarchy.index.HierarchyIndex`: a three-stage descent,
batched over ``[B, H_kv]`` and the GQA group.

1. cells ranked by a Gaussian estimate of their attention mass, kept until they hold
   ``cell_candidates x max_tokens`` tokens, plus each query head's best cells by the ``q.k`` bound;
2. their pages ranked by a centroid estimate; the best pages holding ``candidates x max_tokens`` tokens
   (each query head's ``bound_candidates`` best pages by the bound first) are rescored **exactly**
   from their keys (read through the index's reader or own copy);
3. GQA merge of each head's normalized page masses, then a greedy fill by mass per token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from icecache.core.errors import TensorSpecError
from icecache.index.base import PageHits
from icecache.index.budget import as_budget, greedy_take

if TYPE_CHECKING:
    from icecache.index.hierarchy.index import HierarchyIndex


def gather_rows(source: Tensor, idx: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``source[g, idx[g, k]]`` for ``source`` ``[G, P, ...]`` and ``idx`` int64 ``[G, K]``, in ``dtype``.

    NOTE: whole rows through one flat ``index_select``: ``gather`` with an index expanded over D cost
    5 ms of a 17 ms query at 128k on the CPU.
    """
    G, P = source.shape[:2]
    flat = (torch.arange(G, device=idx.device)[:, None] * P + idx).reshape(-1)
    out = source.reshape(G * P, *source.shape[2:]).index_select(0, flat)
    return out.view(*idx.shape, *source.shape[2:]).to(dtype)


def query_pages(ix: HierarchyIndex, query: Tensor, max_tokens: int | Tensor, *, scale: float | None,
                resident_logits: Tensor | None) -> PageHits:
    st = ix._require()
    B, H = ix._shape
    D = st.cell_sum.shape[-1]
    if query.dim() != 4 or query.shape[:2] != (B, H) or query.shape[-1] != D:
        raise TensorSpecError(f"query must be [{B}, {H}, G, {D}], got {tuple(query.shape)}")
    G, Gq = B * H, query.shape[2]
    dev = st.pages.device
    budget = as_budget(max_tokens, (B, H), dev).reshape(G)
    scale = D ** -0.5 if scale is None else float(scale)
    q = query.reshape(G, Gq, D).to(dev, torch.float32)
    P = st.num_pages
    if P == 0:
        none = torch.zeros(G, 0, dtype=torch.int64, device=dev)
        return _hits(ix, none, none.float(), none, none, none.bool())
    lens = st.page_len[:, :P].long()  # [G, P]
    target = (ix.candidates * budget.float()).ceil()  # [G] tokens to rescore
    cell_target = (ix.cell_candidates * budget.float()).ceil()
    bounded = ix.bound_candidates > 0 and ix.scoring == "exact"
    gaussian = ix.page_estimate == "gaussian"
    # NOTE: the summaries' products run in their stored dtype where that is fast (bfloat16: 4-5x faster
    # on a CPU with AVX512-BF16 than converting to float32 first, 1.5x slower on an AVX2-only one; the
    # products are rounded to bfloat16, so the coarse ranking moves by ~0.4% of a score, docs/index.md)
    work = ix.summary_work_dtype(dev)
    keep = None
    if st.num_cells > 1 and bool((cell_target < lens.sum(1)).any()):
        # NOTE: descend: only pages of the kept cells are scored at all, so the centroid scan
        # costs the kept tokens, not the context.
        keep = _cells_kept(ix, q, scale, cell_target)  # [G, P]
        width = max(1, int(keep.sum(1).max()))
    if keep is not None and width <= P // 2:
        sub = keep.float().topk(width, dim=1, sorted=False).indices  # [G, K0] page ids
        lens_sub = lens.gather(1, sub)
        sub_ok = keep.gather(1, sub) & (lens_sub > 0)
        stats = gather_rows(st.page_stats, sub, work)  # [G, K0, F, D]
    else:
        # NOTE: when the kept cells hold most pages (contexts up to ~8k at budget 256), scanning every
        # page with the others masked is cheaper than gathering the kept pages' summaries.
        sub, lens_sub, sub_ok = torch.arange(P, device=dev).expand(G, P), lens, lens > 0
        sub_ok = sub_ok if keep is None else sub_ok & keep
        stats = st.page_stats[:, :P].to(work)
    coarse, bound = _summary_scores(q, stats, scale, gaussian=gaussian, bounded=bounded)
    coarse = (coarse + lens_sub.clamp_min(1).float().log()[:, None]).masked_fill(~sub_ok[:, None],
                                                                                float("-inf"))  # [G, Gq, K0]
    if ix.scoring == "exact":
        forced = _top_bound(ix, bound, sub_ok) if bounded else None
        cand, logmass = _rescore(ix, q, scale, coarse, target, sub, lens_sub, sub_ok, forced)
    else:
        cand, logmass = sub, coarse
    parts = logmass
    if resident_logits is not None:
        if resident_logits.dim() != 4 or resident_logits.shape[:3] != (B, H, Gq):
            raise TensorSpecError(f"resident_logits must be [{B}, {H}, {Gq}, R], got "
                                  f"{tuple(resident_logits.shape)}")
        res = resident_logits.reshape(G, Gq, resident_logits.shape[-1]).to(dev, torch.float32)
        parts = torch.cat([logmass, res], dim=-1)
    log_z = torch.logsumexp(parts, dim=-1, keepdim=True)
    mass = torch.nan_to_num((logmass - log_z).exp(), nan=0.0)  # [G, Gq, K'] share of each head
    merged = mass.sum(1) if ix.gqa == "softmax-sum" else mass.amax(1)
    cand_lens = lens.gather(1, cand)
    ok = torch.isfinite(logmass).any(1) & (cand_lens > 0)
    density = (merged / cand_lens.clamp_min(1)).masked_fill(~ok, float("-inf"))
    order, taken = greedy_take(density, cand_lens, budget)
    return _hits(ix, cand, density, cand_lens, order, taken)


def _summary_scores(q: Tensor, stats: Tensor, scale: float, *, gaussian: bool,
                    bounded: bool) -> tuple[Tensor, Tensor | None]:
    """The centroid estimate ``[G, Gq, K0]`` of each page's log-mass less ``log(len)``, and the ``q.k``
    upper bound (``bounded``), from ``stats`` ``[G, K0, F, D]`` in one product: each query head is a row
    ``[s q, s^2/2 q^2 (gaussian), 0, 0]`` and, bounded, a second row ``[0, (0), q+, q-]`` against the
    page's ``[mean, (var), max, min]`` side by side, in ``stats``' dtype, as float32.

    NOTE: + s^2/2 q^T diag(var) q is the log of E[exp(s q.k)] for Gaussian keys: a page whose keys
    spread along q (one needle token among others) is not ranked by its mean alone."""
    G, K0, F, D = stats.shape
    Gq = q.shape[1]
    # NOTE: written into one zeroed block (a few ops, not a concatenation of zero blocks per row kind)
    left = torch.zeros(G, 2 * Gq if bounded else Gq, F, D, dtype=stats.dtype, device=q.device)
    left[:, :Gq, 0].copy_(scale * q)
    if gaussian:
        left[:, :Gq, 1].copy_((q * q).mul_(0.5 * scale**2))
    if bounded:
        left[:, Gq:, F - 2].copy_(q.clamp_min(0))
        left[:, Gq:, F - 1].copy_(q.clamp_max(0))
    left = left.view(G, -1, F * D)  # [G, Gq or 2Gq, F*D]
    # NOTE: pages as the long side of the product ([K0, F*D] @ [F*D, rows]): 15% faster on the CPU
    out = (stats.reshape(G, K0, F * D) @ left.transpose(1, 2)).transpose(1, 2).float()
    return out[:, :Gq], out[:, Gq:] if bounded else None


def _cells_kept(ix: HierarchyIndex, q: Tensor, scale: float, target: Tensor) -> Tensor:
    """Bool ``[G, P]``: pages whose cell is among the best cells holding ``target`` tokens.

    A cell's log-mass is estimated as if its keys were Gaussian (diagonal covariance):
    ``log n + s q.mu + s^2/2 sum_d q_d^2 var_d`` (the log of ``n E[exp(s q.k)]``), and its ``q.k`` bound
    from the min/max, both in one product over ``cell_summary`` as for pages (:func:`_summary_scores`).
    NOTE: a ball upper bound ``q.c + |q| r`` is far too loose in 64 dimensions to rank cells.
    """
    st = ix._state
    P = st.num_pages
    count = st.cell_count
    bounded = ix.bound_candidates > 0 and ix.scoring == "exact"
    est, bound = _summary_scores(q, st.cell_summary, scale, gaussian=True, bounded=bounded)  # [G, Gq, C]
    est = est + count[:, None].clamp_min(1).log()
    est = torch.nan_to_num(est.softmax(-1), nan=0.0).sum(1).masked_fill(count == 0, -1.0)
    order = est.argsort(dim=-1, descending=True)
    ctok = count.gather(1, order)
    before = ctok.cumsum(1) - ctok
    keep_sorted = (before < target[:, None]) & (est.gather(1, order) >= 0)
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    if bounded:
        # each query head's best cells by the bound join: a needle's cell is diluted in the estimate
        keep |= _top_bound(ix, bound, count > 0)
    return keep.gather(1, st.page_cell[:, :P].long().clamp_min(0)) & (st.page_len[:, :P] > 0)


def _top_bound(ix: HierarchyIndex, bound: Tensor, ok: Tensor) -> Tensor:
    """Bool ``[G, K0]``: each query head's ``bound_candidates`` pages (or cells) with the highest
    bound (``bound`` ``[G, Gq, K0]``; ``ok`` ``[G, K0]`` those that hold keys)."""
    bound = bound.masked_fill(~ok[:, None], float("-inf"))
    k = min(ix.bound_candidates, bound.shape[-1])
    top = bound.topk(k, dim=-1).indices  # [G, Gq, k]
    forced = torch.zeros(ok.shape, dtype=torch.bool, device=ok.device)
    forced.scatter_(1, top.reshape(top.shape[0], -1), True)
    return forced & ok


def _rescore(ix: HierarchyIndex, q: Tensor, scale: float, coarse: Tensor, target: Tensor,
             sub: Tensor, lens: Tensor, ok: Tensor, forced: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact page log-masses (logsumexp of the page's key scores) of the best coarse pages covering
    ``target`` tokens, ``forced`` ``[G, K0]`` pages first. ``coarse`` ``[G, Gq, K0]`` scores the
    pages ``sub`` ``[G, K0]`` of ``lens`` int64 ``[G, K0]`` tokens; ``ok`` ``[G, K0]``: those that may be
    taken (the others' coarse scores are ``-inf``). Returns ``(page ids [G, K'], log-mass [G, Gq, K'])``."""
    G, Gq, _ = coarse.shape
    share = torch.nan_to_num(coarse.softmax(-1), nan=0.0)  # [G, Gq, K0]
    est = share.sum(1) / lens.clamp_min(1)  # [G, K0]
    if ix.candidate_order == "per-head":
        # NOTE: every query head gets its own best pages rescored, in turns (a page's priority is
        # its best rank over the heads; the merged share breaks ties): a head whose coarse scores
        # are flat (one needle key in a page of others) is not outvoted by a peaked head.
        by_head = coarse.argsort(dim=-1, descending=True)  # [G, Gq, K0]
        rank = torch.empty_like(by_head).scatter_(
            2, by_head, torch.arange(by_head.shape[-1], device=by_head.device).expand_as(by_head))
        best = rank.amin(1).float()  # [G, K0]
        est = est / (Gq + 1) - best  # NOTE: est / (Gq + 1) < 1 only orders pages of equal best rank
    floor = -float(coarse.shape[-1]) - 2  # NOTE: below every estimate, per-head ranks included
    est = est.masked_fill(~ok, floor)
    if forced is not None:  # forced pages first, each group still in estimate order: one sort
        est = est + forced * 2.0 * (Gq + 2 - floor)  # NOTE: estimates span (floor, Gq]
    # NOTE: a partial sort first: the rescored pages are the best ones up to ``target`` tokens (forced
    # ones first), about twice the full pages that hold them; a top-k of those is 4-15x cheaper than
    # sorting every page on the CPU. A row that uses them all is sorted whole instead.
    forced_max = Gq * ix.bound_candidates if forced is not None else 0
    hint = forced_max + 2 * -(-int(target.max()) // ix.page_slots)
    for whole in ((False, True) if hint < est.shape[-1] else (True,)):
        order = est.argsort(dim=-1, descending=True) if whole else est.topk(hint, dim=-1).indices
        ltok = lens.gather(1, order)
        before = ltok.cumsum(1) - ltok
        need = ((before < target[:, None]) & (est.gather(1, order) > floor + 1)).sum(1)
        K = max(1, int(need.max()))  # NOTE: the host sync of the rescoring
        if whole or K < hint:
            break
    cand = sub.gather(1, order[:, :K])  # [G, K] page ids
    beyond = torch.arange(K, device=q.device)[None] >= need[:, None]
    # NOTE: only the candidates' keys are read (a row's pages beyond its own count are not)
    keys, valid = ix.page_keys(cand.masked_fill(beyond, -1), stored=True)  # [G, K, S, D]
    S, D = keys.shape[-2:]
    # NOTE: the empty slots' -inf comes in as the product's bias (one baddbmm, no masked pass over the
    # [G, Gq, K, S] scores); pages beyond a row's count have no valid slot, so their log-mass is -inf.
    bias = torch.zeros(valid.shape, device=q.device).masked_fill_(~valid, float("-inf"))
    scores = torch.baddbmm(bias.view(G, 1, K * S), q, keys.reshape(G, K * S, D).transpose(1, 2), alpha=scale)
    return cand, scores.view(G, Gq, K, S).logsumexp(-1)  # [G, Gq, K]


def _hits(ix: HierarchyIndex, pages: Tensor, scores: Tensor, lens: Tensor, order: Tensor,
          taken: Tensor) -> PageHits:
    """The pages taken: ``pages`` / ``scores`` / ``lens`` ``[G, K]`` the candidates, ``order`` ``[G, K]``
    the fill's visiting order and ``taken`` ``[G, K]`` whether ``order[:, j]`` was taken (taken pages
    first, in that order; their tokens slot by slot, ``-1`` padded)."""
    st = ix._state
    B, H = ix._shape
    G = B * H
    K = int(taken.sum(1).max()) if taken.numel() else 0
    # NOTE: a stable sort moves the taken pages first, keeping the fill's order among them
    first = order.gather(1, taken.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :K])
    sel = taken.sum(1, keepdim=True) > torch.arange(K, device=taken.device)  # [G, K] taken
    page_ids = torch.where(sel, pages.gather(1, first), -1)
    page_scores = torch.where(sel, scores.gather(1, first), float("-inf"))
    page_lens = torch.where(sel, lens.gather(1, first), 0)
    S = st.pages.shape[-1]
    slots = st.pages.gather(1, page_ids.clamp_min(0)[..., None].expand(-1, -1, S)).reshape(G, K * S)
    # NOTE: a page's slots fill first to last, so its length says which hold a token
    valid = (torch.arange(S, device=sel.device) < page_lens[..., None]).reshape(G, K * S)
    tok = st.slot_token.gather(1, slots.long().clamp_min(0)).long()
    valid &= tok >= 0
    T = int(valid.sum(1).max()) if tok.numel() else 0
    # NOTE: packing by a running count of the valid slots (no sort): each row's tokens keep their order
    dest = torch.where(valid, valid.long().cumsum(1) - 1, T)
    tok = torch.full((G, T + 1), -1, dtype=torch.int64, device=tok.device).scatter_(1, dest, tok)[:, :T]
    return PageHits(page_ids=page_ids.view(B, H, K), scores=page_scores.view(B, H, K),
                    page_lens=page_lens.view(B, H, K), num_tokens=page_lens.sum(1).view(B, H),
                    token_ids=tok.view(B, H, T))
