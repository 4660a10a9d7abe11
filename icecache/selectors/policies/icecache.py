"""IceCache: semantic pages found through a hierarchical index over transformed keys."""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import define, field
from torch import Tensor

from icecache.selectors.bases.selector import SelectorBase
from icecache.selectors.types import PageLayout


def make_index(config: Any, policy: Any, index: str, index_options: dict[str, Any]) -> Any:
    """The layer's :class:`~icecache.index.base.PageIndex`: the policy's index when it names one,
    else ``index`` from a fresh registry (unit tests run without a policy)."""
    if policy is not None and getattr(policy, "index", None):
        return policy.make_index()
    from icecache.core.plugins import build_registry

    return build_registry().create("index", index, config, **index_options)


@define(kw_only=True, slots=False)
class IceCacheSelector(SelectorBase):
    """Select the semantic pages (leaves of the layer's page index) that hold most attention mass.

    Based on IceCache (Mao et al., ICLR 2026). At prefill every paged key goes into the index, which
    groups keys into pages by similarity in the MIPS-transformed space; tokens leaving the window
    are inserted a page at a time (the index is never rebuilt). Per decode step the GQA group's
    query heads search the index together and get one page set per KV head within the budget
    left after sinks and window.

    ``index``: registered index name (used when the policy names none; default ``hierarchy``);
    ``index_options``: its factory options; ``page_index``: a ready index object (overrides both).
    """

    name: ClassVar[str] = "icecache"
    index: str = "hierarchy"
    index_options: dict[str, Any] = field(factory=dict)
    page_index: Any = field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.page_index is None and self.needs_index:
            self.page_index = make_index(self.config, self.policy, self.index, self.index_options)

    @property
    def needs_index(self) -> bool:
        return True

    @property
    def layout(self) -> PageLayout:
        if self._pos is None:
            return self.empty_layout()
        return self.page_index.layout

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        self.page_index.build(keys, token_ids)

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        self.page_index.insert(keys, token_ids)

    def _choose(self, query: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hits = self.page_index.query(query, max_tokens, scale=self.attention_scale(query.shape[-1]))
        return hits.token_ids, hits.page_ids, hits.num_tokens
