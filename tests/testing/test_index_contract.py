"""The index suite accepts a conforming protocol-only index and catches each broken one."""

import pytest
from fixture_indexes import BROKEN_INDEXES, AppendIndex

from icecache.testing.conformance import ContractViolation, check_index, index_contract_tests


def test_a_conforming_protocol_only_index_passes():
    check_index(AppendIndex, max_examples=10)


@pytest.mark.parametrize("bug", sorted(BROKEN_INDEXES))
def test_each_broken_index_is_caught(bug):
    with pytest.raises(AssertionError) as info:
        check_index(lambda config: AppendIndex(config, bug=bug), max_examples=30, shrink=False)
    assert isinstance(info.value, ContractViolation)
    assert info.value.prop == BROKEN_INDEXES[bug], str(info.value)


def test_two_leaves_message_names_the_position():
    pattern = r"\[layout\].*position \d+ of row \[b=\d+, h=\d+\] is in 2 pages"
    with pytest.raises(AssertionError, match=pattern):
        check_index(lambda config: AppendIndex(config, bug="two-leaves"), max_examples=30)


@pytest.mark.parametrize("check", index_contract_tests(AppendIndex, max_examples=2))
def test_pytest_parametrization_helper(check):
    check()
