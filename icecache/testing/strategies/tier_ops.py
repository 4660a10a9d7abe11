"""Strategies for protocol-valid operation sequences on a tier, and a driver that applies them.

:func:`tier_operations` draws a list of :class:`TierOp` that keeps the two-phase protocol of
:class:`icecache.storage.base.Tier` (a page is completed only after it was prepared, unpinned only
after it was pinned, freed only when ready and not in flight, stores stay within ``capacity``), so a
property test can drive any tier through realistic histories and check its own invariants;
:func:`apply_tier_ops` runs them and returns what each page should hold. For the full contract with
a model and failing calls, use :func:`icecache.testing.conformance.check_tier`.
"""

# ruff: noqa: B008
# NOTE: strategies are immutable, so they are safe (and idiomatic) as parameter defaults.
from __future__ import annotations

from typing import Any

import torch
from attrs import frozen
from hypothesis import strategies as st
from torch import Tensor

from icecache.storage.layout import PageSpec

#: operation kinds, in the order a page goes through them
TIER_OP_KINDS = ("store", "complete_store", "load", "complete_load", "touch", "evict", "free")


@frozen
class TierOp:
    """One protocol call: ``kind`` on ``ids`` (``evict`` uses ``count``; ``complete_store`` uses
    ``success``). ``store`` means ``prepare_store`` + ``write`` (records are the caller's)."""

    kind: str
    ids: tuple[int, ...] = ()
    count: int = 0
    success: bool = True

    def __repr__(self) -> str:
        extra = f", count={self.count}" if self.kind == "evict" else (
            ", success=False" if not self.success else "")
        return f"{self.kind}({list(self.ids)}{extra})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # NOTE: hypothesis pretty-prints attrs by fields
        p.text(repr(self))


@st.composite
def tier_operations(draw: Any, *, max_id: int = 12, max_ops: int = 30, capacity: int | None = None,
                    ) -> list[TierOp]:
    """A protocol-valid sequence of up to ``max_ops`` :class:`TierOp` over page ids ``[0, max_id)``.

    ``capacity``: the tier's capacity (stores never exceed it; ``evict`` ops make room). Evictions
    are by count, so which pages they drop is the tier's choice: :func:`apply_tier_ops` follows it.
    """
    ready: set[int] = set()
    maybe: set[int] = set()  # pages an evict may or may not have dropped (the tier chose)
    storing: dict[int, bool] = {}  # id -> was (possibly) present before (a rewrite)
    pins: dict[int, int] = {}
    ops: list[TierOp] = []
    ids_of = st.lists(st.integers(0, max_id - 1), min_size=1, max_size=4, unique=True)
    for _ in range(draw(st.integers(0, max_ops))):
        busy = set(storing) | {i for i, n in pins.items() if n}
        choices = ["store", "evict"] + ["complete_store"] * bool(storing) \
            + ["load", "touch", "free"] * bool(ready) + ["complete_load"] * bool(busy - set(storing))
        kind = draw(st.sampled_from(choices))
        if kind == "store":
            ids = [i for i in draw(ids_of) if i not in busy]
            # NOTE: a page in `maybe` already counts against the capacity, present or not
            new = [i for i in ids if i not in ready and i not in maybe]
            if capacity is not None:
                room = capacity - len(ready) - len(storing) - len(maybe)
                ids = [i for i in ids if i in ready or i in maybe] + new[: max(room, 0)]
            if ids:
                ops.append(TierOp("store", tuple(ids)))
                storing.update({i: i in ready or i in maybe for i in ids})
                ready -= set(ids)
                maybe -= set(ids)
        elif kind == "complete_store":
            ids = draw(st.lists(st.sampled_from(sorted(storing)), min_size=1, unique=True))
            success = draw(st.booleans())
            ops.append(TierOp("complete_store", tuple(ids), success=success))
            for i in ids:
                if success:
                    ready.add(i)
                elif storing[i]:
                    maybe.add(i)  # a failed rewrite keeps a page that may have been evicted before
                del storing[i]
        elif kind in ("load", "touch"):
            ids = draw(st.lists(st.sampled_from(sorted(ready)), min_size=1, max_size=4, unique=True))
            ops.append(TierOp(kind, tuple(ids)))
            if kind == "load":
                for i in ids:
                    pins[i] = pins.get(i, 0) + 1
        elif kind == "complete_load":
            pinned = sorted(i for i, n in pins.items() if n)
            ids = draw(st.lists(st.sampled_from(pinned), min_size=1, unique=True))
            ops.append(TierOp("complete_load", tuple(ids)))
            for i in ids:
                pins[i] -= 1
        elif kind == "free":
            free = sorted(ready - busy)
            if free:
                ids = draw(st.lists(st.sampled_from(free), min_size=1, max_size=3, unique=True))
                ops.append(TierOp("free", tuple(ids)))
                ready -= set(ids)
        else:
            count = draw(st.integers(0, 4))
            ops.append(TierOp("evict", count=count))
            # NOTE: the tier picks the victims, so unpinned ready pages become "maybe present"
            # (still counted against the capacity; later loads and frees avoid them)
            if count:
                evictable = (ready - busy) | maybe
                if count >= len(evictable):
                    maybe = set()
                    ready -= evictable
                else:
                    maybe |= ready - busy
                    ready &= busy
    return ops


def apply_tier_ops(tier: Any, ops: list[TierOp], *, seed: int = 0) -> dict[int, Tensor]:
    """Run ``ops`` on ``tier`` (records of random bytes from ``seed``) and return the records that ready
    pages must hold, ``{page id: [2, S, D]}``. Left out: pages an ``evict`` dropped, pages still being
    stored, and a page whose rewrite failed (``success=False``: either record is allowed)."""
    from icecache.testing.strategies.tiers import random_records

    spec: PageSpec = tier.spec
    held: dict[int, Tensor] = {}
    pending: dict[int, Tensor] = {}
    for n, op in enumerate(ops):
        ids = torch.tensor(op.ids, dtype=torch.int64)
        if op.kind == "store":
            slots = tier.prepare_store(ids)
            records = random_records(spec, len(op.ids), seed + n)
            tier.write(slots, records)
            for k, i in enumerate(op.ids):
                pending[i] = records[k]
                held.pop(i, None)  # in flight until completed
        elif op.kind == "complete_store":
            tier.complete_store(ids, op.success)
            for i in op.ids:
                rec = pending.pop(i)
                if op.success:
                    held[i] = rec
        elif op.kind == "load":
            tier.prepare_load(ids)
        elif op.kind == "complete_load":
            tier.complete_load(ids)
        elif op.kind == "touch":
            tier.touch(ids)
        elif op.kind == "free":
            tier.free(ids)
            for i in op.ids:
                held.pop(i, None)
        elif op.kind == "evict":
            for i in tier.evict(op.count).tolist():
                held.pop(i, None)
        else:
            raise ValueError(f"unknown tier op {op.kind!r}; known: {list(TIER_OP_KINDS)}")
    return held
