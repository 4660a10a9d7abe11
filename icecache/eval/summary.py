"""Aggregate per-sample results into per-(policy, task) rows and a per-policy overview."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icecache.eval.runner import SampleResult
from icecache.integrations.hf.timing import PARTS


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def task_rows(results: Sequence[SampleResult], context: int | None) -> list[dict[str, Any]]:
    """``{policy, budget, context, task, n, accuracy, score}`` per (policy, task), in first-seen order."""
    groups: dict[tuple[str, str], list[SampleResult]] = {}
    for r in results:
        groups.setdefault((r.policy, r.task), []).append(r)
    rows = []
    for (policy, task), rs in groups.items():
        rows.append({"policy": policy, "budget": rs[0].budget, "context": context, "task": task,
                     "n": len(rs), "accuracy": _mean([float(r.correct) for r in rs]),
                     "score": _mean([r.score for r in rs])})
    return rows


def policy_rows(results: Sequence[SampleResult], context: int | None, *, reference: str = "full"
                ) -> list[dict[str, Any]]:
    """One row per policy over all tasks: accuracy, accuracy relative to ``reference`` (mean of per-task
    ratios is avoided: it is total correct over total correct of the reference on the samples both
    decoded), device-tier KV fraction, host and disk bytes, everything held (device + host) over full KV,
    page fill and per-step decode times in milliseconds.

    ``batch`` must number each decode batch once across ``results`` (step times are per batch)."""
    by_policy: dict[str, list[SampleResult]] = {}
    for r in results:
        by_policy.setdefault(r.policy, []).append(r)
    ref = {r.sample_id: r.correct for r in by_policy.get(reference, [])}
    rows = []
    for policy, rs in by_policy.items():
        correct = sum(r.correct for r in rs)
        shared = [r for r in rs if r.sample_id in ref]
        ref_correct = sum(ref[r.sample_id] for r in shared)
        # NOTE: step times are per batch, so weight each batch once (its first sample).
        firsts: dict[int, SampleResult] = {}
        for r in rs:
            firsts.setdefault(r.batch, r)
        steps = list(firsts.values())
        row: dict[str, Any] = {
            "policy": policy, "budget": rs[0].budget, "context": context, "task": "all", "n": len(rs),
            "accuracy": correct / len(rs), "score": _mean([r.score for r in rs]),
            "rel_full": (sum(r.correct for r in shared) / ref_correct) if ref_correct else None,
            "device_kv_fraction": _mean([r.device_fraction for r in rs]),
            "device_kv_mib": _mean([r.device_kv_bytes for r in rs]) / 2**20,
            "host_mib": _mean([r.host_bytes for r in rs]) / 2**20,
            "disk_mib": _mean([r.disk_bytes for r in rs]) / 2**20,
            "full_kv_mib": _mean([r.full_kv_bytes for r in rs]) / 2**20,
            "host_fraction": _mean([r.host_bytes / r.full_kv_bytes if r.full_kv_bytes else 0.0 for r in rs]),
            "held_fraction": _mean([(r.device_kv_bytes + r.host_bytes) / r.full_kv_bytes if r.full_kv_bytes
                                    else 0.0 for r in rs]),
            "page_fill": _mean([r.memory.get("page_fill", 1.0) for r in rs]),
            "index_build_s": _mean([r.index_build_s for r in steps]),
        }
        for part in (*PARTS, "rest", "total"):
            row[f"{part}_ms"] = 1000 * _mean([r.step_s[part] for r in steps])
        rows.append(row)
    return rows
