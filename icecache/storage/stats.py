"""Counters of data moved between tiers, and the store's stats snapshot."""

from __future__ import annotations

from typing import Any

from attrs import define, field, frozen

from icecache.storage.base import TierStats

#: move kinds: ``write`` (caller -> backing tier), ``spill`` (a backing tier's evicted pages -> the
#: next tier down), ``load`` (backing tiers -> the device tier), ``writethrough`` (a rewrite of a page
#: the device tier holds), ``evict`` (pages dropped from the device tier; no bytes move)
MOVE_KINDS = ("write", "spill", "load", "writethrough", "evict")


@frozen(kw_only=True)
class MoveRecord:
    """One move: ``pages`` pages, ``nbytes`` bytes, in ``copies`` copy operations into ``tier``.
    ``sources`` counts pages per source tier; ``via`` says how a load moved them: ``direct`` (gathered
    straight into a contiguous run of the destination's slots: no staging, no scatter), ``staged``
    (one staging buffer, one copy, one scatter), ``uva`` (one kernel per source tier reading pinned
    host pages from the GPU), or ``staged+uva``."""

    kind: str
    tier: str
    pages: int
    nbytes: int
    copies: int
    sources: dict[str, int] = field(factory=dict)
    via: str = ""

    @property
    def direct(self) -> bool:
        return self.via == "direct"


@define
class MoveCounter:
    calls: int = 0
    pages: int = 0
    nbytes: int = 0
    copies: int = 0

    def add(self, record: MoveRecord) -> None:
        self.calls += 1
        self.pages += record.pages
        self.nbytes += record.nbytes
        self.copies += record.copies


@frozen(kw_only=True)
class StoreStats:
    """Per-tier snapshots (``resident_bytes`` among them) and move totals by kind."""

    tiers: tuple[TierStats, ...]
    moves: dict[str, dict[str, int]]
    last: dict[str, MoveRecord]

    def tier(self, name: str) -> TierStats:
        return next(t for t in self.tiers if t.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {"tiers": [t.as_dict() for t in self.tiers], "moves": self.moves,
                "last": {k: _record_dict(v) for k, v in self.last.items()}}


def _record_dict(r: MoveRecord) -> dict[str, Any]:
    return {"kind": r.kind, "tier": r.tier, "pages": r.pages, "nbytes": r.nbytes, "copies": r.copies,
            "sources": dict(r.sources), "via": r.via}
