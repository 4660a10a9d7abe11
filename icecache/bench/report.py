"""Shared benchmark plumbing: median timing, tables, JSON and machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def median_time(fn: Callable[[], Any], *, repeats: int = 7, warmup: int = 1, sync: bool = True,
                setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of ``fn()`` in seconds; synchronizes CUDA around each call when present.
    ``setup()``, when given, runs untimed before every call (warm-ups included)."""
    cuda = sync and torch.cuda.is_available()
    times = []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info() -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        # NOTE: whether the machine was busy: time figures are comparable only within one run
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(b) for b in body)])


def write_json(path: str | os.PathLike[str] | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus machine info) atomically: a uniquely named temp file renamed into place."""
    from icecache.eval.files import write_atomic

    if path is None:
        return
    write_atomic(path, json.dumps({"machine": machine_info(), **payload}, indent=2, default=str))
