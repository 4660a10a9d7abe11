"""Eviction: a selector that drops tokens for good, and how runners hand that to storage.

Selection alone keeps every token in the store and picks up to the budget each step. A selector that
sets ``evicts = True`` also drops tokens for good (kvpress's presses, H2O and SnapKV as published):

* it calls :meth:`~icecache.selectors.bases.selector.SelectorBase.evict` with the positions to drop
  (after ``prefill``, in ``append`` or in ``observe``); the base checks them (only paged tokens, never a
  sink or a window token; a page-level selector drops whole pages of its layout; never a row's last
  token: :class:`~icecache.core.errors.EvictionError` naming the position, page or row) and from then on
  neither the selector's selection nor its keys include them;
* a runner drains ``evictions()`` (int64 ``[B, H_kv, E]``, ``-1`` padded, the positions dropped since the
  last call, or ``None``) after ``prefill`` and after every ``append`` and ``observe``, and hands them to
  storage (:meth:`~icecache.integrations.hf.sparse_kv.SparseLayerKV.evict`), which frees a page's slot
  on every tier once all its tokens are gone.

The evicted set only grows. A runner that does not drain ``evictions()`` is still correct (the selector
never selects an evicted token); the store just keeps their bytes.

NOTE: a selector that does not evict costs nothing here: runners read one class attribute at prefill.
"""

from __future__ import annotations

from typing import Any


def evicts(selector: Any) -> bool:
    """Whether ``selector`` drops tokens for good (``evicts = True`` and an ``evictions`` method)."""
    return bool(getattr(selector, "evicts", False)) and callable(getattr(selector, "evictions", None))
