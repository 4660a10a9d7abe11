"""Prioritized DCI tree as a page index: the authors' multi-level search, kept as a reference.

Per (batch row, KV head) a tree over MIPS-transformed keys (:mod:`icecache.index.transform`):
level 0 holds every key; each key is promoted to the next level with a small probability
(``promote``, their code: 0.03 then 0.2) and every key links to its nearest key one level up.
Pages (leaves) are the children of a level-1 key, nearest first, in chunks of ``page_size``.

A query descends level by level: on each level a Prioritized DCI search (:func:`dci_search`) over the
children of the previous level's "field of view" (``max(1.5e-3 * N, 30)`` nearest, their default)
finds the nearest keys; at level 0 the pages holding the nearest keys win. Each query head searches
separately; the per-head results are merged per KV head like the hierarchy index (softmax of exact
scores over found keys, summed over the group's heads, ranked per token). Pages no search reached
rank after every found page, by centroid score, so a generous budget still fills.

Slow by design (Python loops per head and query, heapq): it exists to compare against the
vectorized :class:`~icecache.index.hierarchy.index.HierarchyIndex`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from attrs import define, field
from attrs.validators import instance_of
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, TensorSpecError
from icecache.core.validators import positive
from icecache.index.base import PageHits, PageSummaries
from icecache.index.budget import as_budget, greedy_take
from icecache.index.dci.search import dci_search
from icecache.index.hierarchy.index import check_keys, normalize_token_ids
from icecache.index.summaries import hits_from_layout, summarize_layout
from icecache.selectors.types import PageLayout


def _promote_validator(instance, attribute, value) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, float) and 0.0 < p <= 1.0 for p in value):
        raise ConfigError(f"promote must be a tuple of probabilities in (0, 1], got {value!r}")


@define
class _Tree:
    """One (batch row, KV head). Points are numbered in insertion order; ``level[p]`` is the highest
    level of point ``p``; ``parent[l][p]`` its nearest point on level ``l + 1``."""

    dim: int
    keys: list[np.ndarray] = field(factory=list)
    tokens: list[int] = field(factory=list)
    level: list[int] = field(factory=list)
    parent: list[dict[int, int]] = field(factory=list)
    children: list[dict[int, list[int]]] = field(factory=list)
    pages: list[list[int]] = field(factory=list)  # point ids per page
    parent_pages: dict[int, list[int]] = field(factory=dict)  # level-1 point -> its page ids
    members: list[list[int]] = field(factory=list)  # members[l]: points on level l (and above)
    m2: float = 0.0
    t: np.ndarray | None = None  # [n, D+1] transformed keys
    proj: np.ndarray | None = None  # [n, L*m]


@define
class PrioritizedDCIIndex:
    """Multi-level Prioritized DCI over transformed keys; leaves are pages. See the module docstring.

    Options: ``num_simple`` (m) and ``num_composite`` (L) random directions per composite index,
    ``promote`` per-level promotion probabilities (default ``(2 / page_size, 0.2)``; the authors'
    code uses ``(0.03, 0.2)``), ``field_of_view`` (None: ``max(1.5e-3 N, 30)``), ``candidates``
    (found keys per query head, as a multiple of ``max_tokens``), ``max_visits`` (pops per search)
    and ``probe`` (true distances computed per search), both as multiples of its ``k``.
    """

    config: CacheConfig = field(validator=instance_of(CacheConfig))
    num_simple: int = field(default=1, validator=positive)
    num_composite: int = field(default=1, validator=positive)
    promote: tuple[float, ...] = field(converter=lambda v: tuple(float(x) for x in v),
                                       validator=_promote_validator)
    field_of_view: int | None = field(default=None)
    candidates: float = field(default=1.0)
    max_visits: int = field(default=20, validator=positive)
    probe: float = field(default=8.0)
    seed: int | None = field(default=None)
    name: str = field(default="dci", init=False)

    @promote.default
    def _promote_default(self) -> tuple[float, ...]:
        # NOTE: 2/page_size makes a level-1 key parent ~page_size/2 keys: one half-filled page, like the
        # hierarchy's leaves. The authors' (0.03, 0.2) gives ~33 children per parent, cut into pages in
        # order of distance to the parent: measured ~0.2 lower attention recall on clustered keys.
        return (min(1.0, 2.0 / self.config.page_size), 0.2)
    _trees: list[_Tree] = field(factory=list, init=False, repr=False)
    _shape: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _dirs: list[np.ndarray] = field(factory=list, init=False, repr=False)
    _rngs: list[np.random.Generator] = field(factory=list, init=False, repr=False)
    _device: torch.device = field(default=torch.device("cpu"), init=False, repr=False)

    # ---------------------------------------------------------------- build
    def build(self, keys: Tensor, token_ids: Tensor | None = None) -> None:
        check_keys(keys)
        B, H, N, D = keys.shape
        tok = normalize_token_ids(token_ids, B, H, N, keys.device).cpu().numpy()
        x = keys.reshape(B * H, N, D).detach().to("cpu", torch.float64).numpy()
        self._shape, self._device = (B, H), keys.device
        seed = self.config.seed if self.seed is None else self.seed
        self._rngs = [np.random.default_rng([seed, g]) for g in range(B * H)]
        dirs = self.num_simple * self.num_composite
        self._dirs = []
        for rng in self._rngs:
            u = rng.standard_normal((D + 1, dirs))
            self._dirs.append(u / np.linalg.norm(u, axis=0, keepdims=True))
        self._trees = [_Tree(dim=D) for _ in range(B * H)]
        for g in range(B * H):
            keep = tok[g] >= 0
            self._add_points(g, x[g][keep], tok[g][keep])

    def _transform(self, tree: _Tree, g: int) -> None:
        k = np.asarray(tree.keys).reshape(len(tree.keys), tree.dim)
        extra = np.sqrt(np.clip(tree.m2 - (k * k).sum(1), 0.0, None))
        tree.t = np.concatenate([k, extra[:, None]], axis=1)
        tree.proj = tree.t @ self._dirs[g]

    def _add_points(self, g: int, keys: np.ndarray, tokens: np.ndarray) -> set[int]:
        """Add points one by one (promotion, parent links, pages); returns touched page ids."""
        tree, rng = self._trees[g], self._rngs[g]
        touched: set[int] = set()
        if len(keys) == 0:
            return touched
        start = len(tree.keys)
        tree.keys.extend(keys)
        tree.tokens.extend(int(t) for t in tokens)
        tree.m2 = max(tree.m2, float((keys * keys).sum(1).max()))
        self._transform(tree, g)  # NOTE: M may have grown: every transformed key changes
        levels = len(self.promote) + 1
        while len(tree.parent) < levels - 1:
            tree.parent.append({})
            tree.children.append({})
        while len(tree.members) < levels:
            tree.members.append([])
        for p in range(start, len(tree.keys)):
            lvl = 0
            while lvl < levels - 1 and rng.random() < self.promote[lvl]:
                lvl += 1
            if not tree.members[1] and lvl == 0:
                lvl = 1  # NOTE: the first point always opens level 1 so every key has a page parent
            tree.level.append(lvl)
            for below in range(lvl + 1):
                tree.members[below].append(p)
                if below >= 1 and len(tree.members[below]) == 1:
                    # NOTE: p opens level `below`: adopt the points below that had no parent yet
                    for q in tree.members[below - 1]:
                        if q not in tree.parent[below - 1]:
                            tree.parent[below - 1][q] = p
                            tree.children[below - 1].setdefault(p, []).append(q)
            # a point on level l is its own parent on every level below l
            for below in range(lvl):
                tree.parent[below][p] = p
                tree.children[below].setdefault(p, []).append(p)
            if lvl < levels - 1 and tree.members[lvl + 1]:
                self._link(tree, p, lvl)
            touched.add(self._page_for(tree, p))
        return touched

    def _link(self, tree: _Tree, p: int, lvl: int) -> None:
        """Link point ``p`` (top level ``lvl``) to its nearest point on level ``lvl + 1``."""
        ups = tree.members[lvl + 1]
        d = ((tree.t[ups] - tree.t[p]) ** 2).sum(1)
        best = ups[int(np.argmin(d))]
        tree.parent[lvl][p] = best
        tree.children[lvl].setdefault(best, []).append(p)

    def _page_for(self, tree: _Tree, p: int) -> int:
        """Put point ``p`` in a page of its level-1 parent (a new page when the last one is full)."""
        par = tree.parent[0][p]
        own = tree.parent_pages.setdefault(par, [])
        if not own or len(tree.pages[own[-1]]) >= self.config.page_size:
            own.append(len(tree.pages))
            tree.pages.append([])
        tree.pages[own[-1]].append(p)
        return own[-1]

    # ---------------------------------------------------------------- insert
    def insert(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        check_keys(keys)
        B, H, n, D = keys.shape
        if self._shape is None:
            self.build(keys[:, :, :0], torch.zeros(B, H, 0, dtype=torch.int64, device=keys.device))
        if (B, H) != self._shape:
            raise TensorSpecError(f"insert keys {tuple(keys.shape)} do not match the index's [B, H_kv] "
                                  f"{list(self._shape)}")
        tok = normalize_token_ids(token_ids, B, H, n, keys.device).cpu().numpy()
        x = keys.reshape(B * H, n, D).detach().to("cpu", torch.float64).numpy()
        touched = []
        for g in range(B * H):
            keep = tok[g] >= 0
            touched.append(self._add_points(g, x[g][keep], tok[g][keep]))
        P = self._num_pages()
        changed = torch.zeros(B * H, P, dtype=torch.bool)
        for g, pages in enumerate(touched):
            if pages:
                changed[g, list(pages)] = True
        return changed.view(B, H, P).to(self._device)

    # ----------------------------------------------------------------- query
    def query(self, query: Tensor, max_tokens: int | Tensor, *, scale: float | None = None) -> PageHits:
        if self._shape is None:
            raise ConfigError("the index is empty: call build() before query()")
        B, H = self._shape
        if query.dim() != 4 or query.shape[:2] != (B, H):
            raise TensorSpecError(f"query must be [{B}, {H}, G, D], got {tuple(query.shape)}")
        D = query.shape[-1]
        scale = D ** -0.5 if scale is None else float(scale)
        budget = as_budget(max_tokens, (B, H), torch.device("cpu")).reshape(B * H)
        layout = self.layout.token_ids.cpu()
        P = layout.shape[2]
        layout = layout.reshape(B * H, P, self.config.page_size)
        q = query.reshape(B * H, query.shape[2], D).detach().to("cpu", torch.float64).numpy()
        scores = torch.full((B * H, P), float("-inf"), dtype=torch.float64)
        for g, tree in enumerate(self._trees):
            if tree.pages:
                scores[g, :len(tree.pages)] = torch.from_numpy(self._score_pages(g, q[g], scale,
                                                                                 int(budget[g])))
        lens = (layout >= 0).sum(-1)
        order, taken = greedy_take(scores.float(), lens, budget)
        return hits_from_layout(layout, order, scores.float().gather(1, order), taken, (B, H), self._device)

    def _score_pages(self, g: int, q: np.ndarray, scale: float, budget: int) -> np.ndarray:
        """Scores of group ``g``'s pages for its query heads ``q`` ``[Gq, D]``: found pages get their
        merged mass per token in ``[0, 1]``, the others ``-2 + centroid mass per token``."""
        tree = self._trees[g]
        n, P = len(tree.keys), len(tree.pages)
        keys = np.asarray(tree.keys)
        point_page = np.empty(n, dtype=np.int64)
        for pid, members in enumerate(tree.pages):
            point_page[members] = pid
        lens = np.array([len(m) for m in tree.pages], dtype=np.float64)
        fov = self.field_of_view or max(math.ceil(1.5e-3 * n), 30)
        k = max(fov, math.ceil(self.candidates * budget))
        mass = np.zeros(P)
        cent_mass = np.zeros(P)
        for qh in q:
            found = self._search(tree, g, qh, fov, k)
            if len(found):
                s = scale * keys[found] @ qh
                w = np.exp(s - s.max())
                np.add.at(mass, point_page[found], w / w.sum())
            cent = np.stack([keys[m].mean(0) for m in tree.pages])
            cs = scale * cent @ qh + np.log(lens)
            cw = np.exp(cs - cs.max())
            cent_mass += cw / cw.sum()
        found_pages = mass > 0
        Gq = max(len(q), 1)
        return np.where(found_pages, mass / Gq / lens, -2.0 + cent_mass / Gq / lens)

    def _search(self, tree: _Tree, g: int, qh: np.ndarray, fov: int, k: int) -> np.ndarray:
        """Descend the levels with Prioritized DCI; return the ``k`` nearest level-0 points found."""
        tq = np.concatenate([qh / max(np.linalg.norm(qh), 1e-12), [0.0]])
        qproj = tq @ self._dirs[g]
        top = max(lvl for lvl, pts in enumerate(tree.members) if pts)
        cands = np.array(tree.members[top], dtype=np.int64)
        for lvl in range(top, -1, -1):
            want = k if lvl == 0 else fov
            idx, _ = dci_search(tree.t[cands], tree.proj[cands], tq, qproj, k=want,
                                num_simple=self.num_simple, max_visits=self.max_visits * want,
                                max_candidates=math.ceil(self.probe * want))
            found = cands[idx]
            if lvl == 0:
                return found
            kids = [c for p in found.tolist() for c in tree.children[lvl - 1].get(p, [])]
            cands = np.unique(np.array(kids, dtype=np.int64))
        return np.zeros(0, dtype=np.int64)  # pragma: no cover - the loop always returns at level 0

    # ------------------------------------------------------------- accessors
    def _num_pages(self) -> int:
        return max((len(t.pages) for t in self._trees), default=0)

    @property
    def layout(self) -> PageLayout:
        if self._shape is None:
            raise ConfigError("the index is empty: call build() first")
        B, H = self._shape
        S, P = self.config.page_size, self._num_pages()
        ids = torch.full((B * H, P, S), -1, dtype=torch.int64)
        for g, tree in enumerate(self._trees):
            for pid, members in enumerate(tree.pages):
                ids[g, pid, :len(members)] = torch.tensor([tree.tokens[m] for m in members])
        return PageLayout(token_ids=ids.view(B, H, P, S).to(self._device))

    def page_summaries(self) -> PageSummaries:
        if self._shape is None:
            raise ConfigError("the index is empty: call build() first")
        B, H = self._shape
        D = self._trees[0].dim
        layout = self.layout.token_ids.cpu()
        P = layout.shape[2]
        members = torch.full((B * H, P, self.config.page_size, D), 0.0)
        for g, tree in enumerate(self._trees):
            for pid, pts in enumerate(tree.pages):
                members[g, pid, :len(pts)] = torch.from_numpy(np.asarray([tree.keys[m] for m in pts])).float()
        S = self.config.page_size
        return summarize_layout(members.view(B, H, P, S, D), layout >= 0, self._device)

    @property
    def num_tokens(self) -> Tensor:
        if self._shape is None:
            raise ConfigError("the index is empty: call build() first")
        B, H = self._shape
        return torch.tensor([len(t.keys) for t in self._trees], dtype=torch.int64).view(B, H).to(self._device)
