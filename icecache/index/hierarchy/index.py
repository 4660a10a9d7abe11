"""The hierarchy page index: cells (upper level) of pages (leaves) over MIPS-transformed keys.

Build (prefill): :func:`~icecache.index.hierarchy.build.build_layout` for every head at once.
Insert (decode): new keys form new leaves among themselves (``insert_leaf_tokens`` each, default
half a build leaf), each joining its nearest cell; or (``insert_mode="assign"``) they join the
nearest page of their cell with room and the overflow forms new leaves. A page's tokens never move,
so storage only appends; summaries of touched pages are recomputed.
Query (a three-stage descent): cells are ranked by a Gaussian estimate of their attention mass and
kept until they hold ``cell_candidates x max_tokens`` tokens; their pages are ranked by a centroid
estimate and the best, holding ``candidates x max_tokens`` tokens, are rescored exactly from their
keys; pages are then taken greedily by mass per token within the token budget.

GQA merge (``gqa="softmax-sum"``): each query head's page masses are normalized over the candidate
pages (a softmax of the page log-masses) and summed over the group's heads; pages are then ranked by
mass per token. This maximizes the group-averaged attention mass a budget captures (the recall
metric) better than a max of raw scores, which lets one head with a peaked distribution dominate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from attrs import define, field
from attrs.validators import in_, instance_of
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, TensorSpecError
from icecache.core.validators import positive
from icecache.index.base import PageHits, PageSummaries
from icecache.index.budget import as_budget, greedy_take
from icecache.index.clustering.kmeans import capacity_assign, kmeans
from icecache.index.hierarchy.build import build_layout, rank_within
from icecache.index.hierarchy.state import IndexState
from icecache.selectors.types import PageLayout

PAGE_ESTIMATES = ("centroid", "gaussian")
CANDIDATE_ORDERS = ("merged", "per-head")
SCORINGS = ("exact", "centroid")
GQA_MERGES = ("softmax-sum", "max")
INSERT_MODES = ("assign", "new-leaf")


def _positive_float(instance, attribute, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{attribute.name} must be a positive number, got {value!r}")


def check_keys(keys: Tensor, name: str = "keys") -> None:
    if not isinstance(keys, Tensor) or keys.dim() != 4 or not keys.is_floating_point():
        got = f"{keys.dtype} {tuple(keys.shape)}" if isinstance(keys, Tensor) else type(keys).__name__
        raise TensorSpecError(f"{name} must be a float [B, H_kv, N, D] tensor, got {got}")


def normalize_token_ids(token_ids: Tensor | None, B: int, H: int, n: int, device: torch.device) -> Tensor:
    """Token ids as int64 ``[B * H, n]`` from ``None`` (``0..n-1``), ``[n]`` or ``[B, H, n]``."""
    if token_ids is None:
        return torch.arange(n, device=device).expand(B * H, n).clone()
    if not isinstance(token_ids, Tensor) or token_ids.is_floating_point() or token_ids.dtype == torch.bool:
        raise TensorSpecError(f"token_ids must be an integer tensor, got {token_ids!r:.80}")
    if token_ids.shape == (n,):
        return token_ids.to(device, torch.int64).expand(B * H, n).clone()
    if token_ids.shape != (B, H, n):
        raise TensorSpecError(
            f"token_ids must have shape [{n}] or [{B}, {H}, {n}], got {tuple(token_ids.shape)}")
    return token_ids.to(device, torch.int64).reshape(B * H, n).clone()


def query_whitening(queries: Tensor) -> Tensor:
    """``[G, D, D]`` symmetric square root of the queries' second moment ``E[q q^T]`` (trace ``D``).

    Clustering ``k @ W`` minimizes the *expected squared score error* ``E_q[(q.(k - c))^2]`` of a page
    centroid ``c``: keys that score alike for the queries actually seen share a page.
    """
    G, Q, D = queries.shape
    q = queries.float()
    cov = q.transpose(1, 2) @ q / max(Q, 1)  # [G, D, D]
    cov = cov * (D / torch.diagonal(cov, dim1=1, dim2=2).sum(-1).clamp_min(1e-12))[:, None, None]
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(1e-4 * evals.amax(-1, keepdim=True).clamp_min(1e-12))
    return evecs @ torch.diag_embed(evals.sqrt()) @ evecs.transpose(1, 2)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads (None: unchanged), restoring the previous count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@define
class HierarchyIndex:
    """Two-level index (cells of pages) over MIPS-transformed keys; see the module docstring.

    Options: ``leaf_tokens`` target mean page fill (pages hold at most ``config.page_size``; smaller
    leaves raise recall at a budget), ``cell_tokens`` keys per cell, ``iters`` k-means iterations,
    ``insert_mode``/``insert_leaf_tokens``/``insert_fill``: inserted keys form new leaves of about
    ``insert_leaf_tokens`` ("new-leaf", default) or join the nearest page of their cell holding fewer
    than ``insert_fill`` tokens ("assign", overflow forms new leaves),
    ``candidates`` how many times ``max_tokens`` the exact rescoring looks at, ``cell_candidates``
    how many times ``max_tokens`` the kept cells hold (the cell level prunes only beyond it), ``scoring``
    ("exact" | "centroid"), ``bound_candidates`` each query head's cells and pages with the highest
    ``q.k`` upper bound that are kept and rescored whatever their estimate (0: off), ``gqa``
    ("softmax-sum" | "max"), ``transform`` (cluster in the
    MIPS-transformed space), ``threads`` (intra-op
    threads while building/inserting/querying, restored after; None leaves torch's setting alone).
    NOTE: on an oversubscribed CPU, ``threads=1`` ran the build 3-10x faster than 2 threads (the
    many small ops spin-wait for a descheduled sibling thread).
    """

    config: CacheConfig = field(validator=instance_of(CacheConfig))
    leaf_tokens: int = field(validator=positive)
    cell_tokens: int = field(default=128, validator=positive)
    iters: int = field(default=4, validator=positive)
    init: str = field(default="random", validator=in_(("random", "kmeans++")))
    # NOTE: 8, not 4: with 4x the budget rescored, a page holding one needle key among unrelated ones
    # (low centroid score) fell out of the candidates at 8k while exact scoring ranked it first for one
    # query head; icecache@256 answered 7 of 9 8k niah_noise samples, 9 of 9 with 8 (docs/index.md).
    candidates: float = field(default=8.0, validator=_positive_float)
    cell_candidates: float = field(default=32.0, validator=_positive_float)
    # NOTE: a copying head puts ~all its attention on one needle key; in a page of unrelated keys the
    # centroid hides it (8k niah_noise: 0.98 of a head's mass on the needle, none selected). The
    # element-wise bound max_k q.k over a page's min/max does not: each query head's best pages by it
    # are rescored exactly too (docs/index.md). 8, not 4: a layer-7 head with 0.95 of its mass on a
    # needle digit had that page 8th by the bound (8k niah_single, a digit miscopied with 4).
    bound_candidates: int = field(default=8, validator=instance_of(int))
    scoring: str = field(default="exact", validator=in_(SCORINGS))
    page_estimate: str = field(default="centroid", validator=in_(PAGE_ESTIMATES))
    candidate_order: str = field(default="merged", validator=in_(CANDIDATE_ORDERS))
    gqa: str = field(default="softmax-sum", validator=in_(GQA_MERGES))
    insert_mode: str = field(default="new-leaf", validator=in_(INSERT_MODES))
    insert_leaf_tokens: int = field(validator=positive)
    insert_fill: int | None = field(default=None)
    transform: bool = field(default=True)
    seed: int | None = field(default=None)
    threads: int | None = field(default=None)
    name: str = field(default="hierarchy", init=False)
    _state: IndexState | None = field(default=None, init=False, repr=False)
    _shape: tuple[int, int] = field(default=(0, 0), init=False, repr=False)
    _cache: dict[str, Tensor] = field(factory=dict, init=False, repr=False)  # derived; cleared on change
    _inserted: int = field(default=0, init=False, repr=False)  # slots added since the build

    @leaf_tokens.default
    def _leaf_default(self) -> int:
        # NOTE: half-filled pages: measured on the real model, 8-token leaves of 16-slot pages gain
        # ~0.01 attention recall at budget 256 over full pages.
        return max(1, self.config.page_size // 2)

    @insert_leaf_tokens.default
    def _insert_leaf_default(self) -> int:
        # NOTE: measured on the real model (2000 of 3981 tokens inserted 16 at a time after the
        # build): new leaves of 4 tokens kept recall at the full build's level (0.900 vs 0.897), of 8
        # lost 0.016, assigning to the nearest pages lost 0.045. Recent tokens weigh more.
        return max(1, self.leaf_tokens // 2)

    def __attrs_post_init__(self) -> None:
        if self.bound_candidates < 0:
            raise ConfigError(f"bound_candidates must be >= 0, got {self.bound_candidates}")
        if self.leaf_tokens > self.config.page_size:
            raise ConfigError(f"leaf_tokens={self.leaf_tokens} exceeds page_size={self.config.page_size}")

    # ------------------------------------------------------------------ build
    def build(self, keys: Tensor, token_ids: Tensor | None = None, *, queries: Tensor | None = None) -> None:
        """See :meth:`icecache.index.base.PageIndex.build`. ``queries``: optional float
        ``[B, H_kv, Q, D]`` sample of queries (e.g. the prompt's, all heads of the group); when given,
        pages group keys that score alike for such queries (:func:`query_whitening`)."""
        with _threads(self.threads):
            self._build(keys, token_ids, queries)

    def insert(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        """See :meth:`icecache.index.base.PageIndex.insert`."""
        with _threads(self.threads):
            return self._insert(keys, token_ids)

    def query(self, query: Tensor, max_tokens: int | Tensor, *, scale: float | None = None,
              resident_logits: Tensor | None = None) -> PageHits:
        """See :meth:`icecache.index.base.PageIndex.query`. ``resident_logits``: optional float
        ``[B, H_kv, G, R]``, exact ``scale * q.k`` of tokens attended anyway (sinks, window; ``-inf``
        padding): they join each head's softmax normalizer, so a head whose mass sits on them weighs
        less in the GQA merge."""
        with _threads(self.threads):
            return self._query(query, max_tokens, scale=scale, resident_logits=resident_logits)

    def _build(self, keys: Tensor, token_ids: Tensor | None, queries: Tensor | None) -> None:
        check_keys(keys)
        B, H, N, D = keys.shape
        G, dev = B * H, keys.device
        tok = normalize_token_ids(token_ids, B, H, N, dev)  # [G, N]
        mask = tok >= 0
        x = keys.reshape(G, N, D).to(torch.float32, copy=True)  # [G, N, D], the index's own copy
        whiten = None
        if queries is not None:
            if queries.dim() != 4 or queries.shape[:2] != (B, H) or queries.shape[-1] != D:
                raise TensorSpecError(f"queries must be [{B}, {H}, Q, {D}], got {tuple(queries.shape)}")
            whiten = query_whitening(queries.reshape(G, -1, D).to(dev))
        space = x @ whiten if whiten is not None else x
        gen = torch.Generator().manual_seed(self.config.seed if self.seed is None else self.seed)
        S = self.config.page_size
        if bool(mask.any()):
            built = build_layout(space, mask, page_size=S, leaf_tokens=self.leaf_tokens,
                                 cell_tokens=self.cell_tokens, iters=self.iters, transform=self.transform,
                                 init=self.init, generator=gen, row_keys=self._head_keys(B, H, dev))
            pages, page_cell, num_cells = built.pages, built.page_cell, built.num_cells
            point_page = built.point_page
        else:
            point_page = torch.full((G, N), -1, dtype=torch.int64, device=dev)
            pages = torch.full((G, 0, S), -1, dtype=torch.int64, device=dev)
            page_cell = torch.full((G, 0), -1, dtype=torch.int64, device=dev)
            num_cells = 1
        P = pages.shape[1]
        space_sq = (space * space).sum(-1)
        zeros = torch.zeros(G, P, D, device=dev)
        self._state = IndexState(
            keys=x, space=space, space_sq=space_sq, slot_token=tok, num_slots=N,
            m2=space_sq.masked_fill(~mask, 0).amax(1) if N else torch.zeros(G, device=dev),
            pages=pages, page_len=(pages >= 0).sum(-1), page_cell=page_cell,
            group_pages=(page_cell >= 0).sum(1), page_sum=zeros, page_sqsum=zeros.clone(),
            page_min=zeros.clone(), page_max=zeros.clone(),
            page_ssum=zeros.clone(), page_extra=torch.zeros(G, P, device=dev), num_cells=num_cells,
            whiten=whiten)
        self._shape = (B, H)
        self._inserted = 0
        self._state.summarize_points(point_page)
        self._cache.clear()

    @staticmethod
    def _head_keys(B: int, H: int, device: torch.device) -> Tensor:
        """int64 ``[B * H_kv]``: each row's KV head, which keys its random numbers, so a sequence
        gets the same pages whatever it is batched with (:mod:`~icecache.index.clustering.noise`)."""
        return torch.arange(B * H, device=device) % H

    # ----------------------------------------------------------------- insert
    def _insert(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        check_keys(keys)
        B, H, n, D = keys.shape
        if self._state is None:
            self.build(keys[:, :, :0], torch.zeros(B, H, 0, dtype=torch.int64, device=keys.device))
        st = self._state
        if (B, H) != self._shape or D != st.keys.shape[-1]:
            raise TensorSpecError(f"insert keys {tuple(keys.shape)} do not match the index "
                                  f"[{self._shape[0]}, {self._shape[1]}, n, {st.keys.shape[-1]}]")
        G, dev = B * H, keys.device
        tok = normalize_token_ids(token_ids, B, H, n, dev)
        valid = tok >= 0
        self._cache.clear()
        x = keys.reshape(G, n, D).float()
        s0 = st.num_slots
        st.reserve_slots(s0 + n)
        space = x @ st.whiten if st.whiten is not None else x
        st.keys[:, s0:s0 + n] = x
        st.space[:, s0:s0 + n] = space
        st.space_sq[:, s0:s0 + n] = (space * space).sum(-1)
        st.slot_token[:, s0:s0 + n] = tok
        st.num_slots = s0 + n
        m2 = torch.maximum(st.m2, st.space_sq[:, s0:s0 + n].masked_fill(~valid, 0).amax(1) if n else st.m2)
        if bool((m2 > st.m2).any()):
            # NOTE: M grew: every page's MIPS extra-coordinate sum changes (lazy growth of M).
            st.m2 = m2
            st.refresh_extra(*st.all_pages())
        changed = torch.zeros(G, st.pages.shape[1], dtype=torch.bool, device=dev)
        has_pages = st.group_pages > 0
        fresh = valid & ~has_pages[:, None] if self.insert_mode == "assign" else valid
        routed = valid & ~fresh
        if bool(routed.any()):
            changed = self._assign(routed, s0, changed)
        if bool(fresh.any()):
            changed = self._new_leaves(fresh, s0, changed)
        P = st.num_pages
        return changed[:, :P].reshape(B, H, P)

    def _transformed(self, slots_space: Tensor, sq: Tensor, m2: Tensor) -> Tensor:
        """Clustering-space keys ``[G, n, D]`` -> MIPS-transformed ``[G, n, D + 1]`` under ``m2``."""
        if not self.transform:
            return slots_space
        return torch.cat([slots_space, (m2[:, None] - sq).clamp_min(0).sqrt()[..., None]], dim=-1)

    def _page_points(self) -> Tensor:
        """Page centroids in the (transformed) clustering space, ``[G, P, D(+1)]``."""
        st = self._state
        P = st.num_pages
        n = st.page_len[:, :P, None].clamp_min(1).float()
        cent = st.page_ssum[:, :P]
        if self.transform:
            cent = torch.cat([cent, st.page_extra[:, :P, None]], dim=-1)
        return cent / n

    def _assign(self, routed: Tensor, s0: int, changed: Tensor) -> Tensor:
        """Place new slots ``s0 + j`` (``routed`` ``[G, n]``) in pages with room.

        Each key's nearest page (clustering space) picks its cell; the key then goes to the nearest
        page *of that cell* with room (capacity-bounded assignment). Keys whose cell is full start new
        pages (:meth:`_new_leaves`). NOTE: a page's tokens never move (contents only grow), so storage
        appends to a page and never rewrites it for a split.
        """
        st, S = self._state, self.config.page_size
        G, n = routed.shape
        P = st.num_pages
        new = self._transformed(st.space[:, s0:s0 + n], st.space_sq[:, s0:s0 + n], st.m2)  # [G, n, Dt]
        cent = self._page_points()  # [G, P, Dt]
        dist = torch.baddbmm((cent * cent).sum(-1)[:, None], new, cent.transpose(1, 2), alpha=-2.0)
        lens = st.page_len[:, :P]
        dist = dist.masked_fill((lens == 0)[:, None], float("inf"))  # [G, n, P]
        cell = st.page_cell[:, :P].gather(1, dist.argmin(-1))  # [G, n]
        room = (min(S, self.insert_fill or S) - lens).clamp_min(0)
        allowed = (st.page_cell[:, None, :P] == cell[..., None]) & (room > 0)[:, None]
        spare = dist.masked_fill(~torch.isfinite(dist), 0).abs().amax() * 4 + 1  # worse than any page
        cost = torch.cat([dist.masked_fill(~allowed, float("inf")), spare.expand(G, n, 1)], dim=-1)
        cap = torch.cat([room, torch.full((G, 1), n, dtype=room.dtype, device=room.device)], dim=-1)
        dest_all = capacity_assign(cost, cap, routed)  # [G, n]; P = no room in the cell
        placed = routed & (dest_all < P)
        g, j = torch.nonzero(placed, as_tuple=True)
        dest = dest_all[g, j]
        _, rank = rank_within(g * P + dest, None, G * P)  # j ascends
        st.pages[g, dest, lens[g, dest] + rank] = s0 + j
        changed[g, dest] = True
        overflow = routed & (dest_all == P)
        if bool(overflow.any()):
            changed = self._new_leaves(overflow, s0, changed)
        else:
            gc, pc = torch.nonzero(changed, as_tuple=True)
            st.summarize(gc, pc)
        return changed

    def _new_leaves(self, fresh: Tensor, s0: int, changed: Tensor) -> Tensor:
        """New keys ``fresh`` ``[G, n]`` form pages of their own, each joining its nearest cell."""
        st, S = self._state, self.config.page_size
        G, n = fresh.shape
        m2 = torch.maximum(st.m2, st.space_sq[:, s0:s0 + n].masked_fill(~fresh, 0).amax(1))
        pts = self._transformed(st.space[:, s0:s0 + n], st.space_sq[:, s0:s0 + n], m2)
        C = max(1, math.ceil(int(fresh.sum(1).max()) / self.insert_leaf_tokens))
        # NOTE: seeded by the tokens inserted so far, not by slots: slots count the batch's padding
        self._inserted += n
        res = kmeans(pts, C, iters=self.iters, mask=fresh, capacity=S, balanced_iters=1,
                     generator=torch.Generator().manual_seed(self.config.seed + self._inserted),
                     row_keys=self._head_keys(*self._shape, fresh.device))
        g, j = torch.nonzero(fresh, as_tuple=True)
        leaf = res.assignments[g, j]
        used = torch.zeros(G, C, dtype=torch.bool, device=g.device)
        used[g, leaf] = True
        base = st.group_pages.clone()
        page = base[g] + used.long().cumsum(1)[g, leaf] - 1
        st.group_pages = st.group_pages + used.sum(1)
        st.reserve_pages(st.num_pages)
        changed = torch.cat([changed, torch.zeros(G, st.pages.shape[1] - changed.shape[1], dtype=torch.bool,
                                                  device=changed.device)], 1)
        _, rank = rank_within(g * st.pages.shape[1] + page, None, G * st.pages.shape[1])
        st.pages[g, page, rank] = s0 + j
        changed[g, page] = True
        # cell: the nearest cell centroid (clustering space) of each new page, by its members' mean
        cells = st.num_cells
        P = st.num_pages
        cell_sum = torch.zeros(G * cells, st.space.shape[-1], device=g.device)
        cell_cnt = torch.zeros(G * cells, device=g.device)
        pg, pp = torch.nonzero((st.page_cell[:, :P] >= 0) & (st.page_len[:, :P] > 0), as_tuple=True)
        key = pg * cells + st.page_cell[pg, pp]
        cell_sum.index_add_(0, key, st.page_ssum[pg, pp])
        cell_cnt.index_add_(0, key, st.page_len[pg, pp].float())
        cell_c = (cell_sum / cell_cnt.clamp_min(1)[:, None]).view(G, cells, st.space.shape[-1])
        leaf_mean = torch.zeros(G, C, st.space.shape[-1], device=g.device).index_put_(
            (g, leaf), st.space[g, s0 + j], accumulate=True)
        d = torch.cdist(leaf_mean, cell_c).masked_fill((cell_cnt.view(G, cells) == 0)[:, None], float("inf"))
        d = torch.where(torch.isinf(d).all(-1, keepdim=True), 0.0, d)
        best_cell = d.argmin(-1)  # [G, C]
        st.page_cell[g, page] = best_cell[g, leaf]
        gc, pc = torch.nonzero(changed, as_tuple=True)
        st.summarize(gc, pc)
        return changed

    # ------------------------------------------------------------------ query
    def _query(self, query: Tensor, max_tokens: int | Tensor, *, scale: float | None,
               resident_logits: Tensor | None) -> PageHits:
        st = self._require()
        B, H = self._shape
        D = st.keys.shape[-1]
        if query.dim() != 4 or query.shape[:2] != (B, H) or query.shape[-1] != D:
            raise TensorSpecError(f"query must be [{B}, {H}, G, {D}], got {tuple(query.shape)}")
        G, Gq = B * H, query.shape[2]
        dev = st.keys.device
        budget = as_budget(max_tokens, (B, H), dev).reshape(G)
        scale = D ** -0.5 if scale is None else float(scale)
        q = query.reshape(G, Gq, D).to(dev, torch.float32)
        P = st.num_pages
        if P == 0:
            none = torch.zeros(G, 0, dtype=torch.int64, device=dev)
            return self._hits(none, none.float(), none.bool())
        lens = st.page_len[:, :P]  # [G, P]
        if "page_cent" not in self._cache:
            n = lens.clamp_min(1)[..., None]
            self._cache["page_cent"] = st.page_sum[:, :P] / n
            self._cache["page_loglen"] = lens.clamp_min(1).float().log()
            self._cache["page_var"] = (st.page_sqsum[:, :P] / n - self._cache["page_cent"] ** 2).clamp_min(0)
        cent, loglen, var = self._cache["page_cent"], self._cache["page_loglen"], self._cache["page_var"]
        target = (self.candidates * budget.float()).ceil()  # [G] tokens to rescore
        cell_target = (self.cell_candidates * budget.float()).ceil()
        if st.num_cells > 1 and bool((cell_target < lens.sum(1)).any()):
            # NOTE: descend: only pages of the kept cells are scored at all, so the centroid scan
            # costs the kept tokens, not the context.
            keep = self._cells_kept(q, scale, cell_target)  # [G, P]
            width = max(1, int(keep.sum(1).max()))
            sub = keep.float().topk(width, dim=1, sorted=False).indices  # [G, K0] page ids
            sub_ok = keep.gather(1, sub) & (lens.gather(1, sub) > 0)
            rows = torch.arange(G, device=dev)
            # NOTE: whole rows through one flat index_select: gather with an index expanded over D
            # cost 5 ms of a 17 ms query at 128k on the CPU.
            cent_sub = st.gather_slots(cent, rows, sub)  # [G, K0, D]
            var_sub = st.gather_slots(var, rows, sub) if self.page_estimate == "gaussian" else var
            loglen_sub = loglen.gather(1, sub)
            bounded = self.bound_candidates > 0 and self.scoring == "exact"
            kmin = st.gather_slots(st.page_min, rows, sub) if bounded else None
            kmax = st.gather_slots(st.page_max, rows, sub) if bounded else None
        else:
            sub, sub_ok = torch.arange(P, device=dev).expand(G, P), lens > 0
            cent_sub, var_sub, loglen_sub = cent, var, loglen
            kmin, kmax = st.page_min[:, :P], st.page_max[:, :P]
        # log-mass estimate per head from the centroid: scale * q.c + log(len)
        coarse = scale * (q @ cent_sub.transpose(1, 2)) + loglen_sub[:, None]  # [G, Gq, K0]
        if self.page_estimate == "gaussian":
            # NOTE: + s^2/2 q^T diag(var) q, the log of E[exp(s q.k)] for Gaussian keys: a page whose
            # keys spread along q (one needle token among others) is not ranked by its mean alone.
            coarse = coarse + 0.5 * scale**2 * ((q * q) @ var_sub.transpose(1, 2))
        coarse = coarse.masked_fill(~sub_ok[:, None], float("-inf"))
        if self.scoring == "exact":
            forced = self._bound_pages(q, kmin, kmax, sub_ok) if self.bound_candidates > 0 else None
            cand, logmass = self._rescore(q, scale, coarse, target, sub, forced)
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
        merged = mass.sum(1) if self.gqa == "softmax-sum" else mass.amax(1)
        cand_lens = lens.gather(1, cand)
        ok = torch.isfinite(logmass).any(1) & (cand_lens > 0)
        density = (merged / cand_lens.clamp_min(1)).masked_fill(~ok, float("-inf"))
        order, taken = greedy_take(density, cand_lens, budget)
        return self._hits(cand.gather(1, order), density.gather(1, order), taken)

    def _cell_stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """Cached ``(mean [G, C, D], var [G, C, D], count [G, C])`` of each cell's raw keys, and the
        page -> flat cell key map; recomputed after a build or insert."""
        if "cell_mean" not in self._cache:
            st = self._state
            G, P, C = st.pages.shape[0], st.num_pages, st.num_cells
            D = st.keys.shape[-1]
            lens = st.page_len[:, :P]
            cellp = st.page_cell[:, :P].clamp_min(0)
            key = (torch.arange(G, device=lens.device)[:, None] * C + cellp).view(G * P)
            csum = torch.zeros(G * C, D, device=lens.device)
            csum.index_add_(0, key, st.page_sum[:, :P].reshape(G * P, D))
            csq = torch.zeros_like(csum).index_add_(0, key, st.page_sqsum[:, :P].reshape(G * P, D))
            ccnt = torch.zeros(G * C, device=lens.device).index_add_(0, key, lens.reshape(G * P).float())
            n = ccnt.clamp_min(1)[:, None]
            mean = csum / n
            self._cache["cell_mean"] = mean.view(G, C, D)
            self._cache["cell_var"] = (csq / n - mean * mean).clamp_min(0).view(G, C, D)
            self._cache["cell_count"] = ccnt.view(G, C)
            if self.bound_candidates > 0:
                used = (lens > 0).reshape(G * P)
                idx = key[used][:, None].expand(-1, D)
                inf = float("inf")
                cmin = torch.full((G * C, D), inf, device=lens.device).scatter_reduce_(
                    0, idx, st.page_min[:, :P].reshape(G * P, D)[used], reduce="amin")
                cmax = torch.full((G * C, D), -inf, device=lens.device).scatter_reduce_(
                    0, idx, st.page_max[:, :P].reshape(G * P, D)[used], reduce="amax")
                empty = (ccnt == 0)[:, None]
                self._cache["cell_min"] = cmin.masked_fill(empty, 0.0).view(G, C, D)
                self._cache["cell_max"] = cmax.masked_fill(empty, 0.0).view(G, C, D)
        return self._cache["cell_mean"], self._cache["cell_var"], self._cache["cell_count"]

    def _cells_kept(self, q: Tensor, scale: float, target: Tensor) -> Tensor:
        """Bool ``[G, P]``: pages whose cell is among the best cells holding ``target`` tokens.

        A cell's log-mass is estimated as if its keys were Gaussian (diagonal covariance):
        ``log n + s q.mu + s^2/2 sum_d q_d^2 var_d`` (the log of ``n E[exp(s q.k)]``).
        NOTE: a ball upper bound ``q.c + |q| r`` is far too loose in 64 dimensions to rank cells.
        """
        st = self._state
        P = st.num_pages
        mean, var, count = self._cell_stats()
        est = scale * (q @ mean.transpose(1, 2)) + 0.5 * scale**2 * ((q * q) @ var.transpose(1, 2))
        est = est + count[:, None].clamp_min(1).log()  # [G, Gq, C]
        est = torch.nan_to_num(est.softmax(-1), nan=0.0).sum(1).masked_fill(count == 0, -1.0)
        order = est.argsort(dim=-1, descending=True)
        ctok = count.gather(1, order)
        before = ctok.cumsum(1) - ctok
        keep_sorted = (before < target[:, None]) & (est.gather(1, order) >= 0)
        keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
        if self.bound_candidates > 0 and self.scoring == "exact":
            # each query head's best cells by the bound join: a needle's cell is diluted in the estimate
            keep |= self._bound_pages(q, self._cache["cell_min"], self._cache["cell_max"], count > 0)
        return keep.gather(1, st.page_cell[:, :P].clamp_min(0)) & (st.page_len[:, :P] > 0)

    def _bound_pages(self, q: Tensor, kmin: Tensor, kmax: Tensor, ok: Tensor) -> Tensor:
        """Bool ``[G, K0]``: each query head's ``bound_candidates`` pages (or cells) with the highest
        upper bound ``sum_d max(q_d min_d, q_d max_d)`` of ``q.k`` over their keys (``kmin``/``kmax``
        ``[G, K0, D]``; ``ok`` ``[G, K0]`` those that hold keys)."""
        bound = q.clamp_min(0) @ kmax.transpose(1, 2) + q.clamp_max(0) @ kmin.transpose(1, 2)  # [G, Gq, K0]
        bound = bound.masked_fill(~ok[:, None], float("-inf"))
        k = min(self.bound_candidates, bound.shape[-1])
        top = bound.topk(k, dim=-1).indices  # [G, Gq, k]
        forced = torch.zeros(ok.shape, dtype=torch.bool, device=ok.device)
        forced.scatter_(1, top.reshape(top.shape[0], -1), True)
        return forced & ok

    def _rescore(self, q: Tensor, scale: float, coarse: Tensor, target: Tensor,
                 sub: Tensor, forced: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact page log-masses (logsumexp of the page's key scores) of the best coarse pages covering
        ``target`` tokens, ``forced`` ``[G, K0]`` pages first. ``coarse`` ``[G, Gq, K0]`` scores the
        pages ``sub`` ``[G, K0]``. Returns ``(page ids [G, K'], log-mass [G, Gq, K'])``."""
        st = self._state
        G, Gq, _ = coarse.shape
        lens = st.page_len.gather(1, sub)  # [G, K0]
        share = torch.nan_to_num(coarse.softmax(-1), nan=0.0)  # [G, Gq, K0]
        est = share.sum(1) / lens.clamp_min(1)  # [G, K0]
        if self.candidate_order == "per-head":
            # NOTE: every query head gets its own best pages rescored, in turns (a page's priority is
            # its best rank over the heads; the merged share breaks ties): a head whose coarse scores
            # are flat (one needle key in a page of others) is not outvoted by a peaked head.
            by_head = coarse.argsort(dim=-1, descending=True)  # [G, Gq, K0]
            rank = torch.empty_like(by_head).scatter_(
                2, by_head, torch.arange(by_head.shape[-1], device=by_head.device).expand_as(by_head))
            best = rank.amin(1).float()  # [G, K0]
            est = est / (Gq + 1) - best  # NOTE: est / (Gq + 1) < 1 only orders pages of equal best rank
        est = est.masked_fill(~torch.isfinite(coarse).any(1), -float(coarse.shape[-1]) - 2)
        order = est.argsort(dim=-1, descending=True)
        if forced is not None:  # forced pages first, each group still in estimate order
            order = order.gather(1, (~forced.gather(1, order)).to(torch.uint8).argsort(dim=1, stable=True))
        ltok = lens.gather(1, order)
        before = ltok.cumsum(1) - ltok
        need = ((before < target[:, None]) & (est.gather(1, order) > -float(coarse.shape[-1]) - 1)).sum(1)
        taken = torch.arange(ltok.shape[1], device=q.device)[None] < need[:, None]
        filled = (ltok * taken).sum(1)  # filled slots of each row's candidates
        # NOTE: one host sync for both sizes (each costs a pipeline drain on a GPU)
        K, T = (max(1, int(v)) for v in torch.stack([need.max(), filled.max()]).tolist())
        cand = sub.gather(1, order[:, :K])  # [G, K] page ids
        slots = st.pages.gather(1, cand[..., None].expand(-1, -1, st.pages.shape[-1]))  # [G, K, S]
        S = slots.shape[-1]
        flat = slots.reshape(G, K * S)
        # NOTE: only the filled slots are read and scored (pages are about half full): the key
        # gather and the scoring are memory-bound and dominate the query at long context.
        used = flat >= 0
        pick = (~used).to(torch.uint8).argsort(dim=1, stable=True)[:, :T]  # [G, T] filled first
        packed = flat.gather(1, pick)
        keys = st.gather_slots(st.keys, torch.arange(G, device=q.device), packed)  # [G, T, D]
        scores = (scale * (q @ keys.transpose(1, 2))).masked_fill((packed < 0)[:, None], float("-inf"))
        s = torch.full((G, Gq, K * S), float("-inf"), device=q.device)
        s.scatter_(2, pick[:, None].expand(G, Gq, T), scores)
        logmass = s.view(G, Gq, K, S).logsumexp(-1)
        beyond = torch.arange(K, device=q.device)[None] >= need[:, None]
        return cand, logmass.masked_fill(beyond[:, None], float("-inf"))

    def _hits(self, pages: Tensor, scores: Tensor, taken: Tensor) -> PageHits:
        st = self._state
        B, H = self._shape
        G = B * H
        K = int(taken.sum(1).max()) if taken.numel() else 0
        first = taken.long().argsort(dim=1, descending=True, stable=True)[:, :K]  # taken pages first
        sel = taken.gather(1, first)
        page_ids = torch.where(sel, pages.gather(1, first), -1)
        page_scores = torch.where(sel, scores.gather(1, first), float("-inf"))
        lens = torch.where(sel, st.page_len.gather(1, page_ids.clamp_min(0)), 0)
        slots = st.pages.gather(1, page_ids.clamp_min(0)[..., None].expand(-1, -1, st.pages.shape[-1]))
        slots = torch.where(sel[..., None], slots, -1).reshape(G, K * slots.shape[-1])  # [G, K*S]
        tok = torch.where(slots >= 0, st.slot_token.gather(1, slots.clamp_min(0)), -1)
        T = int((tok >= 0).sum(1).max()) if tok.numel() else 0
        tok = tok.gather(1, (tok < 0).long().argsort(dim=1, stable=True)[:, :T])
        return PageHits(page_ids=page_ids.view(B, H, K), scores=page_scores.view(B, H, K),
                        page_lens=lens.view(B, H, K), num_tokens=lens.sum(1).view(B, H),
                        token_ids=tok.view(B, H, T))

    # ------------------------------------------------------------- accessors
    def _require(self) -> IndexState:
        if self._state is None:
            raise ConfigError("the index is empty: call build() before query(), layout or page_summaries()")
        return self._state

    @property
    def layout(self) -> PageLayout:
        st = self._require()
        B, H = self._shape
        P = st.num_pages
        slots = st.pages[:, :P]
        G = B * H
        tok = st.slot_token.gather(1, slots.clamp_min(0).reshape(G, P * slots.shape[-1])).view_as(slots)
        tok = torch.where(slots >= 0, tok, -1)
        return PageLayout(token_ids=tok.view(B, H, P, self.config.page_size))

    def page_summaries(self) -> PageSummaries:
        st = self._require()
        B, H = self._shape
        P = st.num_pages
        lens = st.page_len[:, :P]
        cent = st.page_sum[:, :P] / lens.clamp_min(1)[..., None]
        kmin, kmax, radius = st.bounds(P)
        D = st.keys.shape[-1]
        return PageSummaries(centroids=cent.view(B, H, P, D), key_min=kmin.view(B, H, P, D),
                             key_max=kmax.view(B, H, P, D), radius=radius.view(B, H, P),
                             lens=lens.view(B, H, P))

    @property
    def num_tokens(self) -> Tensor:
        st = self._require()
        B, H = self._shape
        return st.page_len.sum(1).view(B, H)

    @property
    def page_cells(self) -> Tensor:
        """int64 ``[B, H_kv, P]``: the upper-level cell of each page (``-1`` for padding pages)."""
        st = self._require()
        B, H = self._shape
        return st.page_cell[:, :st.num_pages].reshape(B, H, st.num_pages)
