"""Per-step decode timing: index query, page load, attention and the rest of the step."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from attrs import define, field

PARTS = ("index_query", "page_load", "attention")


@define
class DecodeTimings:
    """Seconds spent per decode step, summed over layers.

    ``steps`` holds one dict per finished step with ``index_query``, ``page_load``, ``attention``,
    ``rest`` and ``total``; ``rest`` is everything else in the step (projections, MLPs, sampling).
    ``cpu`` is the process's CPU seconds over the step (all its threads): on a busy machine it moves
    far less than the wall-clock parts, so ratios of it stay comparable when others share the cores.
    On CUDA each measured part synchronizes the device (timing costs some speed; turn it off with
    ``enabled=False``).
    """

    enabled: bool = True
    steps: list[dict[str, float]] = field(factory=list)
    _current: dict[str, float] = field(factory=lambda: dict.fromkeys(PARTS, 0.0))
    _step_start: float | None = None
    _step_cpu: float = 0.0

    @contextmanager
    def part(self, name: str):
        if not self.enabled:
            yield
            return
        _sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self._current[name] += time.perf_counter() - t0

    def begin_step(self) -> None:
        """Mark the start of a decode step (the first layer's cache update calls it)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._step_start is not None:
            self._close(now)
        self._step_start, self._step_cpu = now, time.process_time()

    def end_step(self) -> None:
        """Close the running step (call after the step's sampling, or before reading ``steps``)."""
        if self.enabled and self._step_start is not None:
            _sync()
            self._close(time.perf_counter())
            self._step_start = None

    def _close(self, now: float) -> None:
        total = now - self._step_start
        parts = dict(self._current)
        parts["rest"] = max(0.0, total - sum(parts.values()))
        parts["total"] = total
        parts["cpu"] = time.process_time() - self._step_cpu
        self.steps.append(parts)
        self._current = dict.fromkeys(PARTS, 0.0)

    def mean(self, skip: int = 0) -> dict[str, float]:
        """Mean seconds per step of every part, skipping the first ``skip`` steps (warm-up)."""
        steps = self.steps[skip:] or self.steps
        keys = (*PARTS, "rest", "total")
        if not steps:
            return dict.fromkeys(keys, 0.0)
        return {k: sum(s[k] for s in steps) / len(steps) for k in keys}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
