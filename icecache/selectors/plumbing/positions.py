"""Where each token position of a layer stands: padding, sink, paged, or recent window.

Rows of a batch share the position axis (left padding): row ``b`` holds real tokens at positions
``start[b] .. n-1``. For every row:

* **sinks**: the first ``sink_tokens`` real positions, ``[start, start + sink)``;
* **paged**: ``[start + sink, paged_end)``, each token in exactly one page of the layout;
* **window**: ``[max(paged_end, start + sink), n)``, the most recent tokens, always attended.

``paged_end`` is shared by all rows. After prefill the window holds the last ``window_tokens``
positions; each ``append`` grows it, and once it holds ``window_tokens + flush_tokens`` tokens the
oldest ``flush_tokens`` (a page's worth by default) move into pages. The window therefore holds
between ``window_tokens`` and ``window_tokens + flush_tokens - 1`` tokens, all counted in the ledger.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from attrs import define, field
from torch import Tensor


@define
class Positions:
    """Position bookkeeping of one layer, identical for every KV head.

    ``start``: int64 ``[B]``; ``n``: positions so far; ``paged_end``: first unpaged position.
    """

    start: Tensor
    n: int
    paged_end: int
    sink_tokens: int
    window_tokens: int
    flush_tokens: int
    #: what the id and count methods returned, by name, for the ``(n, paged_end)`` they were made at
    _memo: dict[str, tuple[tuple[int, int], Tensor]] = field(factory=dict, init=False, repr=False, eq=False)

    def _cached(self, name: str, make: Callable[[], Tensor]) -> Tensor:
        """``make()``, once per ``(n, paged_end)``. NOTE: every selector asks for the same counts and ids
        several times a step (budget, ledger, resident logits, assembly); callers never write into them."""
        stamp = (self.n, self.paged_end)
        hit = self._memo.get(name)
        if hit is None or hit[0] != stamp:
            hit = self._memo[name] = (stamp, make())
        return hit[1]

    @classmethod
    def after_prefill(
        cls, start: Tensor, n: int, *, sink_tokens: int, window_tokens: int, flush_tokens: int
    ) -> Positions:
        return cls(
            start=start,
            n=n,
            paged_end=max(0, n - window_tokens),
            sink_tokens=sink_tokens,
            window_tokens=window_tokens,
            flush_tokens=flush_tokens,
        )

    @property
    def first_unsunk(self) -> Tensor:
        """int64 ``[B]``: first position after each row's sinks (clipped to ``n``)."""
        return (self.start + self.sink_tokens).clamp(max=self.n)

    def sink_ids(self) -> Tensor:
        """int64 ``[B, sink_tokens]`` sink positions, ``-1`` where a row has fewer real tokens."""
        def make() -> Tensor:
            ids = self.start[:, None] + torch.arange(self.sink_tokens, device=self.start.device)
            return torch.where(ids < self.n, ids, -1)
        return self._cached("sink_ids", make)

    def window_ids(self) -> Tensor:
        """int64 ``[B, n - paged_end]`` window positions, ``-1`` at sinks and padding."""
        def make() -> Tensor:
            ids = torch.arange(self.paged_end, self.n, device=self.start.device)
            ids = ids.expand(self.start.shape[0], -1)
            return torch.where(ids >= self.first_unsunk[:, None], ids, -1)
        return self._cached("window_ids", make)

    def resident_ids(self) -> Tensor:
        """int64 ``[B, sink_tokens + n - paged_end]``: :meth:`sink_ids` then :meth:`window_ids`."""
        return self._cached("resident_ids", lambda: torch.cat([self.sink_ids(), self.window_ids()], dim=1))

    def sink_count(self) -> Tensor:
        """int64 ``[B]``."""
        return self._cached("sink_count", lambda: (self.n - self.start).clamp(min=0, max=self.sink_tokens))

    def window_count(self) -> Tensor:
        """int64 ``[B]``."""
        return self._cached("window_count", lambda: (
            self.n - torch.clamp(self.first_unsunk, min=self.paged_end)).clamp(min=0))

    def paged_ids(self, lo: int, hi: int) -> Tensor:
        """int64 ``[B, hi - lo]``: positions ``lo..hi-1``, ``-1`` where not a paged token of the row."""
        ids = torch.arange(lo, hi, device=self.start.device).expand(self.start.shape[0], -1)
        ok = (ids >= self.first_unsunk[:, None]) & (ids < self.paged_end)
        return torch.where(ok, ids, -1)

    def paged_mask(self) -> Tensor:
        """bool ``[B, n]``: True at paged positions."""
        pos = torch.arange(self.n, device=self.start.device)
        return (pos >= self.first_unsunk[:, None]) & (pos < self.paged_end)

    def real_mask(self) -> Tensor:
        """bool ``[B, n]``: True at non-padding positions."""
        return torch.arange(self.n, device=self.start.device) >= self.start[:, None]

    def advance(self, count: int) -> tuple[int, int]:
        """Add ``count`` positions; return the range ``[lo, hi)`` that moves from window into pages."""
        self.n += count
        lo = self.paged_end
        overflow = self.n - lo - self.window_tokens
        if overflow >= self.flush_tokens:
            self.paged_end = lo + (overflow // self.flush_tokens) * self.flush_tokens
        return lo, self.paged_end
