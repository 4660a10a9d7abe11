"""RULER variable tracking: a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... hidden in noise.
All variables of the chain must be named."""

from __future__ import annotations

import random
import string
from typing import Any

from icecache.tasks.fit import fit_to_tokens, insert_at_depths
from icecache.tasks.haystack import HAYSTACKS
from icecache.tasks.sample import TaskSample
from icecache.tasks.words import make_number


def _names(rng: random.Random, count: int) -> list[str]:
    names: dict[str, None] = {}  # insertion-ordered: set order would follow PYTHONHASHSEED
    while len(names) < count:
        names["".join(rng.choice(string.ascii_uppercase) for _ in range(5))] = None
    return sorted(names, key=lambda _: rng.random())


def variable_tracking(rng: random.Random, tokenizer: Any, target: int, *, sample_id: str,
                      hops: int = 2, chains: int = 2) -> TaskSample:
    """``chains`` chains of ``hops + 1`` variables; the first chain is asked, the others distract."""
    names = _names(rng, chains * (hops + 1))
    values = [make_number(rng, 5) for _ in range(chains)]
    statements: list[str] = []
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        statements.append(f"VAR {chain[0]} = {values[c]}.")
        statements += [f"VAR {chain[i]} = VAR {chain[i - 1]}." for i in range(1, len(chain))]
    asked = names[: hops + 1]
    # NOTE: keep each chain in order (a later statement refers to an earlier one).
    depths = sorted(rng.uniform(0.1, 0.9) for _ in statements)
    # the chains interleave: every chain's i-th statement comes before any chain's (i+1)-th
    placed = [statements[c * (hops + 1) + i] for i in range(hops + 1) for c in range(chains)]
    state = rng.getstate()
    question = f"Find all variables that are assigned the value {values[0]} in the text above."
    prefix = (f"Answer: According to the chain(s) of variable assignment in the text above, {hops + 1} "
              f"variables are assigned the value {values[0]}, they are:")

    def build(n: int) -> TaskSample:
        rng.setstate(state)
        units = insert_at_depths(HAYSTACKS["noise"](rng, n), list(zip(depths, placed, strict=True)))
        return TaskSample(
            id=sample_id, task="variable_tracking",
            context="Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
                    + " ".join(units),
            question=question, answers=asked, answer_prefix=prefix, max_new_tokens=8 * (hops + 1) + 4,
            meta={"depths": depths, "value": values[0]},
        )

    return fit_to_tokens(build, tokenizer, target)
