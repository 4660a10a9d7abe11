"""Built-in selectors, registered through the same hook as third-party plugins.

Every factory has the signature ``factory(config, *, layer_idx=0, policy=None, **options)``.
NOTE: selector modules are imported inside the factories so that building the registry stays cheap.
"""

from __future__ import annotations

import weakref
from typing import Any

from icecache.core.hookspecs import hookimpl

#: (id(policy), kind) -> the state its layers share (icecache-reuse's ReuseGroup, omnikv's FilterGroup);
#: dropped with the policy
_REUSE_GROUPS: dict[tuple[int, str], Any] = {}


def _shared_group(policy: Any, kind: str, make: Any) -> Any:
    key = (id(policy), kind)
    group = _REUSE_GROUPS.get(key)
    if group is None:
        group = _REUSE_GROUPS[key] = make()
        weakref.finalize(policy, _REUSE_GROUPS.pop, key, None)
    return group


def _reuse_group(policy: Any) -> Any:
    from icecache.selectors.policies.icecache_reuse import ReuseGroup

    return _shared_group(policy, "icecache-reuse", ReuseGroup)


def _omnikv(config: Any, *, layer_idx: int = 0, policy: Any = None, **options: Any) -> Any:
    from icecache.selectors.policies.omnikv import FilterGroup, OmniKVSelector

    if "shared" not in options and policy is not None:
        options["shared"] = _shared_group(policy, "omnikv", FilterGroup)
    return OmniKVSelector(config=config, layer_idx=layer_idx, policy=policy, **options)


def _factory(module: str, cls: str):
    def factory(config: Any, *, layer_idx: int = 0, policy: Any = None, **options: Any) -> Any:
        import importlib

        selector_cls = getattr(importlib.import_module(f"icecache.selectors.policies.{module}"), cls)
        return selector_cls(config=config, layer_idx=layer_idx, policy=policy, **options)

    def check(config: Any, **options: Any) -> None:
        """Build one selector and drop it: bad options fail when the policy is composed."""
        factory(config, layer_idx=config.dense_layers, policy=None, **options)

    factory.__name__ = f"make_{module}"
    if module in _CHECKED_AT_COMPOSITION:
        factory.check = check  # NOTE: compose_policy calls a factory's ``check`` when it has one
    return factory


#: selectors cheap to build without a prompt, whose options are checked by ``compose_policy``
_CHECKED_AT_COMPOSITION = {"h2o_evict", "snapkv_press"}


def _icecache_reuse(config: Any, *, layer_idx: int = 0, policy: Any = None, **options: Any) -> Any:
    from icecache.selectors.policies.icecache_reuse import IceCacheReuseSelector

    if "shared" not in options and policy is not None:
        options["shared"] = _reuse_group(policy)
    return IceCacheReuseSelector(config=config, layer_idx=layer_idx, policy=policy, **options)


#: name -> (module, class, description)
BUILTIN_SELECTORS: dict[str, tuple[str, str, str]] = {
    "icecache": (
        "icecache",
        "IceCacheSelector",
        "semantic pages from the hierarchical page index over MIPS-transformed keys (IceCache)",
    ),
    "clusterkv": (
        "clusterkv",
        "ClusterKVSelector",
        "flat cosine k-means clusters ranked by q.centroid (ClusterKV)",
    ),
    "quest": (
        "quest",
        "QuestSelector",
        "pages of consecutive tokens ranked by the min/max upper bound (Quest)",
    ),
    "arkvale": (
        "arkvale",
        "ArkValeSelector",
        "pages of consecutive tokens ranked by sphere digests q.c + r|q| (ArkVale)",
    ),
    "infllm": (
        "infllm",
        "InfLLMSelector",
        "blocks of consecutive tokens ranked by representative keys (InfLLM)",
    ),
    "snapkv": (
        "snapkv",
        "SnapKVSelector",
        "tokens voted for by the prompt's observation window, pooled (SnapKV)",
    ),
    "pqcache": (
        "pqcache",
        "PQCacheSelector",
        "tokens ranked by product-quantized keys' asymmetric q.k (PQCache)",
    ),
    "magicpig": (
        "magicpig",
        "MagicPIGSelector",
        "tokens colliding with the query in the most SimHash tables (MagicPIG, top-k not sampling)",
    ),
    "shadowkv": (
        "shadowkv",
        "ShadowKVSelector",
        "chunks ranked by their landmark (mean key), outlier chunks always attended (ShadowKV)",
    ),
    "h2o": (
        "h2o",
        "H2OSelector",
        "heavy hitters: tokens with the most attention accumulated through the feedback hook (H2O)",
    ),
    "h2o-evict": (
        "h2o_evict",
        "H2OEvictSelector",
        "H2O as published: heavy hitters + recent window kept at the budget, the rest evicted for good",
    ),
    "snapkv-press": (
        "snapkv_press",
        "SnapKVPressSelector",
        "SnapKV as a press: the prompt cut to the window's top-voted tokens at prefill, the rest evicted",
    ),
    "streamingllm": ("streamingllm", "StreamingLLMSelector", "attention sinks plus the most recent tokens"),
    "oracle": ("oracle", "OracleSelector", "exact top-k tokens by attention weight (the ceiling)"),
    "random": ("random_pages", "RandomSelector", "random pages of consecutive tokens (a control)"),
    "full": ("full", "FullSelector", "dense attention over every token"),
}


@hookimpl
def icecache_register_selectors(register):
    for name, (module, cls, description) in BUILTIN_SELECTORS.items():
        register(name, _factory(module, cls), description=description)
    register(
        "icecache-reuse",
        _icecache_reuse,
        description="IceCache(r): from layer 3, the first layer of each cycle of n layers searches, "
        "the others reuse its pages",
    )
    register(
        "omnikv",
        _omnikv,
        description="filter layers attend everything and choose the tokens the next layers attend (OmniKV)",
    )
