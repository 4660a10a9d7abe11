"""Checks of benchmark flags, run before any model, memory or timing work; each :class:`ConfigError`
names the flag, the value and what would be valid (the CLI prints it and exits with code 2)."""

from __future__ import annotations

from typing import Any

from icecache.core.errors import ConfigError


def int_list(text: str, flag: str, *, low: int = 1) -> list[int]:
    """``"1024,4096"`` -> ``[1024, 4096]``: at least one integer, each at least ``low``."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} names no values, got {text!r}")
    bad = [v for v in values if v < low]
    if bad:
        raise ConfigError(f"{flag} values must be at least {low}, got {bad[0]} in {text!r}")
    return values


def at_least(args: Any, lows: dict[str, int]) -> None:
    """Each ``--flag`` (``args.flag``; ``None`` skipped) is an integer of at least its low."""
    for flag, low in lows.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be at least {low}, got {value}")


def power_of_two(value: int, flag: str) -> None:
    if value < 1 or value & (value - 1):
        raise ConfigError(f"{flag} must be a power of two, got {value}")


def registered(kind: str, name: str) -> None:
    """``name`` is a registered ``kind`` (selector, kernel, index...): else the registry's error, which
    lists the available names."""
    from icecache.core.plugins import build_registry

    build_registry().get(kind, name.split(":")[0])


def task(name: str) -> None:
    from icecache.core.errors import UnknownComponentError
    from icecache.tasks.registry import TASKS

    if name not in TASKS:
        raise UnknownComponentError("task", name, list(TASKS))


def model_positions(model: str | None) -> tuple[Any, int | None]:
    """The checked checkpoint's config (no weights loaded) and its positions."""
    from icecache.integrations.hf.loader import read_model_config, resolve_checkpoint

    config = read_model_config(resolve_checkpoint(model))
    return config, getattr(config, "max_position_embeddings", None)


def contexts_fit(contexts: list[int], positions: int | None, flag: str, *, reserve: int = 0) -> None:
    """Every context (plus ``reserve`` decoded tokens) fits the model's positions."""
    if positions is None:
        return
    for c in contexts:
        if c + reserve > positions:
            raise ConfigError(f"{flag} {c} is longer than the model allows: {positions} positions"
                              + (f", {reserve} kept for decoding" if reserve else ""))


def fits_memory(nbytes: int, what: str, device: Any = "cpu") -> None:
    """``nbytes`` of tensors fit in half the memory of ``device`` (else an allocator traceback halfway)."""
    import os

    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        memory = torch.cuda.get_device_properties(device).total_memory
    else:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if nbytes > memory // 2:
        raise ConfigError(f"{what} needs {nbytes / 2**30:.1f} GiB, more than half of the "
                          f"{memory / 2**30:.1f} GiB of {device}")
