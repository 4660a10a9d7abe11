"""A cache policy: components composed by name, checked against the registry."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pluggy
from attrs import field, frozen

from icecache.core.config import CacheConfig, TierConfig
from icecache.core.errors import ConfigError, from_attrs_validator, message_of
from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.core.registry import Registry

DEFAULT_TIERS: tuple[str, ...] = ("device", "host")


def default_tier_stack(tiers: TierConfig | None) -> tuple[str, ...]:
    """The tiers a cache composes by default: device and host, and disk when ``tiers`` names a disk
    directory (a directory given without the tier would be silently unused)."""
    return (*DEFAULT_TIERS, "disk") if tiers is not None and tiers.disk_dir is not None else DEFAULT_TIERS


@frozen(kw_only=True)
class CachePolicy:
    """A named composition. Build it with :func:`compose_policy`; every name is already checked.

    ``options`` holds keyword options per component kind, e.g. ``{"selector": {"reuse_cycle": 2}}``.
    """

    config: CacheConfig
    selector: str
    index: str | None
    clusterer: str | None
    tiers: tuple[str, ...]
    kernel: str
    options: dict[str, dict[str, Any]] = field(factory=dict)
    registry: Registry = field(eq=False, repr=False)
    plugin_manager: pluggy.PluginManager = field(eq=False, repr=False)
    #: the budget policy's name, and the policy itself (built and checked once by compose_policy)
    budget_policy: str = "uniform"
    budgets: Any = field(default=None, eq=False, repr=False)

    def layer_config(self, layer_idx: int) -> CacheConfig:
        """The config of one layer's selector: ``config`` with that layer's budget under the budget
        policy (``config`` itself under ``uniform``)."""
        if self.budgets is None or self.budgets.uniform or self.config.geometry is None:
            return self.config
        return self.budgets.layer_config(layer_idx, self.config.geometry.num_layers)

    @property
    def hook(self) -> Any:
        """Observer hooks, e.g. ``policy.hook.icecache_selection_made(layer_idx=0, selection=s)``."""
        return self.plugin_manager.hook

    def make_selector(self, layer_idx: int) -> Any:
        """A new selector for one layer; the first ``config.dense_layers`` layers get ``full``."""
        name = "full" if layer_idx < self.config.dense_layers else self.selector
        options = self.options.get("selector", {}) if name == self.selector else {}
        config = self.layer_config(layer_idx) if name == self.selector else self.config
        with _option_errors(f"selector {name!r}"):
            return self.registry.create("selector", name, config, layer_idx=layer_idx, policy=self,
                                        **options)

    def make_index(self) -> Any:
        if self.index is None:
            raise ConfigError(f"policy with selector {self.selector!r} has no index")
        with _option_errors(f"index {self.index!r}"):
            return self.registry.create("index", self.index, self.config, **self.options.get("index", {}))

    def make_clusterer(self) -> Any:
        if self.clusterer is None:
            raise ConfigError(f"policy with selector {self.selector!r} has no clusterer")
        return self.registry.create("clusterer", self.clusterer, **self.options.get("clusterer", {}))

    def tier_options(self, name: str) -> dict[str, Any]:
        """Options of the tier ``name`` (``options[name]``), an ``eviction`` name resolved through the
        registry."""
        from icecache.storage.eviction import resolve_eviction_option

        return resolve_eviction_option(dict(self.options.get(name, {})), self.registry)

    def make_tier(self, name: str) -> Any:
        with _option_errors(f"tier {name!r}"):
            return self.registry.create("tier", name, self.config, **self.tier_options(name))

    def make_kernels(self) -> Any:
        return self.registry.create("kernel", self.kernel, **self.options.get("kernel", {}))

    def describe(self) -> dict[str, Any]:
        return {"selector": self.selector, "index": self.index, "clusterer": self.clusterer,
                "tiers": list(self.tiers), "kernel": self.kernel, "budget": self.config.budget,
                "page_size": self.config.page_size, "sink_tokens": self.config.sink_tokens,
                "window_tokens": self.config.window_tokens, "dense_layers": self.config.dense_layers,
                "budget_policy": self.budget_policy}


@contextlib.contextmanager
def _option_errors(what: str, options: dict[str, Any] | None = None) -> Iterator[None]:
    """An attrs validator's error (a raw ``(message, Attribute, ...)`` tuple when printed) becomes a
    :class:`ConfigError` with its message, which names the option and the value. With ``options``
    (the keywords the factory gets), so does a call that does not fit the factory's signature (an
    unknown or a missing option)."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        if options is not None and isinstance(exc, TypeError) and _SIGNATURE_ERROR.search(str(exc)):
            raise ConfigError(f"options {sorted(options)} do not fit {what}: {exc}") from None
        if not from_attrs_validator(exc):
            raise
        raise ConfigError(f"options of {what}: {message_of(exc)}") from exc


#: how Python words a call that does not match the callee's parameters
_SIGNATURE_ERROR = re.compile(r"unexpected keyword argument|missing \d+ required|takes \d+ positional|"
                              r"positional arguments? but")


def compose_policy(
    *,
    selector: str,
    config: CacheConfig | None = None,
    index: str | None = None,
    clusterer: str | None = None,
    tiers: tuple[str, ...] | list[str] = DEFAULT_TIERS,
    kernel: str = "auto",
    options: dict[str, dict[str, Any]] | None = None,
    plugin_manager: pluggy.PluginManager | None = None,
    budget_policy: str = "uniform",
) -> CachePolicy:
    """Compose a policy by component names; an unknown name raises
    :class:`~icecache.core.errors.UnknownComponentError` listing the available ones. ``budget_policy``
    (``options["budget"]`` its options) spreads the budget over layers and heads; it is built and
    checked against ``config.geometry``'s layers here (:class:`BudgetError` names a bad value)."""
    pm = plugin_manager or get_plugin_manager()
    registry = build_registry(pm)
    registry.get("selector", selector)
    if index is not None:
        registry.get("index", index)
    if clusterer is not None:
        registry.get("clusterer", clusterer)
    tiers = tuple(tiers)
    if not tiers:
        raise ConfigError("tiers must name at least one storage tier, got ()")
    if len(set(tiers)) != len(tiers):
        raise ConfigError(f"tiers must be distinct, got {list(tiers)}")
    for tier in tiers:
        registry.get("tier", tier)
    registry.get("kernel", kernel)
    config = config or CacheConfig()
    options = dict(options or {})
    _check_options(options, tiers, registry, config)
    check = getattr(registry.get("selector", selector).factory, "check", None)
    if callable(check):  # NOTE: e.g. an evicting policy refuses to evict what it promised to keep
        with _option_errors(f"selector {selector!r}", options.get("selector", {})):
            check(config, **options.get("selector", {}))
    with _option_errors(f"budget policy {budget_policy!r}", options.get("budget", {})):
        budgets = registry.create("budget", budget_policy, config, **options.get("budget", {}))
    if not budgets.uniform:
        if selector == "icecache-reuse":
            # NOTE: its layers reuse their leader's selection, which carries the leader's budget
            raise ConfigError(f"budget policy {budget_policy!r} gives layers their own budgets; "
                              "icecache-reuse layers attend their leader layer's selection: use the uniform "
                              "policy with it")
        if config.geometry is None:
            raise ConfigError(f"budget policy {budget_policy!r} needs the model's layers: give "
                              "CacheConfig.geometry (CacheConfig.from_model_config does)")
        budgets.check(config.geometry.num_layers)
    return CachePolicy(config=config, selector=selector, index=index, clusterer=clusterer, tiers=tiers,
                       kernel=kernel, options=options, registry=registry, plugin_manager=pm,
                       budget_policy=budget_policy, budgets=budgets)


#: keys of ``options`` that are not tier names
OPTION_KINDS: tuple[str, ...] = ("selector", "index", "clusterer", "kernel", "budget")


def _check_options(options: dict[str, Any], tiers: tuple[str, ...], registry: Registry,
                   config: CacheConfig) -> None:
    """Every ``options`` key is a component kind or a tier of the stack, every value a dict, and every
    eviction name registered: :class:`ConfigError` / ``UnknownComponentError`` name the bad one."""
    for key, value in options.items():
        if key not in OPTION_KINDS and key not in tiers:
            raise ConfigError(f"options names {key!r}, which is neither a component kind "
                              f"({', '.join(OPTION_KINDS)}) nor a tier of the stack {list(tiers)}")
        if not isinstance(value, dict):
            raise ConfigError(f"options[{key!r}] must be a dict of keyword options, got {value!r}")
    registry.get("eviction", config.tiers.eviction)
    for tier in tiers:
        eviction = options.get(tier, {}).get("eviction")
        if isinstance(eviction, str):
            registry.get("eviction", eviction)
