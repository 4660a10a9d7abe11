"""Public test helpers for plugin authors: strategies, conformance suites, ``assert_close``.

``hypothesis`` is needed for :mod:`icecache.testing.strategies` and
:mod:`icecache.testing.conformance` (``pip install icecache[testing]``); what this module exports
(``assert_close``, the synthetic-data generators, the fidelity metrics) works without it.
See ``docs/testing.md``.
"""

from icecache.metrics import (
    attention_probs,
    attention_recall,
    masked_attention_output,
    oracle_mask,
    oracle_recall,
    output_rel_error,
)
from icecache.testing.assertions import TOLERANCES, assert_close
from icecache.testing.synthetic import (
    ClusteredKV,
    left_padding,
    make_clustered_kv,
    query_for_cluster,
    random_page_table,
)

__all__ = [
    "TOLERANCES", "ClusteredKV", "assert_close", "left_padding", "make_clustered_kv", "query_for_cluster",
    "random_page_table",
    # fidelity metrics (icecache.metrics)
    "attention_probs", "attention_recall", "masked_attention_output", "oracle_mask", "oracle_recall",
    "output_rel_error",
]
