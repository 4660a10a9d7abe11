"""Named evaluation policies: ``full``, ``icecache@256``, ``quest@1024``... -> :class:`CachePolicy`."""

from __future__ import annotations

from typing import Any

from attrs import frozen

from icecache.core.config import CacheConfig, TierConfig
from icecache.core.errors import BudgetError, ConfigError
from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.core.policy import CachePolicy, compose_policy
from icecache.core.registry import Registry


@frozen
class PolicySpec:
    """A selector name and its budget (tokens per KV head, sinks and window included; ``None`` for
    ``full``). ``label`` is how tables name it, e.g. ``icecache@256``."""

    selector: str
    budget: int | None

    @property
    def label(self) -> str:
        return self.selector if self.budget is None else f"{self.selector}@{self.budget}"


def _budget(value: Any, where: str) -> int:
    try:
        budget = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"budget must be an integer, got {value!r} in {where!r}") from None
    if budget <= 0:
        raise BudgetError(f"budget must be positive, got {budget} in {where!r}")
    return budget


def parse_policies(spec: str, budget: int | None = None, *, registry: Registry | None = None
                   ) -> list[PolicySpec]:
    """``"full,icecache,quest@1024"`` -> specs. A name without ``@N`` takes ``budget``; ``full`` has none.
    Unknown selectors raise :class:`UnknownComponentError` listing the registered ones."""
    registry = registry or build_registry(get_plugin_manager())
    if budget is not None:
        budget = _budget(budget, "--budget")
    out: list[PolicySpec] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, b = item.partition("@")
        registry.get("selector", name)  # raises listing the valid names
        if name == "full":
            out.append(PolicySpec("full", None))
            continue
        value = _budget(b, item) if b else budget
        if value is None:
            raise ConfigError(f"policy {item!r} needs a budget: write {name}@N or pass --budget N")
        out.append(PolicySpec(name, value))
    if not out:
        raise ConfigError(f"no policy names given in {spec!r}")
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"policy listed twice in {spec!r}: {labels}")
    return out


def build_policy(spec: PolicySpec, model_config: Any, *, device: Any = "cpu", sink_tokens: int | None = None,
                 window_tokens: int | None = None, tiers: TierConfig | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> CachePolicy:
    """The :class:`CachePolicy` of ``spec`` for a model (geometry read from its config). Budget errors
    (e.g. below ``sink + window``) raise :class:`ConfigError` naming the values."""
    overrides: dict[str, Any] = {"device": device}
    if sink_tokens is not None:
        overrides["sink_tokens"] = sink_tokens
    if window_tokens is not None:
        overrides["window_tokens"] = window_tokens
    if tiers is not None:
        overrides["tiers"] = tiers
    # NOTE: full attends everything; its nominal budget only has to satisfy the config's checks.
    budget = spec.budget if spec.budget is not None else max(
        256, (sink_tokens or 4) + (window_tokens or 0))
    config = CacheConfig.from_model_config(model_config, budget=budget, **overrides)
    return compose_policy(selector=spec.selector, config=config, options=options)
