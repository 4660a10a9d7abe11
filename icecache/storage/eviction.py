"""Eviction policies: which ready, unpinned pages a tier gives up first.

A policy is a small stateful object, one per tier, that keeps its own per-slot numpy arrays (sized by
the tier through :meth:`EvictionPolicy.resize`) and hears about every state change the eviction order
depends on: a page became ready by a completed store (:meth:`~EvictionPolicy.stored`), a ready page was
used (:meth:`~EvictionPolicy.touched`: the store's ``load`` touches every page it returns, once per
call), a slot was given up (:meth:`~EvictionPolicy.released`). :meth:`~EvictionPolicy.victims` orders
the candidates the tier hands it (ready, not in flight). Every call is a few vectorized numpy
operations over the slots it is given: no Python loop per page.

Built-ins (registered through ``icecache_register_evictions`` like third-party ones):

=======  ==================================================================================
``lru``  least recently used first (a store and every touch re-stamp the page)
``fifo`` oldest store first (touches do not count; a rewrite counts as a store)
``lfu``  fewest touches since the page entered the tier first, least recently used among equals
         (a rewrite keeps the count); the classic cache policy for a small hot set
``mru``  most recently used first (a store and every touch re-stamp): for cyclic scans larger
         than the tier, where LRU evicts exactly the page needed next
=======  ==================================================================================

A tier takes ``eviction=`` a registered name or an :class:`EvictionPolicy` instance. Both the
store's fused load (:mod:`icecache.storage.fused_load`) and the two-phase protocol call the same
hooks, so a policy gets the fast path for free.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from attrs import define, field, fields, setters

from icecache.core.errors import ConfigError


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@define(eq=False, on_setattr=setters.NO_OP)
class EvictionPolicy:
    """Base class: a per-slot int64 ``stamp`` (the clock at the page's last stamping event) and the
    order "lowest :meth:`key` first". A subclass says which events stamp (``stamp_on_store``,
    ``stamp_on_touch``) and may override :meth:`key`, or the hooks and :meth:`victims` themselves.

    ``slots`` arguments are int64 numpy arrays of distinct slots of the tier.
    """

    name: ClassVar[str] = "base"
    #: whether a completed store / a touch re-stamps the page
    stamp_on_store: ClassVar[bool] = True
    stamp_on_touch: ClassVar[bool] = True

    stamp: np.ndarray = field(init=False, factory=_empty)  # [slots]
    clock: int = field(init=False, default=0)

    # ----- events ---------------------------------------------------------------------------------
    def resize(self, num_slots: int) -> None:
        """The tier now has ``num_slots`` slots (it only grows): extend the per-slot arrays."""
        extra = num_slots - self.stamp.size
        if extra > 0:
            self.stamp = np.concatenate([self.stamp, np.zeros(extra, dtype=np.int64)])

    def stored(self, slots: np.ndarray) -> None:
        """Pages in ``slots`` became ready by a completed store (new, or rewritten in place)."""
        if self.stamp_on_store:
            self.restamp(slots)

    def touched(self, slots: np.ndarray) -> None:
        """Ready pages in ``slots`` were used."""
        if self.stamp_on_touch:
            self.restamp(slots)

    def released(self, slots: np.ndarray) -> None:
        """``slots`` were given up (the page was evicted, freed, or its failed first store dropped)."""

    # ----- order ----------------------------------------------------------------------------------
    def key(self, slots: np.ndarray) -> np.ndarray:
        """int64 eviction key of each slot: lowest goes first (ties: lowest slot first)."""
        return self.stamp[slots]

    def victims(self, candidates: np.ndarray, count: int) -> np.ndarray:
        """The first ``count`` (``<= candidates.size``) of ``candidates`` (ascending slots) in eviction
        order, as slots."""
        if count <= 0:
            return candidates[:0]
        keys = self.key(candidates)
        if count < candidates.size:
            part = np.argpartition(keys, count - 1)[:count]
            return candidates[part[np.argsort(keys[part], kind="stable")]]
        return candidates[np.argsort(keys, kind="stable")]

    # ----- helpers --------------------------------------------------------------------------------
    def restamp(self, slots: np.ndarray) -> None:
        """Stamp ``slots`` with the next clock values, in the order given."""
        n = slots.size
        self.stamp[slots] = np.arange(self.clock, self.clock + n, dtype=np.int64)
        self.clock += n

    def nbytes(self) -> int:
        """Bytes of the per-slot arrays."""
        values = (getattr(self, a.name) for a in fields(type(self)))
        return sum(v.nbytes for v in values if isinstance(v, np.ndarray))


@define(eq=False, on_setattr=setters.NO_OP)
class LRU(EvictionPolicy):
    """Least recently used first: a completed store and every touch re-stamp the page."""

    name: ClassVar[str] = "lru"


@define(eq=False, on_setattr=setters.NO_OP)
class FIFO(EvictionPolicy):
    """Oldest store first: only a completed store (a rewrite included) stamps the page."""

    name: ClassVar[str] = "fifo"
    stamp_on_touch: ClassVar[bool] = False


@define(eq=False, on_setattr=setters.NO_OP)
class MRU(EvictionPolicy):
    """Most recently used first: the right order for a cyclic scan over more pages than the tier holds."""

    name: ClassVar[str] = "mru"

    def key(self, slots: np.ndarray) -> np.ndarray:
        return -self.stamp[slots]


@define(eq=False, on_setattr=setters.NO_OP)
class LFU(EvictionPolicy):
    """Fewest touches first, least recently used among equal counts.

    Touches are counted since the page entered the tier; a rewrite keeps the count. See
    https://en.wikipedia.org/wiki/Least_frequently_used."""

    name: ClassVar[str] = "lfu"
    uses: np.ndarray = field(init=False, factory=_empty)  # [slots]

    def resize(self, num_slots: int) -> None:
        super().resize(num_slots)
        extra = num_slots - self.uses.size
        if extra > 0:
            self.uses = np.concatenate([self.uses, np.zeros(extra, dtype=np.int64)])

    def touched(self, slots: np.ndarray) -> None:
        self.uses[slots] += 1
        self.restamp(slots)

    def released(self, slots: np.ndarray) -> None:
        self.uses[slots] = 0

    def victims(self, candidates: np.ndarray, count: int) -> np.ndarray:
        if count <= 0:
            return candidates[:0]
        order = np.lexsort((self.stamp[candidates], self.uses[candidates]))  # by uses, then stamp
        return candidates[order[:count]]


#: the built-in policies by name (registered in :mod:`icecache.storage.plugin`)
BUILTIN_EVICTIONS: dict[str, type[EvictionPolicy]] = {p.name: p for p in (LRU, FIFO, LFU, MRU)}


def make_eviction(value: Any) -> EvictionPolicy:
    """A fresh policy for ``value``: a registered name (built-ins first, then installed plugins'
    ``icecache_register_evictions``) or an :class:`EvictionPolicy` instance (used as is).
    :class:`ConfigError` names an unknown name and lists the registered ones."""
    if isinstance(value, EvictionPolicy):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"eviction must be a policy name or an EvictionPolicy, got {value!r}")
    builtin = BUILTIN_EVICTIONS.get(value)
    if builtin is not None:
        return builtin()
    from icecache.core.errors import UnknownComponentError
    from icecache.core.plugins import build_registry

    registry = build_registry()
    try:
        policy = registry.create("eviction", value)
    except UnknownComponentError as exc:
        raise ConfigError(f"unknown eviction policy {value!r}; registered: "
                          f"{', '.join(exc.available)}") from None
    if not isinstance(policy, EvictionPolicy):
        raise ConfigError(f"eviction policy {value!r} factory returned {type(policy).__name__}, not an "
                          "icecache.storage.eviction.EvictionPolicy")
    return policy


def resolve_eviction_option(options: dict[str, Any], registry: Any) -> dict[str, Any]:
    """Tier ``options`` with an ``eviction`` name that is not built in replaced by a fresh policy from
    ``registry`` (so a policy registered by a plugin object passed as ``extra=`` is found too);
    :class:`~icecache.core.errors.UnknownComponentError` lists the registered names."""
    value = options.get("eviction")
    if isinstance(value, str) and value not in BUILTIN_EVICTIONS:
        return {**options, "eviction": registry.create("eviction", value)}
    return options
