"""The tier suite accepts the real tiers and catches each deliberately broken one."""

import pytest
import torch
from fixture_tiers import BROKEN_TIERS, CorruptsByteTier, factory
from hypothesis import settings
from hypothesis import strategies as st

from icecache.storage.host import HostTier
from icecache.testing.conformance import ContractViolation, TierContract, check_tier, make_tier_machine


@pytest.mark.parametrize("cls", list(BROKEN_TIERS), ids=lambda c: c.__name__)
def test_each_broken_tier_is_caught(cls):
    with pytest.raises(AssertionError) as info:
        check_tier(factory(cls), max_examples=40, shrink=False)
    assert isinstance(info.value, ContractViolation)
    assert info.value.prop == BROKEN_TIERS[cls], str(info.value)


def test_a_corrupted_byte_is_reported_as_a_round_trip_failure():
    with pytest.raises(AssertionError, match=r"\[round-trip\].*1 byte\(s\) differing"):
        check_tier(factory(CorruptsByteTier), max_examples=40, shrink=False)


def test_round_trips_are_bit_identical_in_half_precision():
    check_tier(lambda config: HostTier.from_config(config), max_examples=5, dtype=torch.bfloat16)


class HostMachine(TierContract):
    """The subclassing form: a plugin author's tier, capacities narrowed."""

    capacities = st.integers(2, 3)

    def make_tier(self, config):
        assert config.tiers.host_pages in (2, 3)
        return HostTier.from_config(config)


TestHostTierMachine = HostMachine.TestCase
TestHostTierMachine.settings = settings(max_examples=5, stateful_step_count=20, deadline=None)


def test_make_tier_machine_builds_a_runnable_class():
    machine = make_tier_machine(lambda config: HostTier.from_config(config), page_size=2, head_dim=4)
    assert issubclass(machine, TierContract) and machine.page_size == 2
    check_tier(machine, max_examples=3)
