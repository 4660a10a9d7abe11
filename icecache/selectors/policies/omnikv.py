"""OmniKV: a few filter layers attend everything and choose the tokens the next layers attend."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.selectors.bases.selector import SelectorStateError
from icecache.selectors.bases.token_score import TokenScoreSelector
from icecache.selectors.policies.full import FullSelector
from icecache.selectors.types import Selection


@define(slots=False)
class FilterGroup:
    """State shared by one model's OmniKV layers: each filter layer's last token scores, by layer index,
    as ``(num_tokens, scores float32 [B, n])``. One group per policy (the plugin factory keeps it)."""

    scores: dict[int, tuple[int, Tensor]] = field(factory=dict)


@define(kw_only=True, slots=False)
class OmniKVSelector(TokenScoreSelector):
    """Filter layers attend the whole context and rank its tokens; the layers after a filter layer attend
    the tokens it ranked best (within their budget) until the next filter layer.

    Based on OmniKV (Hao et al., ICLR 2025,
    https://proceedings.iclr.cc/paper_files/paper/2025/hash/da1131a86ac3c70e0b7cae89c3d4df22-Abstract-Conference.html):
    within one decode step the important tokens of consecutive layers are alike. A filter layer's
    token score is its exact attention weight summed over all its query heads (one token set for the
    whole layer); a following layer takes the best-scored paged tokens that fit its budget, the same
    positions for each of its KV heads, plus its own sinks and window.

    ``filter_layers``: the filter layers (default: the first sparse layer, then every
    ``filter_every`` layers). Layers must select in order within a step (a model's forward pass does);
    a layer asked before its filter layer raises :class:`SelectorStateError`. Without a ``shared``
    group (a selector built by hand) every layer is a filter layer.

    NOTE: a filter layer's selection is dense (its ledger says so: its budget is the context), as
    OmniKV's filter layers attend everything; budgets compare the other layers.
    """

    name: ClassVar[str] = "omnikv"
    needs_keys: ClassVar[bool] = False
    filter_layers: tuple[int, ...] | None = field(default=None, converter=lambda v: None if v is None else
                                                  tuple(int(x) for x in v))
    filter_every: int = field(default=8, validator=ge(1))
    shared: FilterGroup | None = field(default=None, repr=False)

    @property
    def filter_layer(self) -> int:
        """The filter layer this layer follows (itself for a filter layer)."""
        if self.shared is None:
            return self.layer_idx
        if self.filter_layers is not None:
            before = [f for f in self.filter_layers if f <= self.layer_idx]
            return max(before) if before else self.layer_idx
        first = self.config.dense_layers
        if self.layer_idx < first:
            return self.layer_idx
        return first + (self.layer_idx - first) // self.filter_every * self.filter_every

    @property
    def is_filter(self) -> bool:
        return self.filter_layer == self.layer_idx

    def select(self, query: Tensor) -> Selection:
        if not self.is_filter:
            return super().select(query)
        self._require_prefill("select")
        q = self._group(query)  # [B, H_kv, G, D]
        keys = self.keys  # [B, H_kv, n, D]
        n = keys.shape[2]
        logits = torch.einsum("bhgd,bhnd->bhgn", q.float(), keys.float()) * self.attention_scale(q.shape[-1])
        real = torch.arange(n, device=keys.device)[None, :] >= self.positions.start[:, None]  # [B, n]
        probs = torch.softmax(logits.masked_fill(~real[:, None, None], float("-inf")), dim=-1)
        if self.shared is not None:
            self.shared.scores[self.layer_idx] = (n, probs.sum((1, 2)))  # [B, n]
        # NOTE: a filter layer attends everything: FullSelector's dense selection (same base state)
        return FullSelector.select(self, query)

    def token_scores(self, query: Tensor, keys: Tensor | None) -> Tensor:  # [B, H_kv, n]
        last = self.shared.scores.get(self.filter_layer)
        if last is None or last[0] != self.num_tokens:
            raise SelectorStateError(
                f"layer {self.layer_idx} attends the tokens filter layer {self.filter_layer} chose, which "
                f"has not selected at this step ({self.num_tokens} tokens) yet"
            )
        B, H = query.shape[:2]
        return last[1][:, None].expand(B, H, -1)

    def nbytes(self) -> dict[str, Any]:
        out = super().nbytes()
        if self.is_filter and self.shared is not None and self.layer_idx in self.shared.scores:
            out["filter_scores"] = self.shared.scores[self.layer_idx][1].nbytes
        return out
