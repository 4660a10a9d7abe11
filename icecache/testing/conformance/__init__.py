"""Conformance suites: the contract every selector, tier, store, index and kernel backend must keep.

Each suite is one call that raises :class:`ContractViolation` (an ``AssertionError``) naming the
broken property, plus helpers for pytest. Needs ``hypothesis`` (``pip install icecache[testing]``).

* selectors: :func:`check_selector`, :func:`selector_contract_tests`, :func:`registered_selector_factory`
* tiers: :func:`check_tier`, :class:`TierContract` (a hypothesis state machine),
  :func:`make_tier_machine`, :func:`registered_tier_factory`
* tier stacks: :func:`check_store`, :class:`StoreContract`, :func:`make_store_machine`
* page indexes: :func:`check_index`, :func:`index_contract_tests`, :func:`registered_index_factory`
* kernel backends: :func:`check_kernel`, :func:`kernel_contract_tests`, :func:`registered_kernel_factory`

Every ``check_*`` takes ``max_examples`` (small by default), ``settings`` (a ``hypothesis.settings`` to
start from) and ``shrink`` (``False``: report the first failure as found, faster).
"""

from icecache.testing.conformance._runner import ContractViolation
from icecache.testing.conformance.index import (
    INDEX_PROPERTIES,
    IndexCase,
    check_index,
    index_cases,
    index_contract_tests,
    registered_index_factory,
)
from icecache.testing.conformance.kernel import (
    KERNEL_PROPERTIES,
    check_kernel,
    kernel_contract_tests,
    registered_kernel_factory,
)
from icecache.testing.conformance.selector import (
    SELECTOR_PROPERTIES,
    SelectorCase,
    check_selector,
    registered_selector_factory,
    selector_cases,
    selector_contract_tests,
)
from icecache.testing.conformance.store import (
    STORE_PROPERTIES,
    StoreContract,
    check_store,
    make_store_machine,
)
from icecache.testing.conformance.tier import (
    TIER_PROPERTIES,
    TierContract,
    check_tier,
    make_tier_machine,
    registered_tier_factory,
    tier_config,
)

__all__ = [
    "ContractViolation",
    # selectors
    "SELECTOR_PROPERTIES", "SelectorCase", "check_selector", "registered_selector_factory", "selector_cases",
    "selector_contract_tests",
    # tiers and stores
    "TIER_PROPERTIES", "TierContract", "check_tier", "make_tier_machine", "registered_tier_factory",
    "tier_config", "STORE_PROPERTIES", "StoreContract", "check_store", "make_store_machine",
    # indexes
    "INDEX_PROPERTIES", "IndexCase", "check_index", "index_cases", "index_contract_tests",
    "registered_index_factory",
    # kernels
    "KERNEL_PROPERTIES", "check_kernel", "kernel_contract_tests", "registered_kernel_factory",
]
