"""assert_close: tolerances by dtype, NaN / infinity placement, and a useful message."""

import pytest
import torch

from icecache.testing import assert_close


def test_passes_within_dtype_tolerance_and_fails_beyond():
    x = torch.linspace(-3, 3, 50)
    assert_close(x + 1e-6, x)
    with pytest.raises(AssertionError, match=r"1/50 elements differ .* worst at \(7,\)"):
        y = x.clone()
        y[7] += 0.1
        assert_close(y, x)


def test_lower_precision_dtype_sets_the_tolerance():
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert_close(x.to(torch.bfloat16), x)  # bf16 rounding is within bf16 tolerance
    with pytest.raises(AssertionError):
        assert_close(x.to(torch.bfloat16).float(), x, rtol=1e-6, atol=1e-7)


def test_nan_and_infinity_must_match():
    e = torch.tensor([1.0, float("nan"), float("-inf")])
    assert_close(e.clone(), e)
    with pytest.raises(AssertionError, match=r"NaN mismatch at \(1,\)"):
        assert_close(torch.tensor([1.0, 5.0, float("-inf")]), e)
    with pytest.raises(AssertionError, match=r"NaN mismatch at \(0,\)"):
        assert_close(torch.tensor([float("nan"), float("nan"), float("-inf")]), e)
    with pytest.raises(AssertionError, match=r"infinity mismatch at \(2,\)"):
        assert_close(torch.tensor([1.0, float("nan"), float("inf")]), e)


def test_shape_mismatch_and_message_prefix():
    with pytest.raises(AssertionError, match=r"^out: shape \(2,\) != expected \(3,\)"):
        assert_close(torch.zeros(2), torch.zeros(3), msg="out")
    with pytest.raises(TypeError, match="compares tensors"):
        assert_close([1.0], torch.zeros(1))
