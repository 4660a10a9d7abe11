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


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float | None = None, atol: float | None = None,
                 msg: str = "") -> None:
    """Assert ``actual`` matches ``expected`` elementwise within tolerances chosen by the lower
    precision dtype of the two; reports the worst element and the relative norm error."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg} shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    loose = TOLERANCES.get(actual.dtype, (0, 0))[0] >= TOLERANCES.get(expected.dtype, (0, 0))[0]
    dtype = actual.dtype if loose else expected.dtype
    d_rtol, d_atol = TOLERANCES.get(dtype, (1e-4, 1e-5))
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if torch.isnan(a).any() and not torch.isnan(e).any():
        raise AssertionError(f"{msg} actual has NaN where expected has none")
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    if bool(bad.any()):
        idx = tuple(torch.nonzero(bad)[0].tolist())
        rel = float((a - e).norm() / e.norm().clamp_min(1e-30))
        raise AssertionError(
            f"{msg} {int(bad.sum())}/{bad.numel()} elements differ beyond rtol={rtol}, atol={atol}; "
            f"first at {idx}: actual {float(a[idx]):.6g} vs expected {float(e[idx]):.6g}; "
            f"relative norm error {rel:.3g}"
        )
