"""Public hypothesis strategies for icecache inputs (needs ``hypothesis``: ``pip install icecache[testing]``).

* configs: :func:`cache_configs`, :func:`model_geometries`, :func:`tier_configs`
* shapes: :func:`gqa_shapes` (:class:`GQAShape`)
* page tables: :func:`page_tables` (CSR invariants of :mod:`icecache.core.page_table`)
* keys: :func:`clustered_kv` (controllable clusters, spread, norms, outliers),
  :func:`cluster_queries` (queries favouring a chosen cluster), :func:`left_paddings`

Every tensor strategy draws parameters and a seed and calls a plain-torch generator of
:mod:`icecache.testing.synthetic`, so a failing example can be rebuilt without hypothesis.
"""

from icecache.testing.strategies.clustered import ClusterQuery, cluster_queries, clustered_kv, left_paddings
from icecache.testing.strategies.config import cache_configs, model_geometries, tier_configs
from icecache.testing.strategies.page_tables import page_tables
from icecache.testing.strategies.shapes import GQAShape, gqa_shapes

__all__ = [
    "ClusterQuery", "GQAShape", "cache_configs", "cluster_queries", "clustered_kv", "gqa_shapes",
    "left_paddings", "model_geometries", "page_tables", "tier_configs",
]
