"""Fit a generated context to a token target with the model's own tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import evolve

from icecache.core.errors import ConfigError
from icecache.tasks.sample import TaskSample, prompt_ids

#: builds a sample whose context holds ``n`` haystack units (sentences, list entries...)
Builder = Callable[[int], TaskSample]


def fit_to_tokens(build: Builder, tokenizer: Any, target: int, *, min_units: int = 1) -> TaskSample:
    """The sample with the most haystack units whose full prompt (chat template, question and
    answer prefix included) is at most ``target`` tokens; ``meta["prompt_tokens"]`` records its length.

    Binary search over the unit count: each probe tokenizes the whole prompt, so boundary effects
    between units are counted exactly.
    """
    def length(n: int) -> int:
        return len(prompt_ids(tokenizer, build(n)))

    if length(min_units) > target:
        raise ConfigError(
            f"context target of {target} tokens is too small: the task's prompt needs "
            f"{length(min_units)} tokens with {min_units} haystack unit(s)"
        )
    lo, hi = min_units, max(min_units + 1, 2 * min_units)
    while length(hi) <= target:  # grow until over the target
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: length(lo) <= target < length(hi)
        mid = (lo + hi) // 2
        if length(mid) <= target:
            lo = mid
        else:
            hi = mid
    sample = build(lo)
    return evolve(sample, meta={**sample.meta, "prompt_tokens": length(lo), "units": lo})


def insert_at_depths(units: list[str], needles: list[tuple[float, str]]) -> list[str]:
    """``units`` with each ``(depth, text)`` inserted at ``round(depth * len(units))`` (depth in [0, 1]),
    needles of equal position kept in the given order."""
    out = list(units)
    n = len(units)
    # NOTE: insert from the deepest needle first so earlier positions stay valid.
    for depth, text in sorted(needles, key=lambda d: d[0], reverse=True):
        out.insert(min(n, max(0, round(depth * n))), text)
    return out
