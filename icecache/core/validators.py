"""attrs validators that raise :class:`ConfigError` naming the offending value."""

from __future__ import annotations

from typing import Any

from icecache.core.errors import ConfigError


def power_of_two(instance: Any, attribute: Any, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value & (value - 1):
        raise ConfigError(f"{attribute.name} must be a power of two, got {value!r}")


def positive(instance: Any, attribute: Any, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def non_negative(instance: Any, attribute: Any, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{attribute.name} must be a non-negative integer, got {value!r}")


def optional_positive(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None:
        positive(instance, attribute, value)
