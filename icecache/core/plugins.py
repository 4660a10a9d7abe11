"""A fresh plugin manager per call: no global state, nothing loaded at import time.

Set ``ICECACHE_PLUGINS`` to a comma-separated list of entry-point names to load only those
(empty string: none; a name that is not installed raises :class:`ConfigError` naming it); unset,
every installed ``icecache`` entry point loads.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import Any

import pluggy

from icecache.core import hookspecs
from icecache.core.errors import ConfigError
from icecache.core.registry import KINDS, Registry

#: modules holding the built-in hook implementations, registered like any plugin
BUILTIN_PLUGINS: tuple[str, ...] = (
    "icecache.selectors.plugin",
    "icecache.index.plugin",
    "icecache.storage.plugin",
    "icecache.kernels.plugin",
    "icecache.budgets.plugin",
)


def get_plugin_manager(*, load_entrypoints: bool = True, builtins: bool = True,
                       extra: tuple[Any, ...] = ()) -> pluggy.PluginManager:
    """Build a new manager with built-ins, installed entry points and ``extra`` plugin objects."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if builtins:
        for module_name in BUILTIN_PLUGINS:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:  # a built-in package not written yet
                if exc.name != module_name:
                    raise
                continue
            pm.register(module, name=f"builtin:{module_name}")
    if load_entrypoints:
        _load_entrypoints(pm)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    wanted = os.environ.get("ICECACHE_PLUGINS")
    allowed = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    installed = entry_points(group=hookspecs.ENTRY_POINT_GROUP)
    if allowed:
        unknown = sorted(allowed - {ep.name for ep in installed})
        if unknown:
            # NOTE: a misspelled name would otherwise silently run without the plugin
            names = ", ".join(map(repr, unknown))
            have = ", ".join(sorted(ep.name for ep in installed)) or "(none)"
            raise ConfigError(f"ICECACHE_PLUGINS names {names}: no installed plugin has that entry-point "
                              f"name (group {hookspecs.ENTRY_POINT_GROUP!r}); installed: {have}")
    for ep in installed:
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist else ""
        pm.register(ep.load(), name=f"entrypoint:{ep.name}{dist}")


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every registration hook, recording which plugin registered what."""
    pm = pm or get_plugin_manager()
    registry = Registry()
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            source = impl.plugin_name

            def register(name, factory, description="", _kind=kind, _source=source):
                registry.add(_kind, name, factory, description, _source)

            impl.function(**({"register": register} if "register" in impl.argnames else {}))
    return registry
