"""Storage tiers (device / host / disk), the page pool and the tiered store that moves pages in bulk.

Entry points: :class:`icecache.storage.store.TieredStore` (``build``, ``from_policy``),
:class:`icecache.storage.pool.PagePool`, the :class:`icecache.storage.base.Tier` protocol, the
documented tier base classes :class:`icecache.storage.slots.SlotTier` and
:class:`icecache.storage.memory.MemoryTier`, and the eviction policies of
:mod:`icecache.storage.eviction`.
See ``docs/storage.md``.
"""
