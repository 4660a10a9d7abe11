"""The tier contract as a hypothesis state machine, checked against a model of what the tier holds.

A tier factory is ``factory(config: CacheConfig) -> Tier`` (see :class:`icecache.storage.base.Tier`);
``config.geometry.head_dim`` and ``config.page_size`` give the page shape and ``config.tiers`` every
capacity field set to the drawn capacity (``None``: unbounded), so a built-in or plugin tier reads
whichever field is its own. The machine then runs random sequences of the two-phase protocol
(``prepare_store``/``write``/``complete_store``, ``prepare_load``/``read``/``complete_load``,
``touch``, ``victims``/``evict``, ``free``) over a small id space, including calls that must fail,
and checks after every step:

``round-trip``   ``read`` returns exactly the bytes written (bit-identical, any dtype; records are
                 random bytes, so NaN payloads, ``-0.0`` and subnormals must survive); a lossy tier
                 (one that stores fewer bits, e.g. bfloat16 host pages of a float32 store) declares
                 ``tolerance=(rtol, atol)``: records are then finite random values and a read must be
                 within the tolerance of what was written;
``state``        ``lookup``, ``resident_ids``, ``in_flight``, ``slot_of``, ``evictable`` and
                 ``stats`` agree with the model; slots of present pages are distinct;
``capacity``     present pages never exceed ``tier.capacity``; ``free_slots`` is what is left; a
                 store that does not fit raises :class:`~icecache.core.errors.StorageError` and
                 changes nothing;
``in-flight``    pages being stored or pinned by a load are never proposed as victims, evicted or
                 freed (``free`` raises :class:`~icecache.core.errors.PageError`);
``bad-ids``      absent, negative, repeated or wrongly-staged ids raise ``PageError`` naming the id,
                 and change nothing;
``eviction-order`` for a tier whose ``stats().details["eviction"]`` is a built-in policy (``lru``,
                 ``fifo``, ``lfu``, ``mru``; ``eviction_order`` names it otherwise, ``None`` skips the
                 check), ``victims(count)`` are the ``count`` evictable pages that policy evicts first,
                 in its order. The model stamps a page when a store completes (rewrites included) and
                 when it is touched; loads and reads do not count; ties (pages stamped by one call) may
                 come in any order. ``lfu`` counts touches since the page entered the tier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import Tensor

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.errors import PageError, StorageError
from icecache.storage.layout import PageSpec
from icecache.testing.conformance._runner import ContractViolation, guarded, run_suite, suite_settings
from icecache.testing.strategies.tiers import random_records

CONTRACT = "tier"
TIER_PROPERTIES: tuple[str, ...] = ("round-trip", "state", "capacity", "in-flight", "bad-ids",
                                    "eviction-order")
#: eviction policies whose order the suite models
MODELED_EVICTIONS: tuple[str, ...] = ("lru", "fifo", "lfu", "mru")
TierFactory = Callable[[CacheConfig], Any]


def tier_config(*, page_size: int = 4, head_dim: int = 8, dtype: torch.dtype = torch.float32,
                capacity: int | None = None) -> CacheConfig:
    """The config a tier factory receives: every capacity field of ``tiers`` set to ``capacity``."""
    return CacheConfig(page_size=page_size, budget=max(64, page_size), dtype=dtype,
                       geometry=ModelGeometry(num_layers=2, num_q_heads=1, num_kv_heads=1, head_dim=head_dim),
                       tiers=TierConfig(device_pages=capacity, host_pages=capacity, disk_pages=capacity))


def _bits(t: Tensor) -> Tensor:
    """The raw bytes of a tensor (so ``-0.0`` vs ``0.0`` or NaN payloads count as different)."""
    return t.detach().to("cpu").contiguous().view(torch.uint8)


def _ids(xs: Any) -> Tensor:
    return torch.tensor(sorted(xs) if isinstance(xs, set) else list(xs), dtype=torch.int64)


def _fail(prop: str, detail: str) -> None:
    raise ContractViolation(CONTRACT, prop, detail)


class TierContract(RuleBasedStateMachine):
    """Subclass and set :meth:`make_tier` (or build one with :func:`make_tier_machine`); run it with
    ``TestMyTier = MyMachine.TestCase`` under pytest or :func:`check_tier`.

    Class attributes: ``page_size``, ``head_dim``, ``dtype``, ``max_id`` (ids are drawn from
    ``[0, max_id)``), ``capacities`` (a strategy of ``int | None``), ``tolerance`` (``None``: reads
    are bit-identical; ``(rtol, atol)`` for a lossy tier), ``eviction_order`` (``"auto"``: the
    policy named in ``stats().details["eviction"]`` when the suite models it; a name; ``None``: not
    checked).
    """

    page_size: int = 4
    head_dim: int = 8
    dtype: torch.dtype = torch.float32
    max_id: int = 12
    capacities: st.SearchStrategy[int | None] = st.one_of(st.none(), st.integers(1, 8))
    tolerance: tuple[float, float] | None = None
    eviction_order: str | None = "auto"

    def make_tier(self, config: CacheConfig) -> Any:
        raise NotImplementedError("set make_tier, or build the machine with make_tier_machine(factory)")

    # ----- model -------------------------------------------------------------------------------------
    def __init__(self) -> None:
        super().__init__()
        self.tier: Any = None
        self.ready: dict[int, list[Tensor]] = {}  # id -> acceptable record contents (bytes)
        self.storing: dict[int, tuple[list[Tensor] | None, Tensor]] = {}  # id -> (old contents, written)
        self.pins: dict[int, int] = {}
        self.gen = torch.Generator().manual_seed(0)
        # eviction-order model: a logical clock per call; per page its last store, last stamp, touches
        self.clock = 0
        self.stored_at: dict[int, int] = {}
        self.used_at: dict[int, int] = {}
        self.uses: dict[int, int] = {}

    @initialize(data=st.data(), seed=st.integers(0, 2**16))
    def build(self, data: Any, seed: int) -> None:
        # NOTE: drawn from the class attribute, so a subclass can change the capacities
        capacity = data.draw(self.capacities, label="capacity")
        self.gen.manual_seed(seed)
        config = tier_config(page_size=self.page_size, head_dim=self.head_dim, dtype=self.dtype,
                             capacity=capacity)
        self.tier = guarded(CONTRACT, "factory(config)", self.make_tier, config)
        self.name = getattr(self.tier, "name", type(self.tier).__name__)
        self.capacity = self.tier.capacity
        self.order = self.eviction_order
        if self.order == "auto":
            named = self._call("stats", self.tier.stats).details.get("eviction")
            self.order = named if named in MODELED_EVICTIONS else None
        elif self.order is not None and self.order not in MODELED_EVICTIONS:
            raise ValueError(f"eviction_order must be 'auto', None or one of {list(MODELED_EVICTIONS)}, "
                             f"got {self.order!r}")
        # NOTE: start most runs with a few ready pages, so short runs still load, evict and free
        room = 4 if self.capacity is None else min(4, self.capacity)
        first = data.draw(st.integers(0, room), label="initial pages")
        if first:
            ids = list(range(first))
            slots = self._call(f"prepare_store({ids})", self.tier.prepare_store, _ids(ids))
            records = self._records(first)
            self._call(f"write(slots of {ids})", self.tier.write, torch.as_tensor(slots), records)
            self._call(f"complete_store({ids})", self.tier.complete_store, _ids(ids))
            self.ready.update({i: [self._kept(records[i])] for i in ids})
            self._stamp(ids, stored=True)

    def teardown(self) -> None:
        if self.tier is not None:
            self.tier.close()

    @property
    def present(self) -> set[int]:
        return set(self.ready) | set(self.storing)

    @property
    def busy(self) -> set[int]:
        return set(self.storing) | {i for i, n in self.pins.items() if n > 0}

    def _records(self, n: int) -> Tensor:
        """Random *bytes* as records: NaN payloads, infinities, ``-0.0`` and subnormals included (a lossy
        tier, ``tolerance`` set: finite random values instead)."""
        spec = PageSpec(page_size=self.page_size, head_dim=self.head_dim, dtype=self.dtype)
        if self.tolerance is not None:
            return torch.randn((n, *spec.record_shape), generator=self.gen).to(self.dtype)
        return random_records(spec, n, int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen)))

    def _kept(self, record: Tensor) -> Tensor:
        """What the model keeps of a written record: its bytes, or (lossy) its values."""
        return _bits(record) if self.tolerance is None else record.detach().to("cpu").clone()

    def _matches(self, got: Tensor, want: Tensor) -> bool:
        if self.tolerance is None:
            return torch.equal(_bits(got), want)
        rtol, atol = self.tolerance
        got = got.detach().to("cpu")
        return got.shape == want.shape and torch.allclose(got.double(), want.double(), rtol=rtol, atol=atol)

    def _mismatch(self, got: Tensor, want: Tensor) -> str:
        if self.tolerance is None:
            return f"{int((_bits(got) != want).sum())} byte(s) differing from what was written"
        err = (got.detach().to("cpu").double() - want.double()).abs().max()
        return f"values off by up to {float(err):.3g} (tolerance rtol, atol = {self.tolerance})"

    # ----- eviction-order model ----------------------------------------------------------------------
    def _stamp(self, ids: list[int], *, stored: bool) -> None:
        self.clock += 1
        for i in ids:
            if stored:
                self.stored_at[i] = self.clock
                self.uses.setdefault(i, 0)
            else:
                self.uses[i] = self.uses.get(i, 0) + 1
            self.used_at[i] = self.clock

    def _forget(self, ids: list[int]) -> None:
        for i in ids:
            self.stored_at.pop(i, None)
            self.used_at.pop(i, None)
            self.uses.pop(i, None)

    def _order_key(self, i: int) -> tuple[int, int]:
        """Lower goes first under the modeled policy."""
        if self.order == "fifo":
            return (self.stored_at[i], 0)
        if self.order == "mru":
            return (-self.used_at[i], 0)
        if self.order == "lfu":
            return (self.uses[i], self.used_at[i])
        return (self.used_at[i], 0)  # lru

    def _check_order(self, count: int, proposed: list[int], evictable: set[int]) -> None:
        if self.order is None or not proposed:
            return
        keys = [self._order_key(i) for i in proposed]
        if keys != sorted(keys):
            _fail("eviction-order", f"{self.name}.victims({count}) = {proposed} is not in {self.order} "
                                    f"order (model keys {keys})")
        left = sorted(evictable - set(proposed), key=self._order_key)
        if left and self._order_key(left[0]) < keys[-1]:
            _fail("eviction-order", f"{self.name}.victims({count}) = {proposed} passed over page {left[0]}, "
                                    f"which {self.order} evicts before page {proposed[-1]}")

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return guarded(CONTRACT, f"{self.name}.{what}", fn, *args, **kwargs)

    def _expect_error(self, prop: str, exc_type: type[Exception], what: str, fn: Callable[..., Any],
                      *args: Any, names: int | None = None) -> None:
        try:
            fn(*args)
        except exc_type as exc:
            if names is not None and str(names) not in str(exc):
                _fail(prop, f"{self.name}.{what} raised {type(exc).__name__} without naming page "
                            f"{names}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001
            _fail(prop, f"{self.name}.{what} raised {type(exc).__name__} ({exc}); "
                        f"expected {exc_type.__name__}")
        _fail(prop, f"{self.name}.{what} should raise {exc_type.__name__}")

    # ----- stores ------------------------------------------------------------------------------------
    def _some_ids(self, data: Any, max_size: int) -> list[int]:
        ids = st.lists(st.integers(0, self.max_id - 1), min_size=1, max_size=max_size, unique=True)
        return data.draw(ids, label="ids")

    @rule(data=st.data())
    def prepare_store(self, data: Any) -> None:
        ids = [i for i in self._some_ids(data, 4) if i not in self.busy]
        if not ids:
            return
        new = [i for i in ids if i not in self.ready]
        if self.capacity is not None and len(self.present) + len(new) > self.capacity:
            what = f"prepare_store({ids}) beyond capacity {self.capacity} with {len(self.present)} present"
            self._expect_error("capacity", StorageError, what, self.tier.prepare_store, _ids(ids))
            return
        before = self._call("slot_of", self.tier.slot_of, _ids(ids))
        slots = self._call(f"prepare_store({ids})", self.tier.prepare_store, _ids(ids))
        slots = torch.as_tensor(slots)
        if slots.dtype != torch.int64 or tuple(slots.shape) != (len(ids),):
            _fail("state", f"{self.name}.prepare_store({ids}) returned {slots.dtype} {tuple(slots.shape)}, "
                           f"expected int64 [{len(ids)}]")
        kept = [k for k, i in enumerate(ids) if i in self.ready]
        if kept and not torch.equal(slots[kept], before[kept]):
            _fail("state", f"{self.name}.prepare_store moved ready pages {[ids[k] for k in kept]} "
                           "to other slots")
        records = self._records(len(ids))
        self._call(f"write(slots of {ids})", self.tier.write, slots, records)
        for k, i in enumerate(ids):
            self.storing[i] = (self.ready.pop(i, None), self._kept(records[k]))

    @precondition(lambda self: bool(self.storing))
    @rule(data=st.data(), success=st.booleans())
    def complete_store(self, data: Any, success: bool) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.storing)), min_size=1, unique=True), label="ids")
        self._call(f"complete_store({ids}, success={success})", self.tier.complete_store, _ids(ids), success)
        for i in ids:
            old, written = self.storing.pop(i)
            if success:
                self.ready[i] = [written]
            elif old is not None:
                # NOTE: a failed rewrite keeps the page; its bytes may be the old or the new ones
                self.ready[i] = old + [written]
            else:
                self._forget([i])
        if success:
            self._stamp(ids, stored=True)

    # ----- loads -------------------------------------------------------------------------------------
    @precondition(lambda self: bool(self.ready))
    @rule(data=st.data())
    def load_and_read(self, data: Any) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.ready)), min_size=1, unique=True), label="ids")
        slots = self._call(f"prepare_load({ids})", self.tier.prepare_load, _ids(ids))
        for i in ids:
            self.pins[i] = self.pins.get(i, 0) + 1
        got = self._call(f"read(slots of {ids})", self.tier.read, torch.as_tensor(slots))
        for k, i in enumerate(ids):
            if not any(self._matches(got[k], ok) for ok in self.ready[i]):
                _fail("round-trip", f"{self.name}.read returned page {i} with "
                                    f"{self._mismatch(got[k], self.ready[i][-1])}")

    @precondition(lambda self: any(n > 0 for n in self.pins.values()))
    @rule(data=st.data())
    def complete_load(self, data: Any) -> None:
        pinned = sorted(i for i, n in self.pins.items() if n > 0)
        ids = data.draw(st.lists(st.sampled_from(pinned), min_size=1, unique=True), label="ids")
        self._call(f"complete_load({ids})", self.tier.complete_load, _ids(ids))
        for i in ids:
            self.pins[i] -= 1

    @precondition(lambda self: bool(self.ready))
    @rule(data=st.data())
    def touch(self, data: Any) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.ready)), min_size=1, unique=True), label="ids")
        self._call(f"touch({ids})", self.tier.touch, _ids(ids))
        self._stamp(ids, stored=False)

    # ----- eviction ----------------------------------------------------------------------------------
    @rule(count=st.integers(0, 5))
    def evict(self, count: int) -> None:
        evictable = set(self.ready) - self.busy
        proposed_list = self._call(f"victims({count})", self.tier.victims, count).tolist()
        proposed = set(proposed_list)
        if not proposed <= evictable:
            _fail("in-flight", f"{self.name}.victims({count}) proposed {sorted(proposed - evictable)}, "
                               f"which are in "
                               f"flight or absent (evictable: {sorted(evictable)})")
        if len(proposed) != min(count, len(evictable)):
            _fail("state", f"{self.name}.victims({count}) proposed {len(proposed)} pages with "
                           f"{len(evictable)} "
                           f"evictable")
        self._check_order(count, proposed_list, evictable)
        gone = self._call(f"evict({count})", self.tier.evict, count).tolist()
        if not set(gone) <= evictable or len(gone) != min(count, len(evictable)):
            _fail("in-flight", f"{self.name}.evict({count}) dropped {sorted(gone)}; evictable were "
                               f"{sorted(evictable)}")
        for i in gone:
            self.ready.pop(i)
            self.pins.pop(i, None)
        self._forget(gone)

    @precondition(lambda self: self.order is not None and len(set(self.ready) - self.busy) >= 2)
    @rule(data=st.data())
    def order_after_touch(self, data: Any) -> None:
        """Touch one evictable page, then ask for every victim: the order must follow the policy."""
        evictable = set(self.ready) - self.busy
        page = data.draw(st.sampled_from(sorted(evictable)), label="touched")
        self._call(f"touch([{page}])", self.tier.touch, _ids([page]))
        self._stamp([page], stored=False)
        proposed = self._call(f"victims({len(evictable)})", self.tier.victims, len(evictable)).tolist()
        if not set(proposed) <= evictable:
            _fail("in-flight", f"{self.name}.victims({len(evictable)}) proposed "
                               f"{sorted(set(proposed) - evictable)}, which are in flight or absent")
        if set(proposed) != evictable:
            _fail("state", f"{self.name}.victims({len(evictable)}) = {proposed}, expected every evictable "
                           f"page {sorted(evictable)}")
        self._check_order(len(evictable), proposed, evictable)

    @precondition(lambda self: bool(self.ready))
    @rule(data=st.data(), count=st.integers(1, 5))
    def evict_while_loading(self, data: Any, count: int) -> None:
        """Pin some pages, evict around them, unpin: pinned pages must survive."""
        pick = st.lists(st.sampled_from(sorted(self.ready)), min_size=1, unique=True)
        ids = data.draw(pick, label="pinned")
        self._call(f"prepare_load({ids})", self.tier.prepare_load, _ids(ids))
        for i in ids:
            self.pins[i] = self.pins.get(i, 0) + 1
        self.evict(count)
        self._call(f"complete_load({ids})", self.tier.complete_load, _ids(ids))
        for i in ids:
            self.pins[i] -= 1

    @precondition(lambda self: self.capacity is not None and self.capacity < self.max_id)
    @rule()
    def overfill(self) -> None:
        """Store one page more than fits: StorageError, and nothing changes."""
        free = self.capacity - len(self.present)
        ids = [i for i in range(self.max_id) if i not in self.present][: free + 1]
        if len(ids) == free + 1:
            what = f"prepare_store({ids}) with room for {free} (capacity {self.capacity})"
            self._expect_error("capacity", StorageError, what, self.tier.prepare_store, _ids(ids))

    @rule(data=st.data())
    def free(self, data: Any) -> None:
        ids = self._some_ids(data, 3)
        bad = [i for i in ids if i not in self.ready or i in self.busy]
        if bad:
            prop = "in-flight" if bad[0] in self.busy else "bad-ids"
            self._expect_error(prop, PageError, f"free({ids}) with page {bad[0]} "
                               f"{'in flight' if bad[0] in self.busy else 'absent'}",
                               self.tier.free, _ids(ids))
            return
        self._call(f"free({ids})", self.tier.free, _ids(ids))
        for i in ids:
            self.ready.pop(i)
            self.pins.pop(i, None)
        self._forget(ids)

    # ----- calls that must fail ------------------------------------------------------------------------
    @rule(data=st.data(),
          kind=st.sampled_from(["absent-load", "negative", "repeated", "unpinned", "not-storing"]))
    def bad_ids(self, data: Any, kind: str) -> None:
        i = data.draw(st.integers(0, self.max_id - 1), label="id")
        if kind == "absent-load" and i not in self.ready:
            self._expect_error("bad-ids", PageError, f"prepare_load([{i}]) of a page not ready",
                               self.tier.prepare_load, _ids([i]), names=i)
        elif kind == "negative":
            self._expect_error("bad-ids", PageError, "prepare_load([-1 - i])", self.tier.prepare_load,
                               _ids([-1 - i]))
        elif kind == "repeated" and i in self.ready:
            self._expect_error("bad-ids", PageError, f"prepare_load([{i}, {i}])", self.tier.prepare_load,
                               _ids([i, i]), names=i)
        elif kind == "unpinned" and self.pins.get(i, 0) == 0 and i not in self.storing:
            self._expect_error("bad-ids", PageError, f"complete_load([{i}]) of a page not being loaded",
                               self.tier.complete_load, _ids([i]), names=i)
        elif kind == "not-storing" and i not in self.storing:
            self._expect_error("bad-ids", PageError, f"complete_store([{i}]) of a page not being stored",
                               self.tier.complete_store, _ids([i]), names=i)

    # ----- invariants ----------------------------------------------------------------------------------
    @invariant()
    def reads_back_what_was_written(self) -> None:
        if self.tier is None or not self.ready:
            return
        ids = sorted(self.ready)
        slots = self._call(f"prepare_load({ids})", self.tier.prepare_load, _ids(ids))
        try:
            got = self._call(f"read(slots of {ids})", self.tier.read, torch.as_tensor(slots))
        finally:
            self._call(f"complete_load({ids})", self.tier.complete_load, _ids(ids))
        for k, i in enumerate(ids):
            if not any(self._matches(got[k], ok) for ok in self.ready[i]):
                _fail("round-trip", f"{self.name}.read returned page {i} with "
                                    f"{self._mismatch(got[k], self.ready[i][-1])}")

    @invariant()
    def agrees_with_model(self) -> None:
        if self.tier is None:
            return
        universe = torch.arange(self.max_id)
        ready = self._call("lookup", self.tier.lookup, universe)
        want = torch.tensor([i in self.ready for i in range(self.max_id)])
        if not torch.equal(torch.as_tensor(ready).bool(), want):
            lost = [i for i in range(self.max_id) if want[i] and not ready[i]]
            extra = [i for i in range(self.max_id) if ready[i] and not want[i]]
            _fail("state", f"{self.name}.lookup disagrees: pages lost {lost}, "
                           f"pages unexpectedly ready {extra}")
        resident = self._call("resident_ids", self.tier.resident_ids).tolist()
        if resident != sorted(self.ready):
            _fail("state", f"{self.name}.resident_ids() = {resident}, expected {sorted(self.ready)}")
        flight = self._call("in_flight", self.tier.in_flight).tolist()
        if flight != sorted(self.busy):
            _fail("in-flight", f"{self.name}.in_flight() = {flight}, expected {sorted(self.busy)}")
        slots = self._call("slot_of", self.tier.slot_of, universe)
        present = torch.tensor([i in self.present for i in range(self.max_id)])
        if bool((slots[~present] != -1).any()) or bool((slots[present] < 0).any()):
            _fail("state", f"{self.name}.slot_of gives {slots.tolist()} with pages "
                           f"{sorted(self.present)} present")
        if slots[present].unique().numel() != int(present.sum()):
            _fail("state", f"{self.name} gives two present pages one slot: {slots.tolist()}")
        evictable = len(set(self.ready) - self.busy)
        if self._call("evictable", self.tier.evictable) != evictable:
            _fail("state", f"{self.name}.evictable() = {self.tier.evictable()}, expected {evictable}")
        if self.capacity is not None:
            free = self.tier.free_slots
            if free != self.capacity - len(self.present):
                _fail("capacity", f"{self.name}.free_slots = {free} with capacity {self.capacity} and "
                                  f"{len(self.present)} pages present")
        stats = self._call("stats", self.tier.stats)
        if stats.resident_pages != len(self.ready) or stats.in_flight_pages != len(self.busy):
            _fail("state", f"{self.name}.stats() reports {stats.resident_pages} resident / "
                           f"{stats.in_flight_pages} in flight, expected {len(self.ready)} / "
                           f"{len(self.busy)}")


def make_tier_machine(factory: TierFactory, *, page_size: int = 4, head_dim: int = 8,
                      dtype: torch.dtype = torch.float32, max_id: int = 12,
                      capacities: st.SearchStrategy[int | None] | None = None,
                      tolerance: tuple[float, float] | None = None,
                      eviction_order: str | None = "auto") -> type[TierContract]:
    """A :class:`TierContract` subclass that builds tiers with ``factory(config)``; use its ``TestCase``
    under pytest (``TestMyTier = make_tier_machine(f).TestCase``) or pass it to :func:`check_tier`.
    ``tolerance=(rtol, atol)`` for a lossy tier; ``eviction_order`` as on :class:`TierContract`."""
    if tolerance is not None and (len(tolerance) != 2 or min(tolerance) < 0):
        raise ValueError(f"tolerance must be (rtol, atol), both >= 0, got {tolerance!r}")
    attrs: dict[str, Any] = {"make_tier": lambda self, config: factory(config), "page_size": page_size,
                             "head_dim": head_dim, "dtype": dtype, "max_id": max_id,
                             "tolerance": None if tolerance is None else tuple(map(float, tolerance)),
                             "eviction_order": eviction_order}
    if capacities is not None:
        attrs["capacities"] = capacities
    name = getattr(factory, "__name__", "tier").replace("<", "").replace(">", "")
    return type(f"TierContract_{name}", (TierContract,), attrs)


def check_tier(factory: TierFactory | type[TierContract], *, max_examples: int = 20, steps: int = 30,
               settings: Any = None, shrink: bool = True, **machine_kwargs: Any) -> None:
    """Run the tier contract against ``factory(config) -> Tier`` (or a :class:`TierContract`
    subclass); raise :class:`ContractViolation` (an ``AssertionError``) naming the broken property.
    ``steps``: rules per run. ``machine_kwargs`` go to :func:`make_tier_machine` (``dtype``,
    ``page_size``, ``capacities``...). ``shrink=False`` reports the first failure unshrunk: shrinking
    a stateful run can take a minute or more."""
    from hypothesis.stateful import run_state_machine_as_test

    machine = factory if isinstance(factory, type) and issubclass(factory, TierContract) \
        else make_tier_machine(factory, **machine_kwargs)
    s = suite_settings(max_examples, settings, shrink=shrink)
    s = type(s)(s, stateful_step_count=steps)
    run_suite(CONTRACT, lambda: run_state_machine_as_test(machine, settings=s))


def registered_tier_factory(name: str, *, plugin_manager: Any = None, **options: Any) -> TierFactory:
    """A factory for the registered tier ``name``: ``registry.create("tier", name, config, **options)``."""
    from icecache.core.plugins import build_registry

    registry = build_registry(plugin_manager)
    registry.get("tier", name)  # NOTE: an unknown name fails here, naming the registered ones

    def factory(config: CacheConfig) -> Any:
        return registry.create("tier", name, config, **options)

    factory.__name__ = f"tier[{name}]"
    return factory
