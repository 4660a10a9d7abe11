"""Evaluation harness: named policies, prefill-once evaluation, summaries."""

from icecache.eval.policies import PolicySpec, build_policy, parse_policies
from icecache.eval.runner import SampleResult, evaluate
from icecache.eval.summary import policy_rows, task_rows

__all__ = ["PolicySpec", "SampleResult", "build_policy", "evaluate", "parse_policies", "policy_rows",
           "task_rows"]
