"""What every conformance suite shares: the error type, settings, and calling a component safely."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky, Unsatisfiable


class ContractViolation(AssertionError):
    """A component broke its contract. ``contract`` is the suite, ``prop`` the property broken."""

    def __init__(self, contract: str, prop: str, detail: str):
        self.contract, self.prop, self.detail = contract, prop, detail
        super().__init__(f"{contract} contract violated [{prop}]: {detail}")


def suite_settings(max_examples: int, base: settings | None = None, *, shrink: bool = True) -> settings:
    """Settings for one suite run: few examples, no deadline (components may be slow on CPU),
    one failure reported (so the error is an :class:`AssertionError`, not an exception group).
    Without ``base`` no example database is used: every component runs through the same inner test,
    so one component's saved failures mean nothing for the next (the failing case is printed).
    Anything else follows ``base`` or the active hypothesis profile (derandomize, verbosity...).
    ``shrink=False`` reports the first failing example as found: a quick yes/no (shrinking a long
    stateful run can take minutes)."""
    if not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")
    extra: dict[str, Any] = {"database": None} if base is None else {}
    if not shrink:
        extra["phases"] = [p for p in (base or settings()).phases if p != Phase.shrink]
    return settings(
        base, max_examples=max_examples, deadline=None, report_multiple_bugs=False, **extra,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def run_suite(contract: str, test: Callable[[], None]) -> None:
    """Run a hypothesis-decorated ``test``; a flaky failure (fails, then passes on the same input)
    means the component is not deterministic, reported as a :class:`ContractViolation` too."""
    try:
        test()
    except Unsatisfiable as exc:
        raise ContractViolation(contract, "no-error", "the factory refused (ConfigError) every generated "
                                "config; narrow the generated configs to those it supports") from exc
    except Flaky as exc:
        inner = [e for e in getattr(exc, "exceptions", ()) if isinstance(e, AssertionError)]
        detail = f" first failure: {inner[0]}" if inner else ""
        raise ContractViolation(
            contract, "deterministic",
            f"the same generated input failed once and passed when replayed: the component depends on "
            f"state or randomness outside its config and inputs.{detail}",
        ) from exc


def build_or_reject(contract: str, factory: Callable[..., Any], *args: Any) -> Any:
    """``factory(*args)``; a :class:`~icecache.core.errors.ConfigError` (the component does not support
    this config) skips the example, any other error is a :class:`ContractViolation`."""
    from hypothesis import reject

    from icecache.core.errors import ConfigError

    try:
        return factory(*args)
    except ConfigError:
        reject()
    except Exception as exc:  # noqa: BLE001 - any other error on valid input breaks the contract
        detail = f"factory(config) raised {type(exc).__name__}: {exc}"
        raise ContractViolation(contract, "no-error", detail) from exc


def guarded(contract: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; any exception becomes a :class:`ContractViolation` saying which call raised.

    NOTE: on valid generated input a component must not raise; turning the error into an
    AssertionError lets hypothesis shrink it like any other broken property.
    """
    try:
        return fn(*args, **kwargs)
    except ContractViolation:
        raise
    except Exception as exc:  # noqa: BLE001 - any error on valid input breaks the contract
        raise ContractViolation(contract, "no-error", f"{what} raised {type(exc).__name__}: {exc}") from exc


def pick_properties(all_props: tuple[str, ...], wanted: Iterable[str] | None,
                    contract: str) -> frozenset[str]:
    """Validate a user's ``properties=`` selection against the suite's property names."""
    if wanted is None:
        return frozenset(all_props)
    wanted = frozenset([wanted] if isinstance(wanted, str) else wanted)
    unknown = sorted(wanted - set(all_props))
    if unknown:
        raise ValueError(f"unknown {contract} properties {unknown}; available: {list(all_props)}")
    return wanted


def pytest_params(check: Callable[..., None], factory: Any, props: tuple[str, ...],
                  **kwargs: Any) -> list[Any]:
    """One ``pytest.param`` per property; each value is a no-argument callable that runs it."""
    import pytest  # NOTE: only needed by users who parametrize with pytest

    def runner(prop: str) -> Callable[[], None]:
        def run() -> None:
            check(factory, properties=[prop], **kwargs)
        run.__name__ = f"check_{prop.replace('-', '_')}"
        return run

    return [pytest.param(runner(p), id=p) for p in props]
