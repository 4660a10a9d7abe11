"""Public hypothesis strategies for icecache inputs (needs ``hypothesis``: ``pip install icecache[testing]``).

* configs: :func:`cache_configs`, :func:`model_geometries`, :func:`tier_configs`
* shapes: :func:`gqa_shapes` (:class:`GQAShape`)
* page tables: :func:`page_tables` (CSR invariants of :mod:`icecache.core.page_table`)
* keys: :func:`clustered_kv` (controllable clusters, spread, norms, outliers),
  :func:`cluster_queries` (queries favouring a chosen cluster), :func:`left_paddings`
* storage (:mod:`.tiers`): :func:`page_specs`, :func:`page_records` (random bytes: NaN payloads,
  ``-0.0``), :func:`tier_capacities`, :func:`tier_stacks`, :func:`page_lens`, ``bits``
* kernels (:mod:`.kernels`): :func:`paged_attention_cases` (with dense ground truth), :func:`scoring_cases`
* tier histories (:mod:`.tier_ops`): :func:`tier_operations` (protocol-valid op sequences),
  :func:`apply_tier_ops`
* index and clusterers (:mod:`.kv`): :func:`point_groups`, :func:`index_histories`
* selector plumbing (:mod:`.selectors`): :func:`fill_problems`, :func:`token_groups`
* budget policies (:mod:`.budgets`): :func:`budget_configs`, :func:`budget_options`
* scenarios the suites run: :func:`icecache.testing.conformance.selector_cases`,
  :func:`icecache.testing.conformance.index_cases`

Every tensor strategy draws parameters and a seed and calls a plain-torch generator (e.g.
:mod:`icecache.testing.synthetic`), so a failing example can be rebuilt without hypothesis.
"""

from icecache.testing.strategies.budgets import BUDGET_POLICIES, budget_configs, budget_options
from icecache.testing.strategies.clustered import ClusterQuery, cluster_queries, clustered_kv, left_paddings
from icecache.testing.strategies.config import cache_configs, model_geometries, tier_configs
from icecache.testing.strategies.kernels import PagedCase, ScoringCase, paged_attention_cases, scoring_cases
from icecache.testing.strategies.kv import IndexHistory, PointGroups, index_histories, point_groups
from icecache.testing.strategies.page_tables import page_tables
from icecache.testing.strategies.selectors import FillProblem, fill_problems, token_groups
from icecache.testing.strategies.shapes import GQAShape, gqa_shapes
from icecache.testing.strategies.tier_ops import TierOp, apply_tier_ops, tier_operations
from icecache.testing.strategies.tiers import (
    PAGE_DTYPES,
    TIER_STACKS,
    bits,
    page_lens,
    page_records,
    page_specs,
    random_records,
    tier_capacities,
    tier_stacks,
)

__all__ = [
    "ClusterQuery", "GQAShape", "cache_configs", "cluster_queries", "clustered_kv", "gqa_shapes",
    "left_paddings", "model_geometries", "page_tables", "tier_configs",
    # storage
    "PAGE_DTYPES", "TIER_STACKS", "bits", "page_lens", "page_records", "page_specs", "random_records",
    "tier_capacities", "tier_stacks", "TierOp", "apply_tier_ops", "tier_operations",
    # kernels
    "PagedCase", "ScoringCase", "paged_attention_cases", "scoring_cases",
    # index and clusterers
    "IndexHistory", "PointGroups", "index_histories", "point_groups",
    # selector plumbing
    "FillProblem", "fill_problems", "token_groups",
    # budget policies
    "BUDGET_POLICIES", "budget_configs", "budget_options",
]
