"""Tasks whose answer was written during decoding: the fact sits in text that reaches the cache through
decode steps (``TaskSample.decoded``), after the prefilled prompt, so only pages inserted during decode
can answer: IceCache's claim that its index keeps up as the output grows.

The decoded text opens with the needle, then holds enough filler to push it out of the recent window
(sinks and window never see it); the question follows. ``decode_fact_lookalike`` also hides, in the
prefilled prompt, a needle of another key whose value shares the answer's leading digits.
"""

from __future__ import annotations

import random
from typing import Any

from icecache.tasks.fit import fit_to_tokens, insert_at_depths
from icecache.tasks.haystack import HAYSTACKS
from icecache.tasks.niah import INTRO, NEEDLE
from icecache.tasks.sample import TaskSample
from icecache.tasks.words import make_keys, make_number

#: haystack units after the needle in the decoded text (noise lines of ~22 tokens: ~130 tokens, more
#: than the default window of 60 plus a page flush)
DECODED_FILLER = 6


def _lookalike(rng: random.Random, value: str) -> str:
    """A number of the same length sharing the first three digits of ``value``, yet different."""
    while True:
        other = value[:3] + make_number(rng, len(value) - 3).rjust(len(value) - 3, "0")
        if other != value:
            return other


def _decode_fact(rng: random.Random, tokenizer: Any, target: int, *, task: str, sample_id: str,
                 lookalike: bool) -> TaskSample:
    key, other = make_keys(rng, 2)
    value = make_number(rng)
    stream = HAYSTACKS["noise"]
    decoded = " " + " ".join([NEEDLE.format(key=key, value=value), *stream(rng, DECODED_FILLER)])
    needles = [(rng.uniform(0.25, 0.75), NEEDLE.format(key=other, value=_lookalike(rng, value)))] \
        if lookalike else []

    def build(n: int) -> TaskSample:
        units = insert_at_depths(stream(rng, n), needles)
        return TaskSample(
            id=sample_id, task=task, context=INTRO + "\n" + " ".join(units), decoded=decoded,
            question=f"What is the special magic number for {key} mentioned in the provided text?",
            answers=[value],
            answer_prefix=f"The special magic number for {key} mentioned in the provided text is",
            max_new_tokens=14, meta={"key": key, "lookalike": needles[0][1] if needles else None},
        )

    return fit_to_tokens(build, tokenizer, target)


def decode_fact(rng, tokenizer, target, *, sample_id):
    return _decode_fact(rng, tokenizer, target, task="decode_fact", sample_id=sample_id, lookalike=False)


def decode_fact_lookalike(rng, tokenizer, target, *, sample_id):
    return _decode_fact(rng, tokenizer, target, task="decode_fact_lookalike", sample_id=sample_id,
                        lookalike=True)
