"""The store contract: a composed stack of tiers (:class:`icecache.storage.store.TieredStore` or
anything with its API) checked as a hypothesis state machine against a model.

A store factory is ``factory(config: CacheConfig) -> store``; ``config.tiers`` carries drawn
capacities and a private temporary ``disk_dir``, ``config.geometry.head_dim`` the page shape, so
``lambda config: TieredStore.build(config, ("device", "host", "my-tier"))`` tests a stack with a
plugin's tier in it. Random sequences of ``allocate``, ``write_pages``, ``load`` (with and without
``pin``), ``release``, ``evict``, ``free`` and ``read_pages``, and after every step:

``round-trip``  every written page reads back bit-identical (random bytes: NaN payloads, ``-0.0``,
                subnormals), with its valid length; pages in the device tier hold the same bytes;
``placement``   each written page lives in exactly one backing tier, every tier within its capacity;
``in-flight``   a pinned page stays in its device slot until released; evicting or freeing it raises
                :class:`~icecache.core.errors.PageError`;
``tokens``      ``read_tokens`` of any (written page, slot) pairs returns that slot's key (and value) as last
                written, never a stale or another page's (what a layer's key reader relies on);
``bad-ids``     reading or loading a freed or never-written page raises ``PageError``;
``atomic``      a write or load that raises :class:`~icecache.core.errors.StorageError` (no room)
                changes nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.errors import PageError, StorageError
from icecache.storage.layout import PageSpec
from icecache.testing.conformance._runner import ContractViolation, guarded, run_suite, suite_settings
from icecache.testing.strategies.tiers import bits, random_records

CONTRACT = "store"
STORE_PROPERTIES: tuple[str, ...] = ("round-trip", "placement", "in-flight", "tokens", "bad-ids", "atomic")
StoreFactory = Callable[[CacheConfig], Any]


def _fail(prop: str, detail: str) -> None:
    raise ContractViolation(CONTRACT, prop, detail)


def _t(ids: Any) -> torch.Tensor:
    return torch.tensor(sorted(ids) if isinstance(ids, set) else list(ids), dtype=torch.int64)


class StoreContract(RuleBasedStateMachine):
    """Subclass and set :meth:`make_store` (or use :func:`make_store_machine`); run with
    ``TestMyStack = MyMachine.TestCase`` under pytest, or :func:`check_store`.

    Class attributes: ``page_size``, ``head_dim``, ``dtypes`` (a strategy), ``capacities`` (a strategy
    of ``{"device": int | None, "host": int | None, "disk": int | None}``).
    """

    page_size: int = 4
    head_dim: int = 8
    dtypes: st.SearchStrategy[torch.dtype] = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
    capacities: st.SearchStrategy[dict[str, int | None]] = st.fixed_dictionaries({
        "device": st.one_of(st.none(), st.integers(1, 6)), "host": st.one_of(st.none(), st.integers(1, 10)),
        "disk": st.integers(8, 40)})

    def make_store(self, config: CacheConfig) -> Any:
        raise NotImplementedError("set make_store, or build the machine with make_store_machine(factory)")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="icecache-conformance-")
        self.store: Any = None
        self.model: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (record bytes, valid slots)
        self.allocated: set[int] = set()
        self.freed: set[int] = set()
        self.pins: Counter[int] = Counter()
        self.pinned_slot: dict[int, int] = {}
        self.seed = 0

    @initialize(data=st.data())
    def build(self, data: Any) -> None:
        dtype, caps = data.draw(self.dtypes, label="dtype"), data.draw(self.capacities, label="capacities")
        config = CacheConfig(page_size=self.page_size, budget=64, dtype=dtype,
                             geometry=ModelGeometry(num_layers=2, num_q_heads=1, num_kv_heads=1,
                                                    head_dim=self.head_dim),
                             tiers=TierConfig(device_pages=caps["device"], host_pages=caps["host"],
                                              disk_dir=self.dir, disk_pages=caps["disk"]))
        self.store = guarded(CONTRACT, "factory(config)", self.make_store, config)
        self.spec = PageSpec(page_size=self.page_size, head_dim=self.head_dim, dtype=dtype)
        # NOTE: start most runs with a few written pages, so short runs still load, pin and evict
        first = data.draw(st.integers(0, 4), label="initial pages")
        if first:
            self.allocate(first)
            ids = sorted(self.allocated)
            rec = random_records(self.spec, first, 0)
            try:
                self.store.write_pages(_t(ids), rec[:, 0], rec[:, 1])
                self.model.update({i: (bits(rec[k]), self.page_size) for k, i in enumerate(ids)})
            except StorageError:  # a small stack: the invariants check nothing was written
                pass

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pinned(self) -> set[int]:
        return {i for i, n in self.pins.items() if n > 0}

    def _pick(self, data: Any, pool: set[int] | dict[int, Any], label: str = "ids") -> list[int]:
        ids = st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=4, unique=True)
        return data.draw(ids, label=label)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return guarded(CONTRACT, what, fn, *args, **kwargs)

    def _expect(self, prop: str, exc: type[Exception], what: str, fn: Callable[..., Any], *args: Any,
                **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except exc:
            return
        except Exception as other:  # noqa: BLE001
            _fail(prop, f"{what} raised {type(other).__name__} ({other}); expected {exc.__name__}")
        _fail(prop, f"{what} should raise {exc.__name__}")

    def _where(self) -> list[Any]:
        return self._call("where", self.store.where, _t(self.model)) if self.model else []

    # ----- rules -----------------------------------------------------------------------------------
    @rule(n=st.integers(1, 4))
    def allocate(self, n: int) -> None:
        ids = self._call(f"allocate({n})", self.store.allocate, n).tolist()
        if len(set(ids)) != n or set(ids) & self.allocated:
            _fail("bad-ids", f"allocate({n}) returned {ids}, with live ids {sorted(self.allocated)}")
        self.allocated |= set(ids)
        self.freed -= set(ids)

    @precondition(lambda self: bool(self.allocated))
    @rule(data=st.data())
    def write(self, data: Any) -> None:
        ids = self._pick(data, self.allocated)
        lens = data.draw(st.lists(st.integers(1, self.page_size), min_size=len(ids), max_size=len(ids)),
                         label="lens")
        self.seed += 1
        rec = random_records(self.spec, len(ids), self.seed)
        where = self._where()
        try:
            self.store.write_pages(_t(ids), rec[:, 0], rec[:, 1], torch.tensor(lens))
        except StorageError:
            if self._where() != where:
                _fail("atomic", f"write_pages({ids}) raised StorageError but moved pages")
            return
        except Exception as exc:  # noqa: BLE001
            _fail("no-error", f"write_pages({ids}) raised {type(exc).__name__}: {exc}")
        for k, i in enumerate(ids):
            self.model[i] = (bits(rec[k]), lens[k])

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), pin=st.booleans())
    def load(self, data: Any, pin: bool) -> None:
        ids = self._pick(data, self.model)
        where = self._where()
        try:
            slots = self.store.load(_t(ids), pin=pin)
        except StorageError:
            if self._where() != where:
                _fail("atomic", f"load({ids}) raised StorageError but moved pages")
            return
        except Exception as exc:  # noqa: BLE001
            _fail("no-error", f"load({ids}, pin={pin}) raised {type(exc).__name__}: {exc}")
        slots = torch.as_tensor(slots)
        if slots.numel() != len(ids) or slots.unique().numel() != len(ids):
            _fail("round-trip", f"load({ids}) returned slots {slots.tolist()}: one distinct slot per page")
        kv = self._call("device_pool", lambda: self.store.device_pool).kv
        for k, i in enumerate(ids):
            if not torch.equal(bits(kv[int(slots[k])]), self.model[i][0]):
                _fail("round-trip", f"load({ids}) put page {i} in device slot {int(slots[k])} with other "
                                    "bytes")
            if pin:
                self.pins[i] += 1
                self.pinned_slot[i] = int(slots[k])

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def rewrite_loaded(self, data: Any) -> None:
        """Load pages, then write them again: the device copies must follow (checked by the invariants)."""
        ids = self._pick(data, self.model)
        try:
            self.store.load(_t(ids))
        except StorageError:
            return
        except Exception as exc:  # noqa: BLE001
            _fail("no-error", f"load({ids}) raised {type(exc).__name__}: {exc}")
        self.seed += 1
        rec = random_records(self.spec, len(ids), self.seed)
        lens = [self.model[i][1] for i in ids]
        self._call(f"write_pages({ids}) (a rewrite)", self.store.write_pages, _t(ids), rec[:, 0], rec[:, 1],
                   torch.tensor(lens))
        for k, i in enumerate(ids):
            self.model[i] = (bits(rec[k]), lens[k])

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), values=st.booleans())
    def read_tokens(self, data: Any, values: bool) -> None:
        """Single slots of written pages (repeats allowed), as a layer's key reader asks for them."""
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=8), label="pages")
        slots = data.draw(st.lists(st.integers(0, self.page_size - 1), min_size=len(ids), max_size=len(ids)),
                          label="slots")
        got = self._call(f"read_tokens({ids}, {slots})", self.store.read_tokens, _t(ids),
                         torch.tensor(slots), values=values)
        for n, (i, s) in enumerate(zip(ids, slots, strict=True)):
            record = self.model[i][0].view(2, self.page_size, -1)  # bytes [2, S, D * itemsize]
            want = record[:, s] if values else record[0, s]
            if not torch.equal(bits(got[n]).reshape(want.shape), want):
                _fail("tokens", f"read_tokens gave slot {s} of page {i} other bytes than written")

    @precondition(lambda self: bool(self.pinned))
    @rule(data=st.data())
    def release(self, data: Any) -> None:
        ids = self._pick(data, self.pinned)
        self._call(f"release({ids})", self.store.release, _t(ids))
        for i in ids:
            self.pins[i] -= 1

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def evict(self, data: Any) -> None:
        ids = self._pick(data, self.model)
        if self.store.cache is not None and set(ids) & self.pinned:
            self._expect("in-flight", PageError, f"evict({ids}) with pinned {sorted(set(ids) & self.pinned)}",
                         self.store.evict, _t(ids))
            return
        self._call(f"evict({ids})", self.store.evict, _t(ids))

    @precondition(lambda self: bool(self.allocated))
    @rule(data=st.data())
    def free(self, data: Any) -> None:
        ids = self._pick(data, self.allocated)
        if set(ids) & self.pinned:
            self._expect("in-flight", PageError, f"free({ids}) with pinned {sorted(set(ids) & self.pinned)}",
                         self.store.free, _t(ids))
            return
        self._call(f"free({ids})", self.store.free, _t(ids))
        for i in ids:
            self.model.pop(i, None)
        self.allocated -= set(ids)
        self.freed |= set(ids)

    @precondition(lambda self: bool(self.freed) or bool(self.allocated - set(self.model)))
    @rule(data=st.data())
    def bad_ids(self, data: Any) -> None:
        pool = self.freed | (self.allocated - set(self.model))
        i = data.draw(st.sampled_from(sorted(pool)), label="id")
        self._expect("bad-ids", PageError, f"read_pages([{i}]) of a page never written or freed",
                     self.store.read_pages, _t([i]))
        self._expect("bad-ids", PageError, f"load([{i}]) of a page never written or freed",
                     self.store.load, _t([i]))

    # ----- invariants ----------------------------------------------------------------------------------
    @invariant()
    def reads_back_bit_identical(self) -> None:
        if self.store is None or not self.model:
            return
        ids = sorted(self.model)
        k, v, lens = self._call(f"read_pages({ids})", self.store.read_pages, _t(ids))
        for n, i in enumerate(ids):
            if not torch.equal(bits(torch.stack([k[n], v[n]])), self.model[i][0]):
                _fail("round-trip", f"read_pages returned page {i} with other bytes than written")
            if int(lens[n]) != self.model[i][1]:
                _fail("round-trip", f"page {i} reads back with length {int(lens[n])}, written "
                                    f"{self.model[i][1]}")

    @invariant()
    def placement_and_pins(self) -> None:
        if self.store is None:
            return
        held: Counter[int] = Counter()
        for tier in self.store.backing:
            resident = self._call(f"{tier.name}.resident_ids()", tier.resident_ids).tolist()
            held.update(resident)
            if tier.capacity is not None and len(resident) > tier.capacity:
                _fail("placement", f"tier {tier.name!r} holds {len(resident)} pages over capacity "
                                   f"{tier.capacity}")
        if set(held) != set(self.model) or any(n != 1 for n in held.values()):
            lost = sorted(set(self.model) - set(held))
            twice = sorted(i for i, n in held.items() if n > 1)
            _fail("placement", f"each written page must live in exactly one backing tier: lost {lost}, "
                               f"duplicated {twice}, unknown {sorted(set(held) - set(self.model))}")
        cache = self.store.cache
        if cache is None:
            return
        resident = self._call("cache.resident_ids()", cache.resident_ids)
        if cache.capacity is not None and resident.numel() > cache.capacity:
            _fail("placement", f"device tier holds {resident.numel()} pages over capacity {cache.capacity}")
        if not resident.numel():
            return
        kv = self._call("device_pool", lambda: self.store.device_pool).kv
        for i, s in zip(resident.tolist(), cache.slot_of(resident).tolist(), strict=True):
            if i not in self.model or not torch.equal(bits(kv[s]), self.model[i][0]):
                _fail("round-trip", f"the device tier's copy of page {i} is stale")
        for i in self.pinned:
            if int(cache.slot_of(_t([i]))[0]) != self.pinned_slot[i]:
                _fail("in-flight", f"pinned page {i} left device slot {self.pinned_slot[i]} before release")


def make_store_machine(factory: StoreFactory, **attrs: Any) -> type[StoreContract]:
    """A :class:`StoreContract` subclass building stores with ``factory(config)``; ``attrs`` override
    class attributes (``page_size``, ``head_dim``, ``dtypes``, ``capacities``)."""
    body: dict[str, Any] = {"make_store": lambda self, config: factory(config), **attrs}
    name = getattr(factory, "__name__", "store").replace("<", "").replace(">", "")
    return type(f"StoreContract_{name}", (StoreContract,), body)


def check_store(factory: StoreFactory | type[StoreContract], *, max_examples: int = 15, steps: int = 25,
                settings: Any = None, shrink: bool = True, **attrs: Any) -> None:
    """Run the store contract against ``factory(config) -> store`` (or a :class:`StoreContract`
    subclass); raise :class:`ContractViolation` naming the broken property."""
    from hypothesis.stateful import run_state_machine_as_test

    machine = factory if isinstance(factory, type) and issubclass(factory, StoreContract) \
        else make_store_machine(factory, **attrs)
    s = suite_settings(max_examples, settings, shrink=shrink)
    s = type(s)(s, stateful_step_count=steps)
    run_suite(CONTRACT, lambda: run_state_machine_as_test(machine, settings=s))
