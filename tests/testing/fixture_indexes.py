"""A page index written against the PageIndex protocol only (one correct, and broken variants).

``AppendIndex`` fills pages with indexed positions in arrival order (per row Python loops: a test
fixture) and ranks them by their best exact ``q . k``; each ``bug`` breaks one property.
"""

from __future__ import annotations

import torch
from attrs import define, field
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.index.base import PageHits, PageSummaries
from icecache.selectors.types import PageLayout


@define
class AppendIndex:
    config: CacheConfig
    bug: str | None = None
    name: str = "append"
    rows: list[list[list[int]]] = field(factory=list, init=False)  # [B*H][P] positions
    keys: dict[tuple[int, int], Tensor] = field(factory=dict, init=False)  # (row, position) -> key
    shape: tuple[int, int, int] = field(default=(0, 0, 0), init=False)

    def build(self, keys: Tensor, token_ids: Tensor | None = None) -> None:
        B, H, N, D = keys.shape
        self.shape, self.rows, self.keys = (B, H, D), [[] for _ in range(B * H)], {}
        self.insert(keys, torch.arange(N) if token_ids is None else token_ids)

    def insert(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        B, H, n, D = keys.shape
        ids = token_ids.expand(B, H, n) if token_ids.dim() == 1 else token_ids
        before = [[list(p) for p in row] for row in self.rows]
        S = self.config.page_size
        for r in range(B * H):
            b, h = divmod(r, H)
            for j in range(n):
                t = int(ids[b, h, j])
                if t < 0:
                    continue
                self.keys[(r, t)] = keys[b, h, j].float()
                pages = self.rows[r]
                if pages and len(pages[-1]) < S:
                    pages[-1].append(t)
                else:
                    pages.append([t])
                    if self.bug == "two-leaves":
                        pages.append([t])  # the new page's first token also starts a second page
            if self.bug == "unstable-ids" and len(self.rows[r]) > 1:
                self.rows[r].reverse()
        P = self.num_pages
        changed = torch.zeros(B, H, P, dtype=torch.bool)
        for r in range(B * H):
            for p, page in enumerate(self.rows[r]):
                old = before[r][p] if p < len(before[r]) else []
                changed[r // H, r % H, p] = page != old and self.bug != "no-changed-flags"
        return changed

    @property
    def num_pages(self) -> int:
        return max((len(r) for r in self.rows), default=0)

    @property
    def layout(self) -> PageLayout:
        B, H, _ = self.shape
        ids = torch.full((B, H, self.num_pages, self.config.page_size), -1, dtype=torch.int64)
        for r, pages in enumerate(self.rows):
            for p, page in enumerate(pages):
                ids[r // H, r % H, p, : len(page)] = torch.tensor(page)
        return PageLayout(token_ids=ids)

    @property
    def num_tokens(self) -> Tensor:
        B, H, _ = self.shape
        counts = [sum(len(p) for p in pages) for pages in self.rows]
        return torch.tensor(counts, dtype=torch.int64).reshape(B, H)

    def page_summaries(self) -> PageSummaries:
        B, H, D = self.shape
        P = self.num_pages
        cent, kmin, kmax = (torch.zeros(B, H, P, D) for _ in range(3))
        rad, lens = torch.zeros(B, H, P), torch.zeros(B, H, P, dtype=torch.int64)
        for r, pages in enumerate(self.rows):
            for p, page in enumerate(pages):
                k = torch.stack([self.keys[(r, t)] for t in page])
                c = k.mean(0)
                idx = (r // H, r % H, p)
                cent[idx], kmin[idx], kmax[idx] = c, k.amin(0), k.amax(0)
                rad[idx], lens[idx] = (k - c).norm(dim=-1).amax(), len(page)
        if self.bug == "stale-summaries":
            cent = cent * 0.5
        return PageSummaries(centroids=cent, key_min=kmin, key_max=kmax, radius=rad, lens=lens)

    def query(self, query: Tensor, max_tokens: int | Tensor, *, scale: float | None = None) -> PageHits:
        B, H, G, D = query.shape
        budget = torch.as_tensor(max_tokens, dtype=torch.int64).expand(B, H)
        out_ids, out_scores, out_lens, out_toks = [], [], [], []
        for r, pages in enumerate(self.rows):
            b, h = divmod(r, H)
            scored = []
            for p, page in enumerate(pages):
                k = torch.stack([self.keys[(r, t)] for t in page])  # [n, D]
                scored.append((float((query[b, h].float() @ k.T).amax()), p))
            scored.sort(key=lambda s: -s[0])
            left, chosen = int(budget[b, h]), []
            for s, p in scored:
                if len(pages[p]) <= left or self.bug == "over-budget":
                    chosen.append((s, p))
                    left -= len(pages[p])
            out_ids.append([p for _, p in chosen])
            out_scores.append([s for s, _ in chosen])
            out_lens.append([len(pages[p]) for _, p in chosen])
            out_toks.append([t for _, p in chosen for t in pages[p]])
        K = max(1, max(len(x) for x in out_ids))
        T = max(1, max(len(x) for x in out_toks))
        ids = torch.full((B * H, K), -1, dtype=torch.int64)
        scores = torch.full((B * H, K), float("-inf"))
        lens = torch.zeros(B * H, K, dtype=torch.int64)
        toks = torch.full((B * H, T), -1, dtype=torch.int64)
        for r in range(B * H):
            k = len(out_ids[r])
            ids[r, :k] = torch.tensor(out_ids[r], dtype=torch.int64)
            scores[r, :k] = torch.tensor(out_scores[r])
            lens[r, :k] = torch.tensor(out_lens[r], dtype=torch.int64)
            toks[r, : len(out_toks[r])] = torch.tensor(out_toks[r], dtype=torch.int64)
        return PageHits(page_ids=ids.reshape(B, H, K), scores=scores.reshape(B, H, K),
                        page_lens=lens.reshape(B, H, K), num_tokens=lens.sum(-1).reshape(B, H),
                        token_ids=toks.reshape(B, H, T))


#: bug -> the property the suite reports
BROKEN_INDEXES = {
    "two-leaves": "layout",
    "unstable-ids": "insert",
    "no-changed-flags": "insert",
    "stale-summaries": "summaries",
    "over-budget": "query",
}
