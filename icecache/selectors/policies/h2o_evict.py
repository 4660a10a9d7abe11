"""H2O as published: a fixed-size cache of heavy hitters plus the recent window, the rest evicted."""

from __future__ import annotations

from typing import ClassVar

from attrs import define

from icecache.selectors.bases.evicting import EvictingTokenSelector
from icecache.selectors.policies.h2o import H2OSelector


@define(kw_only=True, slots=False)
class H2OEvictSelector(EvictingTokenSelector, H2OSelector):
    """Keep the heavy hitters (largest accumulated attention) and the recent window; evict the rest.

    Based on https://arxiv.org/abs/2306.14048 (Zhang et al., NeurIPS 2023), Algorithm 1: the cache holds
    ``budget`` tokens per KV head (sinks + ``config.window_tokens`` recent tokens + heavy hitters); each
    decode step's attention (the feedback hook) adds to every kept token's score, and when a token
    joins, the kept token with the lowest accumulated score is evicted for good. After prefill the
    cache is cut to the budget by the prompt's attention (here: its last ``window`` queries; H2O sums
    every prompt query). Attention covers everything kept.

    NOTE: H2O attends the new token together with the ``budget`` kept ones, then evicts; here the
    ledger's budget bounds what is attended, so the eviction comes first (with the scores so far).
    Sinks are always kept (H2O has none; ``sink_tokens=0`` gives its layout).
    """

    name: ClassVar[str] = "h2o-evict"
