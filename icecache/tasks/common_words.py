"""RULER common-word extraction: a long numbered list of words in which a few words recur far more
often than the rest; the most frequent ones must be named."""

from __future__ import annotations

import random
from typing import Any

from icecache.tasks.fit import fit_to_tokens
from icecache.tasks.sample import TaskSample
from icecache.tasks.words import VOCABULARY


def common_words(rng: random.Random, tokenizer: Any, target: int, *, sample_id: str,
                 num_common: int = 3, ratio: int = 8) -> TaskSample:
    """``num_common`` words each appear ``ratio`` times as often as any other word of the list."""
    vocab = list(VOCABULARY)
    rng.shuffle(vocab)
    common, rare = vocab[:num_common], vocab[num_common:]
    state = rng.getstate()

    def build(n: int) -> TaskSample:
        rng.setstate(state)
        # n rare-word entries cycling through the rare words (each appears n/len(rare) times, rounded),
        # every common word ratio times as often: the list grows smoothly with n
        words = [rare[i % len(rare)] for i in range(n)]
        reps = max(ratio, round(ratio * n / len(rare)))
        words += [w for w in common for _ in range(reps)]
        rng.shuffle(words)
        listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))
        return TaskSample(
            id=sample_id, task="common_words",
            context="Below is a numbered list of words. In these words, some appear more often than others. "
                    "Memorize the ones that appear most often.\n" + listing,
            question=f"What are the {num_common} most common words in the above list?",
            answers=common,
            answer_prefix=f"Answer: The top {num_common} words that appear most often in the list are:",
            max_new_tokens=6 * num_common + 4, meta={"repeats": reps},
        )

    return fit_to_tokens(build, tokenizer, target)
