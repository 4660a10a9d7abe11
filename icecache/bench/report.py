"""Shared benchmark plumbing: median timing, tables, JSON and machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def median_time(fn: Callable[[], Any], *, repeats: int = 7, warmup: int = 1, sync: bool = True,
                setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of ``fn()`` in seconds; synchronizes CUDA around each call when present.
    ``setup()``, when given, runs untimed before every call (warm-ups included)."""
    return median_times(fn, repeats=repeats, warmup=warmup, sync=sync, setup=setup)[0]


def median_times(fn: Callable[[], Any], *, repeats: int = 7, warmup: int = 1, sync: bool = True,
                 setup: Callable[[], Any] | None = None) -> tuple[float, float]:
    """``(median wall seconds, median CPU seconds of this process)`` of ``fn()``, as
    :func:`median_time`. NOTE: on a machine shared with other jobs the CPU time leaves out the time the
    process waited for a core; it still includes what their cache traffic costs it."""
    return median_times_paired({"fn": (fn, setup)}, repeats=repeats, warmup=warmup, sync=sync)["fn"]


Case = tuple[Callable[[], Any], Callable[[], Any] | None]  # (fn, setup)


def median_times_paired(cases: Mapping[str, Case], *, repeats: int = 7, warmup: int = 1,
                        sync: bool = True) -> dict[str, tuple[float, float]]:
    """:func:`median_times` of each ``name: (fn, setup)``, the cases taking turns within every repeat
    (a, b, a, b, ...), so that a burst of load from other jobs on a shared machine hits all of them
    alike: what a ratio between them needs."""
    cuda = sync and torch.cuda.is_available()
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(warmup + repeats):
        for name, (fn, setup) in cases.items():
            if setup is not None:
                setup()
            if cuda:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return {name: (statistics.median(times[name]), statistics.median(cpu[name])) for name in cases}


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else ``None``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    from icecache.index.hierarchy.index import fast_bfloat16_products

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        # NOTE: the hierarchy index's summary products run in bfloat16 where this holds
        # (summary_matmul="auto"), so its CPU selections, and a near-tie sample's answer, depend on it
        "cpu_bf16_products": fast_bfloat16_products(torch.device("cpu")),
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
