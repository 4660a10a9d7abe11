"""IceCache(r): layers of a cycle reuse the pages their first layer searched."""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.selectors.bases.selector import SelectorStateError
from icecache.selectors.policies.icecache import IceCacheSelector
from icecache.selectors.types import PageLayout, Selection


@define(slots=False)
class ReuseGroup:
    """State shared by the layers of one model: each leader layer's selector, by layer index.

    One group per policy (the plugin factory keeps it); pass ``shared=ReuseGroup()`` to build
    layers by hand. Layers must see the same prompt and appends (they do: one model).
    """

    leaders: dict[int, Any] = field(factory=dict)


@define(kw_only=True, slots=False)
class IceCacheReuseSelector(IceCacheSelector):
    """IceCache where, from layer ``reuse_start`` on, in cycles of ``reuse_cycle`` layers, only the
    first layer of a cycle searches its index; the next layers of the cycle attend the same pages.

    Based on the IceCache(r) variant (Mao et al., ICLR 2026): query cost drops by the cycle length
    for a small accuracy loss. NOTE: a follower reuses the leader's page *layout* too (same token
    groups, same page ids), so its selection is the leader's exactly, within the same budget, and
    it needs no index of its own. Layers must select in order within a step (leader first), as a
    model's forward pass does; a follower asked before its leader raises
    :class:`SelectorStateError`. Without a ``shared`` group every layer searches on its own.
    """

    name: ClassVar[str] = "icecache-reuse"
    reuse_cycle: int = field(default=2, validator=ge(1))
    reuse_start: int = field(default=3, validator=ge(0))
    shared: ReuseGroup | None = field(default=None, repr=False)
    _last: tuple[int, Selection] | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.is_leader and self.shared is not None:
            self.shared.leaders[self.layer_idx] = self

    @property
    def leader_layer(self) -> int:
        if self.shared is None or self.layer_idx < self.reuse_start:
            return self.layer_idx
        return self.reuse_start + (self.layer_idx - self.reuse_start) // self.reuse_cycle * self.reuse_cycle

    @property
    def is_leader(self) -> bool:
        return self.leader_layer == self.layer_idx

    @property
    def needs_index(self) -> bool:
        return self.is_leader

    def _leader(self) -> IceCacheReuseSelector:
        leader = self.shared.leaders.get(self.leader_layer)
        if leader is None:
            raise SelectorStateError(
                f"layer {self.layer_idx} reuses layer {self.leader_layer}'s pages, "
                f"but no selector was built for layer {self.leader_layer}"
            )
        return leader

    @property
    def layout(self) -> PageLayout:
        if self.is_leader or self._pos is None:
            return super().layout
        return self._leader().layout

    @property
    def page_size(self) -> int:
        if self.is_leader:
            return super().page_size
        # NOTE: a property must not raise before prefill (isinstance reads it): no leader yet -> config
        leader = self.shared.leaders.get(self.leader_layer)
        return self.config.page_size if leader is None else leader.page_size

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        if self.is_leader:
            super()._build(keys, token_ids, queries)

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        if self.is_leader:
            super()._extend(keys, token_ids)

    def select(self, query: Tensor) -> Selection:
        if self.is_leader:
            selection = super().select(query)
            self._last = (self.num_tokens, selection)
            return selection
        self._require_prefill("select")
        self._group(query)  # validates the shape
        last = self._leader()._last
        if last is None or last[0] != self.num_tokens:
            raise SelectorStateError(
                f"layer {self.layer_idx} reuses layer {self.leader_layer}'s pages, which "
                f"has not selected at this step ({self.num_tokens} tokens) yet"
            )
        selection = last[1]
        self._notify(selection)
        return selection
