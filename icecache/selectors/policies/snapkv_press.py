"""SnapKV as a press: compress the prompt at prefill to the observation window's top-voted tokens."""

from __future__ import annotations

from typing import ClassVar

from attrs import define

from icecache.core.errors import ConfigError
from icecache.selectors.bases.evicting import EvictingTokenSelector
from icecache.selectors.policies.snapkv import SnapKVSelector


@define(kw_only=True, slots=False)
class SnapKVPressSelector(EvictingTokenSelector, SnapKVSelector):
    """Keep the prompt tokens the observation window votes for, evict the rest at prefill.

    Based on https://arxiv.org/abs/2404.14469 (Li et al., NeurIPS 2024) and kvpress's ``SnapKVPress``:
    the prompt's last ``window`` queries vote (attention summed over the window and the GQA group,
    average-pooled over ``kernel_size`` positions); at prefill every row keeps sinks, the recent window
    (which holds the observation window: ``window <= config.window_tokens``) and the best-voted prompt
    tokens up to the budget, and the others are evicted for good.

    NOTE (framework): SnapKV lets the cache grow with the generated tokens; here the budget bounds what
    is kept, so each generated token that leaves the window evicts the lowest-voted kept token (tokens
    generated after the vote rank above every voted one, so the prompt's are evicted first).
    ``refresh_every`` is refused (it re-votes over keys that are gone).
    """

    name: ClassVar[str] = "snapkv-press"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.refresh_every:
            raise ConfigError(f"snapkv-press votes once, at prefill: refresh_every={self.refresh_every} "
                              "would re-vote over evicted keys; use the snapkv selector for that")
        if self.window > self.config.window_tokens:
            raise ConfigError(f"snapkv-press keeps its observation window: window={self.window} must be at "
                              f"most the recent window window_tokens={self.config.window_tokens} (budget "
                              f"{self.config.budget}), or its queries' own tokens could be evicted")
