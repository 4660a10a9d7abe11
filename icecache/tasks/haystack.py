"""Offline haystack text: natural prose from ``pydoc_data.topics`` (shipped with CPython) and the
classic passkey noise line. Everything is deterministic; randomness comes from a caller's RNG."""

from __future__ import annotations

import random
import re
from functools import lru_cache

NOISE_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@lru_cache(maxsize=1)
def essay_sentences() -> tuple[str, ...]:
    """Prose sentences of the Python reference topics, in document order (~1,800 sentences,
    ~50k tokens). Code-like sentences (few letters) are dropped so the text reads as prose."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    sentences = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    return tuple(
        s for s in sentences
        if 40 <= len(s) <= 300 and sum(c.isalpha() or c == " " for c in s) / len(s) > 0.9
    )


def essay_stream(rng: random.Random, count: int) -> list[str]:
    """``count`` consecutive prose sentences from a random start, wrapping around."""
    pool = essay_sentences()
    start = rng.randrange(len(pool))
    return [pool[(start + i) % len(pool)] for i in range(count)]


def noise_stream(rng: random.Random, count: int) -> list[str]:
    """``count`` copies of the noise line (the RNG is accepted for a uniform signature)."""
    del rng
    return [NOISE_LINE] * count


HAYSTACKS = {"essay": essay_stream, "noise": noise_stream}
