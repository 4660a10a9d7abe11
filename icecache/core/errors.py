"""Exceptions raised for bad user input and storage faults.

Every error names the offending value. Subclasses also derive from the builtin that a caller
would naturally catch (``ValueError``, ``LookupError``, ``OSError``).
"""

from __future__ import annotations


class IceCacheError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(IceCacheError, ValueError):
    """A configuration value is invalid (page size, budget, dtype, tier capacity...)."""


class BudgetError(IceCacheError, ValueError):
    """A selection attends more tokens than its budget allows, or the budget is unusable."""


class EvictionError(BudgetError):
    """An eviction would drop a token a policy promised to keep (a sink, a window token, part of a
    page that is selected whole) or leave a row with nothing to attend."""


class TensorSpecError(IceCacheError, ValueError):
    """A tensor has the wrong dtype, shape or device for the operation."""


class UnknownComponentError(IceCacheError, LookupError):
    """A component name (selector, tier, kernel...) is not registered."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, sorted(available)
        super().__init__(
            f"unknown {kind} {name!r}; available {kind}{'es' if kind.endswith(('x', 's')) else 's'}: "
            f"{', '.join(self.available) or '(none)'}"
        )

    def __str__(self) -> str:  # LookupError would repr() the message otherwise
        return self.args[0]


class PageError(IceCacheError, LookupError):
    """A page id is out of range, freed, or not resident where it was asked for."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class StorageError(IceCacheError, OSError):
    """A storage tier cannot do what was asked (directory missing, unwritable...)."""


class DiskFullError(StorageError):
    """The disk tier ran out of space; nothing was written and other tiers are intact."""


class ChecksumError(StorageError):
    """A page read back from disk does not match the checksum written with it."""


def message_of(exc: BaseException) -> str:
    """The message of ``exc`` for a user: attrs validators raise ``TypeError`` / ``ValueError`` with
    ``(message, attribute, expected, value)``, whose ``str()`` is that raw tuple; this returns the
    message (it names the option and the value)."""
    args = exc.args
    if len(args) > 1 and isinstance(args[0], str):
        return args[0]
    return str(exc)


def from_attrs_validator(exc: BaseException) -> bool:
    """Whether ``exc`` came from an attrs validator: ``args`` = (message, the ``Attribute``, ...)
    (``instance_of``, ``in_``), or raised inside ``attr.validators`` (``ge``, ``le``...)."""
    import attr.validators
    import attrs

    if len(exc.args) > 1 and isinstance(exc.args[0], str) and isinstance(exc.args[1], attrs.Attribute):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == attr.validators.__file__
