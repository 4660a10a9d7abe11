"""Base classes that do a selector's plumbing (positions, budget, ledger, GQA merge, top-k)."""

from icecache.selectors.bases.page_score import PageScoreSelector
from icecache.selectors.bases.selector import SelectorBase
from icecache.selectors.bases.token_score import TokenScoreSelector

__all__ = ["PageScoreSelector", "SelectorBase", "TokenScoreSelector"]
