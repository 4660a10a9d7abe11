"""Every registered built-in selector with the options the shared test matrix runs it with
(kvpress's ``default_presses`` style): a new selector is tested by adding one line here."""

from __future__ import annotations

from typing import Any

import pytest

from icecache.core.config import CacheConfig
from icecache.core.plugins import build_registry

#: (name, options): small options keep hypothesis examples fast
DEFAULT_SELECTORS: list[tuple[str, dict[str, Any]]] = [
    ("full", {}),
    ("streamingllm", {}),
    ("oracle", {}),
    ("random", {}),
    ("quest", {}),
    ("arkvale", {}),
    ("clusterkv", {"iters": 3}),
    ("infllm", {"block_size": 32, "local_window": 8}),
    ("icecache", {}),
    ("icecache-reuse", {}),
    ("snapkv", {"window": 8, "kernel_size": 3}),
    ("snapkv:refresh", {"window": 4, "kernel_size": 3, "refresh_every": 2}),
    ("pqcache", {"subspaces": 2, "centroids": 8, "iters": 3}),
    ("magicpig", {"bits": 4, "tables": 8}),
    ("shadowkv", {"outliers": 1}),
    ("omnikv", {}),
    ("h2o", {"window": 4}),
    ("h2o-evict", {"window": 4}),
    ("snapkv-press", {"window": 4, "kernel_size": 3}),
]

#: selectors that attend dense (no budget)
DENSE = {"full", "omnikv"}  # NOTE: omnikv built alone (no shared group) is a filter layer: dense
#: token-level selectors (no pages in their selection)
TOKEN_LEVEL = {"streamingllm", "oracle", "full", "snapkv", "snapkv:refresh", "pqcache", "magicpig", "omnikv",
               "h2o", "h2o-evict", "snapkv-press"}

_REGISTRY = None


def registry():
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY


def make_selector(name: str, config: CacheConfig, *, layer_idx: int = 2, **options: Any) -> Any:
    """A selector built through the registry; skips the test when an optional part (the page index
    backend) is not available in this checkout."""
    opts = dict(dict(DEFAULT_SELECTORS).get(name, {}), **options)
    name = name.split(":")[0]  # NOTE: "name:variant" rows run the same selector with other options
    try:
        return registry().create("selector", name, config, layer_idx=layer_idx, policy=None, **opts)
    except (ModuleNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the checkout
        pytest.skip(f"{name}: {exc}")


def available(name: str) -> bool:
    """Whether ``name`` can be built in this checkout (its optional backend is importable)."""
    try:
        registry().create("selector", name.split(":")[0], CacheConfig(), layer_idx=2, policy=None)
    except (ModuleNotFoundError, ImportError):
        return False
    return True


def factory_for(name: str):
    def factory(config: CacheConfig) -> Any:
        return make_selector(name, config)

    factory.__name__ = f"selector[{name}]"
    return factory


def params(names=None):
    return [pytest.param(n, id=n) for n, _ in DEFAULT_SELECTORS if names is None or n in names]
