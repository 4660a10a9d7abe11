"""Component registry filled through the registration hooks, with provenance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field, frozen

from icecache.core.errors import ConfigError, UnknownComponentError

#: component kind -> the registration hook that fills it
KINDS: dict[str, str] = {
    "selector": "icecache_register_selectors",
    "clusterer": "icecache_register_clusterers",
    "index": "icecache_register_indexes",
    "tier": "icecache_register_tiers",
    "eviction": "icecache_register_evictions",
    "budget": "icecache_register_budgets",
    "kernel": "icecache_register_kernels",
}


@frozen
class Registration:
    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    source: str  # plugin name, e.g. "builtin:icecache.selectors" or "entrypoint:my-plugin (pkg 1.0)"


@define
class Registry:
    """Components by kind and name. Built by :func:`icecache.core.plugins.build_registry`."""

    entries: dict[str, dict[str, Registration]] = field(factory=lambda: {k: {} for k in KINDS})

    def add(self, kind: str, name: str, factory: Callable[..., Any], description: str, source: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source} registered a {kind} with an invalid name {name!r}")
        if not callable(factory):
            raise ConfigError(f"{source} registered {kind} {name!r} with a non-callable factory {factory!r}")
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise ConfigError(
                f"{kind} {name!r} registered twice: by {existing.source} and by {source}"
            )
        self.entries[kind][name] = Registration(kind, name, factory, description, source)

    def get(self, kind: str, name: str) -> Registration:
        if kind not in self.entries:
            raise UnknownComponentError("component kind", kind, list(self.entries))
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownComponentError(kind, name, list(self.entries[kind])) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def create(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(kind, name).factory(*args, **kwargs)

    def all(self) -> list[Registration]:
        return [r for kind in KINDS for r in sorted(self.entries[kind].values(), key=lambda r: r.name)]
