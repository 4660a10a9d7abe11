"""transformers versions: 5.24 renamed ``past_key_values`` to ``cache`` (forward, attention modules,
``generate`` and model outputs; the old name still works there, deprecated until 5.40). The package passes
and reads whichever name the installed transformers uses."""

from __future__ import annotations

import inspect
from typing import Any


def cache_keyword(model: Any) -> str:
    """``"cache"`` where ``model.forward`` takes it (transformers >= 5.24), else ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # NOTE: a forward without a signature: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to pass a cache to ``model(...)`` or ``model.generate(...)``."""
    return {cache_keyword(model): cache}


def output_cache(output: Any) -> Any:
    """The cache a model output carries (``output.cache`` from 5.24 on, ``past_key_values`` before)."""
    fields = output.keys() if hasattr(output, "keys") else ()
    if "cache" in fields:
        return output["cache"]
    return output.past_key_values
