"""Named evaluation policies: ``full``, ``icecache@256``, ``quest@1024``... -> :class:`CachePolicy`."""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from icecache.core.config import CacheConfig, TierConfig
from icecache.core.errors import BudgetError, ConfigError
from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.core.policy import CachePolicy, compose_policy, default_tier_stack
from icecache.core.registry import Registry


@frozen
class PolicySpec:
    """A selector name and its budget (tokens per KV head, sinks and window included; ``None`` for
    ``full``). ``label`` is how tables name it, e.g. ``icecache@256``; a variant ``icecache:wide@256``
    runs the ``icecache`` selector with ``options`` (its factory options, from ``--policy-options``)."""

    selector: str
    budget: int | None
    variant: str | None = None
    options: dict[str, Any] = field(factory=dict, eq=False, hash=False)

    @property
    def name(self) -> str:
        return self.selector if self.variant is None else f"{self.selector}:{self.variant}"

    @property
    def label(self) -> str:
        return self.name if self.budget is None else f"{self.name}@{self.budget}"


def options_argument(text: str, flag: str = "--policy-options") -> dict[str, dict[str, Any]]:
    """An argparse ``type``: a JSON object (inline, or a file holding one) mapping names to option
    objects."""
    import argparse
    import json
    from pathlib import Path

    try:
        # NOTE: inline JSON first: a long object is not a valid file name (is_file raises ENAMETOOLONG)
        value = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{flag} must be a JSON object or file: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError(f"{flag} must map names to option objects, got {text!r}")
    return value


def _budget(value: Any, where: str) -> int:
    try:
        budget = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"budget must be an integer, got {value!r} in {where!r}") from None
    if budget <= 0:
        raise BudgetError(f"budget must be positive, got {budget} in {where!r}")
    return budget


def parse_policies(spec: str, budget: int | None = None, *, registry: Registry | None = None,
                   options: dict[str, dict[str, Any]] | None = None) -> list[PolicySpec]:
    """``"full,icecache,quest@1024,icecache:wide"`` -> specs. A name without ``@N`` takes ``budget``;
    ``full`` has none. ``options`` maps a selector or ``selector:variant`` name to its factory options;
    a variant must have an entry. Unknown selectors raise :class:`UnknownComponentError` listing the
    registered ones."""
    registry = registry or build_registry(get_plugin_manager())
    options = dict(options or {})
    if budget is not None:
        budget = _budget(budget, "--budget")
    out: list[PolicySpec] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, at, b = item.partition("@")
        selector, _, variant = name.partition(":")
        registry.get("selector", selector)  # raises listing the valid names
        if at and not b.strip():
            raise ConfigError(f"policy {item!r} has no budget after '@'; write {name}@N or leave '@' out")
        if variant and name not in options:
            raise ConfigError(f"policy {item!r} is a variant of {selector!r}: give its options with "
                              f"--policy-options '{{\"{name}\": {{...}}}}'")
        opts = dict(options.get(name, {}))
        if selector == "full":
            if b:  # NOTE: refused, not ignored: full@64 would silently run dense KV under a budget's label
                raise ConfigError(f"policy {item!r}: full attends every token and takes no budget; "
                                  "write full")
            out.append(PolicySpec("full", None, variant or None, opts))
            continue
        value = _budget(b, item) if b else budget
        if value is None:
            raise ConfigError(f"policy {item!r} needs a budget: write {name}@N or pass --budget N")
        out.append(PolicySpec(selector, value, variant or None, opts))
    if not out:
        raise ConfigError(f"no policy names given in {spec!r}")
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"policy listed twice in {spec!r}: {labels}")
    unused = sorted(set(options) - {p.name for p in out} - {p.selector for p in out})
    if unused:
        raise ConfigError(f"--policy-options names {unused}, which no policy in {spec!r} uses")
    return out


#: the tiers a run composes (device and host, and disk when a disk directory is given)
tier_stack = default_tier_stack


def build_policy(spec: PolicySpec, model_config: Any, *, device: Any = "cpu", sink_tokens: int | None = None,
                 window_tokens: int | None = None, tiers: TierConfig | None = None,
                 options: dict[str, dict[str, Any]] | None = None, page_dtype: Any = None,
                 tier_names: tuple[str, ...] | None = None,
                 tier_options: dict[str, dict[str, Any]] | None = None, budget_policy: str | None = None,
                 budget_options: dict[str, Any] | None = None) -> CachePolicy:
    """The :class:`CachePolicy` of ``spec`` for a model (geometry read from its config). The stack is
    ``tier_names`` (``--tiers``), else device, host and, with a disk directory in ``tiers``, disk;
    ``tier_options`` (``--tier-options``) maps tier names to their options; ``budget_policy`` and
    ``budget_options`` (``--budget-policy``, ``--budget-options``) spread the budget over layers and
    heads (``full`` ignores them). Budget errors (e.g. below ``sink + window``) raise
    :class:`ConfigError` naming the values."""
    overrides: dict[str, Any] = {"device": device, "page_dtype": page_dtype}
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
    options = dict(options or {})
    if spec.options:
        options["selector"] = {**options.get("selector", {}), **spec.options}
    stack = tuple(tier_names) if tier_names else tier_stack(tiers)
    for name, opts in (tier_options or {}).items():
        if name not in stack:
            raise ConfigError(f"--tier-options names tier {name!r}, which is not in the stack {list(stack)} "
                              "(set it with --tiers)")
        options[name] = {**options.get(name, {}), **opts}
    budget_policy = budget_policy or "uniform"
    if spec.selector == "full":
        budget_policy, budget_options = "uniform", None
    if budget_options:
        options["budget"] = dict(budget_options)
    return compose_policy(selector=spec.selector, config=config, options=options, tiers=stack,
                          budget_policy=budget_policy)


def check_tier_stack(policy: CachePolicy) -> None:
    """Build each tier of ``policy`` once, small (capacities of one page), and close it: a tier option
    that does not fit its factory, or a bad value, fails now, naming the tier, before any model loads.
    Errors the tiers raise on purpose (:class:`~icecache.core.errors.IceCacheError`) pass through."""
    from attrs import evolve

    from icecache.core.errors import IceCacheError, message_of

    small = evolve(policy.config, tiers=evolve(policy.config.tiers, device_pages=1, host_pages=1,
                                                disk_pages=1))
    for name in policy.tiers:
        options = policy.tier_options(name)
        capacity = options.get("capacity")
        if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool)
                                     or capacity < 1):
            raise ConfigError(f"tier {name!r}: capacity must be a positive number of pages or null, got "
                              f"{capacity!r}")
        if "capacity" in options:
            options["capacity"] = 1  # NOTE: a device tier allocates its capacity up front
        try:
            tier = policy.registry.create("tier", name, small, **options)
        except IceCacheError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tier {name!r} does not take these options {sorted(options)}: "
                              f"{message_of(exc)}") from None
        tier.close()


def check_capacities(policy: CachePolicy, *, batch: int, context: int, num_layers: int) -> None:
    """Refuse tier capacities that cannot hold one step of ``batch`` prompts of ``context`` tokens, before
    any work: a device tier below one layer's selected pages, or (without a disk tier) a host tier below
    the prompt's pages. :class:`ConfigError` names the value and what would fit."""
    config, tiers = policy.config, policy.config.tiers
    if policy.selector == "full":
        return
    geo = config.geometry
    rows = batch * (geo.num_kv_heads if geo is not None else 1)
    S = policy.make_selector(config.dense_layers).page_size
    if tiers.device_pages is not None:
        sparse_layers = range(config.dense_layers, num_layers)
        selected = max((policy.layer_config(i).selected_budget for i in sparse_layers),
                       default=config.selected_budget)
        need = rows * -(-selected // S)
        if tiers.device_pages < need:
            raise ConfigError(f"--device-pages {tiers.device_pages} cannot hold one layer's selection for "
                              f"{spec_label(policy)}: {rows} rows x {selected} selected tokens "
                              f"in pages of {S} need at least {need}")
    _check_backing(policy, rows=rows, context=context, num_layers=num_layers, page_size=S)


def _check_backing(policy: CachePolicy, *, rows: int, context: int, num_layers: int, page_size: int) -> None:
    """The backing tiers (every tier of the stack after the first, or the only one) hold each page the
    prompt writes, unless one of them is unbounded."""
    from icecache.integrations.hf.cache import device_capacity

    config, stack = policy.config, tuple(policy.tiers)
    sparse = max(0, num_layers - config.dense_layers)
    paged = max(0, context - config.sink_tokens - config.window_tokens)
    need = sparse * rows * -(-paged // page_size)
    capacities = {"device": device_capacity(policy, sparse_layers=sparse, num_layers=num_layers, rows=rows,
                                            page_size=page_size),
                  "host": config.tiers.host_pages, "disk": config.tiers.disk_pages}
    backing = stack[1:] or stack
    held = []
    for name in backing:
        options = policy.tier_options(name)
        # NOTE: a plugin's tier without a capacity option counts as unbounded: nothing to check
        capacity = options["capacity"] if "capacity" in options else capacities.get(name)
        if capacity is None:
            return
        held.append((name, capacity))
    total = sum(capacity for _, capacity in held)
    if total >= need:
        return
    what = (f"{spec_label(policy)}: {sparse} sparse layers x {rows} rows x {paged} tokens in pages of "
            f"{page_size} need at least {need}")
    default = stack == default_tier_stack(config.tiers)
    if default and backing == ("host",):
        raise ConfigError(f"--host-pages {config.tiers.host_pages} cannot hold the prompt's pages for "
                          f"{what}; raise it or add --disk-dir")
    tiers = ", ".join(f"{name} {capacity}" for name, capacity in held)
    flag = "tiers" if default else "--tiers"
    raise ConfigError(f"{flag} {','.join(stack)} cannot hold the prompt's pages: its backing tiers "
                      f"(every tier after the first) hold {total} pages ({tiers}), and {what}; end the "
                      "stack with an unbounded tier (host without --host-pages, or disk with --disk-dir) "
                      "or raise their capacities")


def check_device_room(policy: CachePolicy) -> None:
    """``--device-pages`` of the policy's pages (the pool is allocated whole at the start) fit in the
    device's memory: an allocator traceback halfway through a run otherwise."""
    import os

    import torch

    config = policy.config
    pages, page_size = config.tiers.device_pages, config.page_size
    if config.geometry is None or pages is None or policy.selector == "full":
        return
    dtype = config.page_dtype or config.dtype
    nbytes = pages * 2 * page_size * config.geometry.head_dim * dtype.itemsize
    if config.device.type == "cuda" and torch.cuda.is_available():
        memory, where = torch.cuda.get_device_properties(config.device).total_memory, str(config.device)
    else:
        memory, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine"
    if nbytes > memory:
        raise ConfigError(f"--device-pages {pages} x {nbytes // pages} B pages need "
                          f"{nbytes / 2**30:.1f} GiB, "
                          f"more than the {memory / 2**30:.1f} GiB of {where}")


def spec_label(policy: CachePolicy) -> str:
    return f"{policy.selector}@{policy.config.budget}"
