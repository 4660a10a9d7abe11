"""Every hook icecache calls. The docstring of each hook is its contract.

Two kinds of hook:

* **registration hooks** take a ``register`` callback. A plugin calls
  ``register(name, factory, description=...)`` once per component it adds. Built-in components
  register through these same hooks.
* **observer hooks** are called when something happens; a plugin records metrics from them.
  Their return values are ignored.

Calls are keyword-only; an implementation may accept a subset of a hook's arguments, so hooks
can gain arguments without breaking plugins.
"""

from __future__ import annotations

import pluggy

PROJECT = "icecache"
ENTRY_POINT_GROUP = "icecache"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def icecache_register_selectors(register):
    """Register page selectors.

    ``register(name, factory, description="")`` where ``factory(config: CacheConfig, **options)``
    returns an object following :class:`icecache.selectors.base.Selector` (one per layer).
    """


@hookspec
def icecache_register_clusterers(register):
    """Register key clusterers.

    ``register(name, factory, description="")`` where ``factory(**options)`` returns an object
    following :class:`icecache.index.clustering.base.Clusterer`: it groups keys into pages of at
    most ``page_size`` slots.
    """


@hookspec
def icecache_register_indexes(register):
    """Register page indexes (the search structure over pages that a selector queries).

    ``register(name, factory, description="")`` where ``factory(config: CacheConfig, **options)``
    returns an object following :class:`icecache.index.base.PageIndex`.
    """


@hookspec
def icecache_register_tiers(register):
    """Register storage tiers.

    ``register(name, factory, description="")`` where ``factory(config: CacheConfig, **options)``
    returns an object following :class:`icecache.storage.base.Tier`.
    """


@hookspec
def icecache_register_evictions(register):
    """Register tier eviction policies (the order in which a tier gives up ready, unpinned pages).

    ``register(name, factory, description="")`` where ``factory()`` returns a fresh
    :class:`icecache.storage.eviction.EvictionPolicy` (one per tier). A tier built with
    ``eviction=name`` (or ``TierConfig(eviction=name)``) uses it.
    """


@hookspec
def icecache_register_budgets(register):
    """Register budget policies (how the token budget is spread over sparse layers and KV heads).

    ``register(name, factory, description="")`` where ``factory(config: CacheConfig, **options)``
    returns an :class:`icecache.budgets.base.BudgetPolicy`; ``compose_policy(budget_policy=name)``
    builds it once and checks it against the model's layers.
    """


@hookspec
def icecache_register_kernels(register):
    """Register kernel backends.

    ``register(name, factory, description="")`` where ``factory()`` returns an object following
    :class:`icecache.kernels.base.KernelBackend` (sparse paged attention, gather/scatter, scoring).
    """


@hookspec
def icecache_prefill_done(layer_idx, num_tokens, policy):
    """Observer: the prefill of ``num_tokens`` tokens finished for ``layer_idx`` and its index is built.

    ``policy`` is the :class:`icecache.core.policy.CachePolicy` in use.
    """


@hookspec
def icecache_selection_made(layer_idx, selection):
    """Observer: a selector chose pages for one decode step of ``layer_idx``.

    ``selection`` is an :class:`icecache.selectors.base.Selection` (pages, tokens and ledger).
    """


@hookspec
def icecache_pages_loaded(tier, page_ids, nbytes, copies):
    """Observer: ``page_ids`` (int64 tensor) were loaded into ``tier`` (its name) in ``copies`` copies
    moving ``nbytes`` bytes."""


@hookspec
def icecache_pages_evicted(tier, page_ids):
    """Observer: ``page_ids`` (int64 tensor) were evicted from ``tier`` (its name)."""
