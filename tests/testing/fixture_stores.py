"""Deliberately broken stores: the real TieredStore with one behaviour twisted."""

from __future__ import annotations

from icecache.storage.store import TieredStore

STACK = ("device", "host", "disk")


class NoWritethroughStore(TieredStore):
    """Rewrites a page in its backing tier but leaves a stale copy in the device tier."""

    def _writethrough(self, ids, records):
        return None


class PinlessStore(TieredStore):
    """Ignores ``pin=True``: pinned pages can be evicted under the caller."""

    def load(self, page_ids, *, pin=False):
        return super().load(page_ids, pin=False)

    def release(self, page_ids):
        return None


class EvictLosesPageStore(TieredStore):
    """``evict`` drops the backing copy too: the page is lost."""

    def evict(self, page_ids):
        super().evict(page_ids)
        for tier in self.backing:
            held = page_ids[tier.lookup(page_ids)]
            if held.numel():
                tier.free(held)


class FirstSlotStore(TieredStore):
    """``read_tokens`` answers every slot with the page's first one."""

    def read_tokens(self, page_ids, slots, *, values=False):
        return super().read_tokens(page_ids, slots * 0, values=values)


def factory(cls):
    def make(config):
        return cls.build(config, STACK)

    make.__name__ = cls.__name__
    return make


#: broken store -> the properties the suite may report for it
BROKEN_STORES = {
    NoWritethroughStore: {"round-trip"},
    PinlessStore: {"in-flight"},
    EvictLosesPageStore: {"placement", "round-trip", "no-error"},
    FirstSlotStore: {"tokens"},
}
