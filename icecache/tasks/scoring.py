"""String-match scoring (RULER's ``string_match_all``): every expected string must appear."""

from __future__ import annotations

from collections.abc import Sequence


def match_fraction(output: str, answers: Sequence[str]) -> float:
    """Fraction of ``answers`` found in ``output``, case-insensitive."""
    text = output.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def is_correct(output: str, answers: Sequence[str]) -> bool:
    """True when every string of ``answers`` appears in ``output`` (case-insensitive)."""
    return match_fraction(output, answers) == 1.0
