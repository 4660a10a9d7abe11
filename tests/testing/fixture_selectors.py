"""Small selectors written against the Selector protocol only: one correct, and broken variants.

The correct one (``ExactPagesSelector``) proves the suite accepts a conforming component that does
not use the project's base classes; each ``BROKEN`` variant breaks one property the suite must catch.
"""

from __future__ import annotations

import torch
from attrs import define, field
from torch import Tensor

from icecache.core.budget import BudgetLedger
from icecache.core.config import CacheConfig
from icecache.selectors.types import PageLayout, Selection


@define
class ExactPagesSelector:
    """Sinks + recent window + position-contiguous pages ranked by their best exact ``q . k``.

    Test fixture: per-row Python loops are fine here. ``bug`` names a deliberate contract break.
    """

    config: CacheConfig
    bug: str | None = None
    name: str = "exact-pages"
    keys: Tensor | None = field(default=None, init=False)
    start: Tensor | None = field(default=None, init=False)
    calls: int = field(default=0, init=False)
    dropped: int = field(default=0, init=False)

    @property
    def evicts(self) -> bool:
        return self.bug == "attends-evicted"

    def evictions(self) -> Tensor | None:
        """(``attends-evicted`` only) claims to evict one more paged token of each row per call, but keeps
        attending it."""
        B, H = self.keys.shape[:2]
        out = torch.full((B, H, 1), -1, dtype=torch.int64)
        for b in range(B):
            body = [t for page in self._parts(b)[2] for t in page]
            if self.dropped < len(body):
                out[b, :, 0] = body[self.dropped]
        self.dropped += 1
        return out

    def prefill(self, keys: Tensor, *, start: Tensor | None = None) -> None:
        self.keys = keys
        self.start = torch.zeros(keys.shape[0], dtype=torch.int64) if start is None else start.long()

    def append(self, keys: Tensor) -> None:
        if self.bug == "append-drops":
            return
        self.keys = torch.cat([self.keys, keys], dim=2)

    def _parts(self, b: int) -> tuple[list[int], list[int], list[list[int]]]:
        c, N = self.config, self.keys.shape[2]
        s0 = int(self.start[b])
        sinks = list(range(s0, min(N, s0 + c.sink_tokens)))
        w0 = max(s0 + len(sinks), N - c.window_tokens)
        window = list(range(w0, N))
        body = list(range(s0 + len(sinks), w0))
        if self.bug == "pages-include-padding" and s0 > 0:
            body = [s0 - 1] + body
        S = c.page_size
        pages = [body[i: i + S] for i in range(0, len(body), S)]
        return sinks, window, pages

    @property
    def layout(self) -> PageLayout:
        B, H = self.keys.shape[:2]
        rows = [self._parts(b)[2] for b in range(B)]
        P = max((len(r) for r in rows), default=0)
        ids = torch.full((B, H, P, self.config.page_size), -1, dtype=torch.int64)
        for b, pages in enumerate(rows):
            for p, toks in enumerate(pages):
                ids[b, :, p, : len(toks)] = torch.tensor(toks)
        return PageLayout(token_ids=ids)

    def select(self, query: Tensor) -> Selection:
        self.calls += 1
        c = self.config
        B, H, N, _ = self.keys.shape
        G = query.shape[1] // H
        q = query.reshape(B, H, G, -1)  # [B, H_kv, G, D]
        scores = torch.einsum("bhgd,bhnd->bhgn", q.float(), self.keys.float()).amax(dim=2)  # [B, H, N]
        if self.bug == "nondeterministic":
            scores = scores + torch.randn(scores.shape) * 100
        rows, page_rows, counts = [], [], {k: torch.zeros(B, H, dtype=torch.int64) for k in ("s", "w", "p")}
        for b in range(B):
            sinks, window, pages = self._parts(b)
            for h in range(H):
                room = c.budget - len(sinks) - len(window)
                order = sorted(range(len(pages)), key=lambda p: -float(scores[b, h, pages[p]].max()))
                chosen, taken = [], 0
                for p in order:
                    if taken + len(pages[p]) <= room or self.bug in ("over-budget", "over-budget-checked"):
                        chosen.append(p)
                        taken += len(pages[p])
                toks = sinks + window + [t for p in chosen for t in pages[p]]
                if self.bug == "empty":
                    toks, chosen, taken, sw = [], [], 0, (0, 0)
                else:
                    sw = (len(sinks), len(window))
                if self.bug == "attends-padding" and int(self.start[b]) > 0:
                    toks = toks + [0]
                if self.bug == "skips-newest" and N - 1 in window:
                    toks.remove(N - 1)
                    sw = (sw[0], sw[1] - 1)
                rows.append(toks)
                page_rows.append(chosen)
                counts["s"][b, h], counts["w"][b, h], counts["p"][b, h] = sw[0], sw[1], taken
        T = max(1, max(len(r) for r in rows))
        K = max(0, max(len(r) for r in page_rows))
        token_ids = torch.full((B * H, T), -1, dtype=torch.int64)
        page_ids = torch.full((B * H, K), -1, dtype=torch.int64)
        for i, (r, pr) in enumerate(zip(rows, page_rows, strict=True)):
            token_ids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
            page_ids[i, : len(pr)] = torch.tensor(pr, dtype=torch.int64)
        selected = counts["p"]
        if self.bug == "ledger-lies":
            selected = torch.clamp(selected - 1, min=0)
        if self.bug in ("empty", "over-budget"):
            # NOTE: a selector that skips the ledger's own guard (building it unchecked)
            ledger = object.__new__(BudgetLedger)
            for k, v in dict(budget=c.budget, sink=counts["s"], window=counts["w"], selected=selected,
                             extra=torch.zeros(B, H, dtype=torch.int64), dense=False).items():
                object.__setattr__(ledger, k, v)
        else:
            ledger = BudgetLedger(budget=c.budget, sink=counts["s"], window=counts["w"], selected=selected)
        return Selection(token_ids=token_ids.reshape(B, H, T), page_ids=page_ids.reshape(B, H, K),
                         ledger=ledger)


#: bug -> the property (or set of properties) the suite reports ("no-error": a call raised)
BROKEN = {
    "over-budget": "budget",           # takes every page, ledger built without its guard
    "over-budget-checked": "no-error",  # takes every page; its honest ledger raises BudgetError in select()
    "ledger-lies": "ledger",           # reports one token fewer than it attends
    "empty": "not-empty",             # attends nothing (ledger built without its guard)
    "attends-padding": "left-padding",
    "pages-include-padding": {"pages", "left-padding"},  # a selected page leaks padding in
    "skips-newest": "sinks-recent",
    "nondeterministic": "deterministic",
    "append-drops": {"sinks-recent", "attends-all"},  # ignores appends: the newest position is never attended
    "attends-evicted": "evictions",  # reports evicted tokens it still attends
}
