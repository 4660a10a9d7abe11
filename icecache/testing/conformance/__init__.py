"""Conformance suites: the contract every selector, tier, index and kernel backend must keep.

Each suite is one call that raises :class:`ContractViolation` (an ``AssertionError``) naming the
broken property, plus pytest helpers. Needs ``hypothesis`` (``pip install icecache[testing]``).

* :func:`check_selector` / :func:`selector_contract_tests` / :func:`registered_selector_factory`
"""

from icecache.testing.conformance._runner import ContractViolation
from icecache.testing.conformance.selector import (
    SELECTOR_PROPERTIES,
    SelectorCase,
    check_selector,
    registered_selector_factory,
    selector_cases,
    selector_contract_tests,
)

__all__ = [
    "SELECTOR_PROPERTIES", "ContractViolation", "SelectorCase", "check_selector",
    "registered_selector_factory", "selector_cases", "selector_contract_tests",
]
