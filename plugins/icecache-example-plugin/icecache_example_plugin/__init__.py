"""An example icecache plugin, installed as its own package with an ``icecache`` entry point.

It adds one component (the ``recency-quest`` selector, :mod:`icecache_example_plugin.selector`) and
one observer (``icecache_selection_made``, counting steps and attended tokens per layer).
"""

from __future__ import annotations

from typing import Any

from icecache.core.hookspecs import hookimpl

#: per-layer counts, filled by the observer hook; a test or a user reads it after a run. ``tokens`` is
#: a 0-dim tensor on the selection's device: an observer that called ``float()`` each step would stall a
#: GPU once per layer and step (and cost ~0.3 ms a layer-step on the CPU)
SELECTION_STATS: dict[int, dict[str, Any]] = {}


@hookimpl
def icecache_register_selectors(register):
    from icecache_example_plugin.selector import make_recency_quest

    register("recency-quest", make_recency_quest,
             description="Quest's page bound plus a recency bonus (example plugin)")


@hookimpl
def icecache_selection_made(layer_idx, selection):
    stats = SELECTION_STATS.setdefault(layer_idx, {"steps": 0, "tokens": 0.0})
    stats["steps"] += 1
    stats["tokens"] = stats["tokens"] + selection.ledger.total.float().mean()
