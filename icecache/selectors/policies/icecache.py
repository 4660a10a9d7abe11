"""IceCache: semantic pages found through a hierarchical index over transformed keys."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import define, field
from attrs.validators import ge, in_, instance_of
from torch import Tensor

from icecache.core.signatures import accepts_keyword
from icecache.selectors.bases.selector import SelectorBase
from icecache.selectors.plumbing.fill import greedy_fill
from icecache.selectors.plumbing.merge import merge_heads
from icecache.selectors.types import PageLayout


def make_index(config: Any, policy: Any, index: str, index_options: dict[str, Any]) -> Any:
    """The layer's :class:`~icecache.index.base.PageIndex`: the policy's index when it names one,
    else ``index`` from a fresh registry (unit tests run without a policy)."""
    if policy is not None and getattr(policy, "index", None):
        return policy.make_index()
    registry = getattr(policy, "registry", None)
    if registry is None:
        from icecache.core.plugins import build_registry

        registry = build_registry()
    # NOTE: the policy's registry when there is one: building a registry per layer (every plugin's
    # registration hooks) cost 20 ms a layer, 4% of a 30-layer build
    return registry.create("index", index, config, **index_options)


@define(kw_only=True, slots=False)
class IceCacheSelector(SelectorBase):
    """Select the semantic pages (leaves of the layer's page index) that hold most attention mass.

    Based on IceCache (Mao et al., ICLR 2026). At prefill every paged key goes into the index, which
    groups keys into pages by similarity in the MIPS-transformed space; tokens leaving the window
    are inserted a page at a time (the index is never rebuilt). Per decode step the GQA group's
    query heads search the index together and get one page set per KV head within the budget
    left after sinks and window.

    ``index``: registered index name (used when the policy names none; default ``hierarchy``);
    ``index_options``: its factory options (a policy that names an index uses its own ``options["index"]``
    instead); ``page_index``: a ready index object (overrides both).
    ``prompt_queries``: when ``prefill`` is given the prompt's queries and the index's ``build``
    accepts ``queries=``, the last ``prompt_queries`` positions' queries (all heads of each group) are
    passed so pages group keys that score alike for the queries actually seen (0, the default: never).

    ``resident_logits``: when the index's ``query`` accepts them (the hierarchy index does), the exact
    logits of the sink and window tokens join each query head's normalizer in the GQA merge, so a head
    whose attention sits on the sinks does not outvote one that needs a page.

    ``rerank`` (default 0: off): ask the index for pages holding ``rerank x`` the page budget, then
    re-rank those candidates from their exact keys with the ``mass`` GQA merge (sink and window tokens
    in each head's normalizer; :mod:`~icecache.selectors.plumbing.merge`), by mass per token
    (``rank_by="density"``) or mass (``"mass"``), greedily within the budget. Measured at 4k tokens,
    budget 256: +0.002 to +0.003 attention recall over the index's own ranking, for about twice the
    selection time (docs/benchmarks.md).
    """

    name: ClassVar[str] = "icecache"
    index: str = "hierarchy"
    index_options: dict[str, Any] = field(factory=dict, validator=instance_of(dict))
    page_index: Any = field(default=None, repr=False)
    # NOTE: 0 (off), not 64: query-aware pages lost the needle of an 8k niah_noise sample that every
    # variant without them answers (2026-12-02, docs/index.md); recall moves by -0.002 / +0.0006 at 4k / 8k.
    prompt_queries: int = field(default=0, validator=ge(0))
    rerank: float = field(default=0.0, validator=ge(0.0))
    rank_by: str = field(default="density", validator=in_(("density", "mass")))
    _built: bool = field(default=False, init=False, repr=False)
    _build_kwargs: dict[str, Any] = field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.page_index is None and self.needs_index:
            self.page_index = make_index(self.config, self.policy, self.index, self.index_options)

    @property
    def prompt_query_window(self) -> int:  # NOTE: shadows the base's ClassVar (runners read it)
        index = self.page_index
        return self.prompt_queries if index is not None and accepts_keyword(index.build, "queries") else 0

    @property
    def needs_index(self) -> bool:
        return True

    @property
    def page_size(self) -> int:
        """The index's page size (its leaves sized to their pages), else ``config.page_size``."""
        return getattr(self.page_index, "page_size", self.config.page_size)

    @property
    def layout(self) -> PageLayout:
        if self._pos is None:
            return self.empty_layout()
        if not self._built:
            B, H, _ = self._shape
            return PageLayout(
                token_ids=torch.full(
                    (B, H, 0, self.page_size), -1, dtype=torch.int64, device=self._pos.start.device
                )
            )
        return self.page_index.layout

    def nbytes(self) -> dict[str, int]:
        out = super().nbytes()
        index_bytes = getattr(self.page_index, "nbytes", None)
        if self.is_index_owner and callable(index_bytes):
            out.update({f"index_{k}": v for k, v in index_bytes().items()})
        return out

    @property
    def is_index_owner(self) -> bool:
        """Whether this selector's index is its own (a reuse follower shares its leader's)."""
        return self.page_index is not None

    def _build(self, keys: Tensor, token_ids: Tensor, queries: Tensor | None) -> None:
        self._built, self._build_kwargs = False, {}
        wants_queries = accepts_keyword(self.page_index.build, "queries")
        if queries is not None and self.prompt_queries > 0 and wants_queries:
            B, H, N, D = keys.shape
            recent = queries[:, :, -self.prompt_queries :].to(keys.dtype)  # [B, H_q, Q, D]
            self._build_kwargs["queries"] = recent.reshape(B, H, -1, D)  # [B, H_kv, G * Q, D]
        if self._own is None and accepts_keyword(self.page_index.build, "reader"):
            # NOTE: the index reads keys back through the layer's reader instead of keeping a copy
            self._build_kwargs["reader"] = self.reader
        self._extend(keys, token_ids)

    def _extend(self, keys: Tensor, token_ids: Tensor) -> None:
        if self._built:
            self.page_index.insert(keys, token_ids)
        elif bool((token_ids >= 0).any()):
            # NOTE: the index is built from the first tokens that go into pages (a short prompt may
            # page nothing at prefill); until then there is nothing to search.
            self.page_index.build(keys, token_ids, **self._build_kwargs)
            self._built = True
            self._build_kwargs.pop("queries", None)  # NOTE: used once; not kept with the index

    def _choose(self, query: Tensor, max_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scale = self.attention_scale(query.shape[-1])
        if not self._built:
            B, H = max_tokens.shape
            empty = torch.full((B, H, 0), -1, dtype=torch.int64, device=max_tokens.device)
            return empty, empty, torch.zeros_like(max_tokens)
        kwargs = {}
        if accepts_keyword(self.page_index.query, "resident_logits"):
            kwargs["resident_logits"] = self.resident_logits(query)  # [B, H_kv, G, R]
        if self.rerank <= 0:
            hits = self.page_index.query(query, max_tokens, scale=scale, **kwargs)
            return hits.token_ids, hits.page_ids, hits.num_tokens
        wide = (max_tokens.float() * self.rerank).ceil().to(torch.int64)
        hits = self.page_index.query(query, wide, scale=scale, **kwargs)
        cand = hits.page_ids  # [B, H_kv, K]
        pages = self.page_index.layout.token_ids  # [B, H_kv, P, S]
        B, H, K = cand.shape
        S = pages.shape[-1]
        toks = pages.gather(2, cand.clamp(min=0)[..., None].expand(B, H, K, S))
        toks = torch.where((cand >= 0)[..., None], toks, -1)  # [B, H_kv, K, S]
        k, valid = self.keys_at(toks), toks >= 0  # [B, H_kv, K, S, D]
        logits = torch.einsum("bhgd,bhksd->bhgks", query.to(k.dtype), k) * scale
        logmass = torch.logsumexp(logits.masked_fill(~valid[:, :, None], float("-inf")), -1)  # [B,H,G,K]
        merged = merge_heads(
            logmass / scale, "mass", scale=scale, resident_logits=self.resident_logits(query)
        )
        lens = valid.sum(-1)
        if self.rank_by == "density":
            merged = merged - torch.log(lens.clamp(min=1).float())
        merged = torch.where(lens > 0, merged, float("-inf"))
        order, count = greedy_fill(merged, lens, max_tokens)
        page_ids = torch.where(order >= 0, cand.gather(2, order.clamp(min=0)), -1)
        sel_toks = toks.gather(2, order.clamp(min=0)[..., None].expand(*order.shape, S))
        sel_toks = torch.where((order >= 0)[..., None], sel_toks, -1).reshape(B, H, -1)
        return sel_toks, page_ids, count
