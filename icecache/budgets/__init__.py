"""Budget policies: how the token budget is spread over layers and KV heads.

``config.budget`` stays what it always was, tokens attended per KV head per decode step with sinks
and window included, now as the **mean over the sparse layers**. A budget policy (registered through
``icecache_register_budgets``, composed by name: ``compose_policy(..., budget_policy="pyramid")``)
decides each sparse layer's budget at composition time and, optionally, each KV head's at prefill.
Built-ins: ``uniform`` (the default), ``pyramid`` (PyramidKV), ``adakv`` (Ada-KV), ``per-layer``
(explicit lists). See ``docs/selectors.md``, "Budgets per layer and per head".
"""
