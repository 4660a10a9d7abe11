"""Optional keyword extensions of the component protocols (``queries=``, ``reader=``, ...): passed only
to implementations whose signature takes them, so older plugins keep working."""

from __future__ import annotations

import inspect
from typing import Any


def accepts_keyword(method: Any, name: str) -> bool:
    """Whether ``method`` takes the keyword argument ``name``."""
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
