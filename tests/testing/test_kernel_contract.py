"""The kernel suite accepts the reference backend and catches each deliberately wrong one."""

import pytest
import torch
from fixture_kernels import BROKEN_KERNELS, NoScaleBackend

from icecache.kernels.backends import ReferenceBackend
from icecache.testing.conformance import ContractViolation, check_kernel, kernel_contract_tests


@pytest.mark.parametrize("cls", list(BROKEN_KERNELS), ids=lambda c: c.__name__)
def test_each_wrong_backend_is_caught(cls):
    with pytest.raises(AssertionError) as info:
        check_kernel(cls, max_examples=40, shrink=False)
    assert isinstance(info.value, ContractViolation)
    assert info.value.prop == BROKEN_KERNELS[cls], str(info.value)


def test_wrong_output_message_names_the_op_and_worst_element():
    pattern = r"\[paged-attention\]: (out|lse): \d+/\d+ elements differ .* worst at"
    with pytest.raises(AssertionError, match=pattern):
        check_kernel(NoScaleBackend, max_examples=20, properties=["paged-attention"])


def test_half_precision_within_its_tolerance():
    check_kernel(ReferenceBackend, max_examples=5, dtypes=(torch.float16, torch.bfloat16))


@pytest.mark.parametrize("check", kernel_contract_tests(ReferenceBackend, max_examples=3))
def test_pytest_parametrization_helper(check):
    check()
