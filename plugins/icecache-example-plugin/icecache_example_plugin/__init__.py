"""An example icecache plugin, installed as its own package with an ``icecache`` entry point.

It adds one observer (``SelectionStats``, counting pages and tokens per step). A selector is
added in :mod:`icecache_example_plugin.selector`.
"""

from __future__ import annotations

from icecache.core.hookspecs import hookimpl

#: per-layer counts, filled by the observer hook; a test or a user reads it after a run
SELECTION_STATS: dict[int, dict[str, float]] = {}


@hookimpl
def icecache_selection_made(layer_idx, selection):
    stats = SELECTION_STATS.setdefault(layer_idx, {"steps": 0, "tokens": 0.0})
    stats["steps"] += 1
    stats["tokens"] += float(selection.ledger.total.float().mean())
