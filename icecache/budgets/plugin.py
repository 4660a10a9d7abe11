"""Built-in budget policies, registered through the same hook as third-party plugins."""

from __future__ import annotations

from typing import Any

from icecache.core.config import CacheConfig
from icecache.core.hookspecs import hookimpl


def _make(name: str) -> Any:
    def factory(config: CacheConfig, **options: Any) -> Any:
        from icecache.budgets.adakv import AdaKVBudget
        from icecache.budgets.base import BudgetPolicy
        from icecache.budgets.explicit import PerLayerBudget
        from icecache.budgets.pyramid import PyramidBudget

        cls = {"uniform": BudgetPolicy, "pyramid": PyramidBudget, "adakv": AdaKVBudget,
               "per-layer": PerLayerBudget}[name]
        return cls(config=config, **options)

    factory.__name__ = f"budget_{name.replace('-', '_')}"
    return factory


@hookimpl
def icecache_register_budgets(register):
    register("uniform", _make("uniform"), description="config.budget for every sparse layer and KV head")
    register("pyramid", _make("pyramid"),
             description="PyramidKV: layer budgets falling linearly from (1+taper) to (1-taper) x budget")
    register("adakv", _make("adakv"),
             description="Ada-KV: per-head budgets from the prompt's attention concentration (needs queries)")
    register("per-layer", _make("per-layer"),
             description="budgets given by hand per sparse layer (and optionally per KV head)")
