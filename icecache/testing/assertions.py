"""One closeness check for every numeric comparison in the project's and plugins' tests."""

from __future__ import annotations

import torch
from torch import Tensor

#: default tolerances by dtype: (rtol, atol)
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def _where(mask: Tensor) -> tuple[int, ...]:
    return tuple(torch.nonzero(mask)[0].tolist())


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float | None = None, atol: float | None = None,
                 msg: str = "") -> None:
    """Assert ``actual`` matches ``expected`` elementwise: ``|a - e| <= atol + rtol * |e|``.

    Tolerances default to those of the lower-precision dtype of the two (:data:`TOLERANCES`).
    NaNs and infinities must sit at the same places (same sign) in both. A failure reports how many
    elements differ, the worst one (largest excess over its tolerance) and the relative norm error.
    """
    prefix = f"{msg}: " if msg else ""
    if not isinstance(actual, Tensor) or not isinstance(expected, Tensor):
        raise TypeError(f"{prefix}assert_close compares tensors, got {type(actual).__name__} and "
                        f"{type(expected).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{prefix}shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    loose = TOLERANCES.get(actual.dtype, (0, 0))[0] >= TOLERANCES.get(expected.dtype, (0, 0))[0]
    dtype = actual.dtype if loose else expected.dtype
    d_rtol, d_atol = TOLERANCES.get(dtype, (1e-4, 1e-5))
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        idx = _where(nan_a != nan_e)
        raise AssertionError(f"{prefix}NaN mismatch at {idx}: actual {float(a[idx])} vs expected "
                             f"{float(e[idx])} ({int((nan_a != nan_e).sum())} such elements)")
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    if not torch.equal(inf_a, inf_e) or not torch.equal(a[inf_a], e[inf_e]):
        idx = _where((inf_a | inf_e) & (a != e))
        raise AssertionError(f"{prefix}infinity mismatch at {idx}: actual {float(a[idx])} vs expected "
                             f"{float(e[idx])}")
    finite = ~(nan_a | inf_a)
    a, e = torch.where(finite, a, 0.0), torch.where(finite, e, 0.0)
    excess = (a - e).abs() - (atol + rtol * e.abs())
    bad = excess > 0
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.unravel_index(torch.argmax(excess), excess.shape))
        rel = float((a - e).norm() / e.norm().clamp_min(1e-30))
        raise AssertionError(
            f"{prefix}{int(bad.sum())}/{bad.numel()} elements differ beyond rtol={rtol}, atol={atol}; "
            f"worst at {idx}: actual {float(a[idx]):.6g} vs expected {float(e[idx]):.6g}; "
            f"relative norm error {rel:.3g}"
        )
