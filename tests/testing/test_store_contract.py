"""The store suite accepts the built-in stacks and catches each deliberately broken store."""

import pytest
from fixture_stores import BROKEN_STORES, factory
from hypothesis import settings

from icecache.storage.store import TieredStore
from icecache.testing.conformance import ContractViolation, StoreContract, check_store


@pytest.mark.parametrize("cls", list(BROKEN_STORES), ids=lambda c: c.__name__)
def test_each_broken_store_is_caught(cls):
    with pytest.raises(AssertionError) as info:
        check_store(factory(cls), max_examples=40, shrink=False)
    assert isinstance(info.value, ContractViolation)
    assert info.value.prop in BROKEN_STORES[cls], str(info.value)


@pytest.mark.parametrize("stack", [("device", "host", "disk"), ("device",), ("host", "disk")], ids="+".join)
def test_builtin_stacks_pass(stack):
    check_store(lambda config: TieredStore.build(config, stack), max_examples=10)


class DeviceHostStack(StoreContract):
    def make_store(self, config):
        return TieredStore.build(config, ("device", "host"))


TestDeviceHostStack = DeviceHostStack.TestCase
TestDeviceHostStack.settings = settings(max_examples=5, stateful_step_count=15, deadline=None)
