"""RULER-style needle-in-a-haystack tasks: single, multi-key, multi-value, multi-query, and passkey.

Needles read like the haystack (a sentence among sentences), distractor needles carry other keys,
and depths lie away from the ends where sink and window tokens would see them anyway.
"""

from __future__ import annotations

import random
from typing import Any

from icecache.tasks.fit import fit_to_tokens, insert_at_depths
from icecache.tasks.haystack import HAYSTACKS
from icecache.tasks.sample import TaskSample
from icecache.tasks.words import make_keys, make_number

INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
         "I will quiz you about the numbers afterwards.")
NEEDLE = "One of the special magic numbers for {key} is: {value}."


def _depths(rng: random.Random, count: int, lo: float, hi: float) -> list[float]:
    return sorted(rng.uniform(lo, hi) for _ in range(count))


def _niah(rng: random.Random, tokenizer: Any, target: int, *, task: str, sample_id: str,
          num_keys: int, num_values: int, num_queries: int, haystack: str = "essay") -> TaskSample:
    """General NIAH: ``num_keys`` keys (``num_queries`` asked, the rest distractors), each with
    ``num_values`` needles; all needles of asked keys must be recalled."""
    keys = make_keys(rng, num_keys)
    values = {k: [make_number(rng) for _ in range(num_values)] for k in keys}
    asked = keys[:num_queries]
    needles = [NEEDLE.format(key=k, value=v) for k in keys for v in values[k]]
    rng.shuffle(needles)
    # NOTE: one needle sits in the middle half; more spread over 10-90% of the haystack.
    lo, hi = (0.25, 0.75) if len(needles) == 1 else (0.1, 0.9)
    depths = _depths(rng, len(needles), lo, hi)
    start_rng_state = rng.getstate()
    stream = HAYSTACKS[haystack]

    asked_txt = ", ".join(asked)
    if num_values > 1 or num_queries > 1:
        question = f"What are all the special magic numbers for {asked_txt} mentioned in the provided text?"
        prefix = f"The special magic numbers for {asked_txt} mentioned in the provided text are"
    else:
        question = f"What is the special magic number for {asked_txt} mentioned in the provided text?"
        prefix = f"The special magic number for {asked_txt} mentioned in the provided text is"
    answers = [v for k in asked for v in values[k]]

    def build(n: int) -> TaskSample:
        rng.setstate(start_rng_state)  # the same haystack prefix for every probe
        units = insert_at_depths(stream(rng, n), list(zip(depths, needles, strict=True)))
        return TaskSample(
            id=sample_id, task=task, context=INTRO + "\n" + " ".join(units), question=question,
            answers=answers, answer_prefix=prefix, max_new_tokens=4 + 10 * len(answers),
            meta={"depths": depths, "keys": keys, "asked": asked},
        )

    return fit_to_tokens(build, tokenizer, target)


def niah_single(rng, tokenizer, target, *, sample_id):
    return _niah(rng, tokenizer, target, task="niah_single", sample_id=sample_id,
                 num_keys=1, num_values=1, num_queries=1)


# NOTE: the multi-needle variants use the noise haystack: with essay text the embedded 135M model
# fails them even with full KV (measured at 4k), and a task full KV cannot do measures nothing.
def niah_multikey(rng, tokenizer, target, *, sample_id):
    return _niah(rng, tokenizer, target, task="niah_multikey", sample_id=sample_id,
                 num_keys=4, num_values=1, num_queries=1, haystack="noise")


def niah_multivalue(rng, tokenizer, target, *, sample_id):
    return _niah(rng, tokenizer, target, task="niah_multivalue", sample_id=sample_id,
                 num_keys=1, num_values=2, num_queries=1, haystack="noise")


def niah_multiquery(rng, tokenizer, target, *, sample_id):
    return _niah(rng, tokenizer, target, task="niah_multiquery", sample_id=sample_id,
                 num_keys=4, num_values=1, num_queries=2, haystack="noise")


def niah_noise(rng, tokenizer, target, *, sample_id):
    return _niah(rng, tokenizer, target, task="niah_noise", sample_id=sample_id,
                 num_keys=1, num_values=1, num_queries=1, haystack="noise")


#: values of the asked key in ``niah_list``; distractor keys and their values
LIST_VALUES, LIST_DISTRACTORS, LIST_DISTRACTOR_VALUES = 20, 2, 3


def niah_list(rng, tokenizer, target, *, sample_id):
    """A long output: every one of ``LIST_VALUES`` numbers of one key, spread over the prompt among
    other keys' numbers, in order. Scored by the fraction listed (``score``); correct when all are."""
    keys = make_keys(rng, 1 + LIST_DISTRACTORS)
    asked = keys[0]
    values = [make_number(rng) for _ in range(LIST_VALUES)]
    distractors = [NEEDLE.format(key=k, value=make_number(rng))
                   for k in keys[1:] for _ in range(LIST_DISTRACTOR_VALUES)]
    depths = _depths(rng, LIST_VALUES, 0.1, 0.9)
    placed = list(zip(depths, [NEEDLE.format(key=asked, value=v) for v in values], strict=True))
    placed += [(rng.uniform(0.1, 0.9), d) for d in distractors]
    placed.sort(key=lambda x: x[0])
    state = rng.getstate()

    def build(n: int) -> TaskSample:
        rng.setstate(state)
        units = insert_at_depths(HAYSTACKS["noise"](rng, n), placed)
        return TaskSample(
            id=sample_id, task="niah_list", context=INTRO + "\n" + " ".join(units),
            question=f"List all the special magic numbers for {asked} mentioned in the provided text, in the "
                     "order they appear.",
            answers=values,
            answer_prefix=f"The special magic numbers for {asked} mentioned in the provided text, in order, "
                          "are:",
            max_new_tokens=4 + 12 * LIST_VALUES, meta={"depths": depths, "keys": keys, "asked": [asked]},
        )

    return fit_to_tokens(build, tokenizer, target)


PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                 "them. I will quiz you about the important information there.")


def passkey(rng: random.Random, tokenizer: Any, target: int, *, sample_id: str) -> TaskSample:
    """Passkey retrieval (Mohtashami & Jaggi 2023): a 5-digit key in noise. A smoke test: easy.

    NOTE: the key follows a colon, in the needle and in the answer prefix. Written "The pass key is
    12345" the embedded 135M model answers "The pass key is ... a special type of key" even with full
    KV at 4k and 8k (0 of 9 at 4k); with the colon it copies the key (measured: 2 of 2 samples at
    4k, 2 of 2 at 8k).
    """
    key = make_number(rng, 5)
    depth = rng.uniform(0.2, 0.8)
    needle = f"The pass key is: {key}. Remember it. {key} is the pass key."

    def build(n: int) -> TaskSample:
        units = insert_at_depths(HAYSTACKS["noise"](rng, n), [(depth, needle)])
        return TaskSample(
            id=sample_id, task="passkey", context=PASSKEY_INTRO + " " + " ".join(units),
            question="What is the pass key?", answers=[key], answer_prefix="The pass key is:",
            max_new_tokens=10, meta={"depths": [depth]},
        )

    return fit_to_tokens(build, tokenizer, target)
