"""Run every policy over documents' continuations: prefill each batch once, the full-KV reference, then
each policy teacher-forced (and optionally free-running) from the same snapshot."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch

from icecache.bench.continuation.documents import Split
from icecache.bench.continuation.measure import METRICS, agreement, forced_run, reference_run, top2_margin
from icecache.bench.continuation.summary import kl_curve, summarize
from icecache.eval.policies import PolicySpec, build_policy
from icecache.integrations.hf.cache import IceCache
from icecache.integrations.hf.generation import decode
from icecache.integrations.hf.snapshot import prefill_snapshot
from icecache.selectors.plumbing.prompt_queries import policy_query_window

FULL = PolicySpec("full", None)


def _mean_steps(timings: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = timings[0].keys()
    return {k: sum(t[k] for t in timings) / len(timings) for k in keys}


def run_continuation(model: Any, splits: Sequence[Split], specs: Sequence[PolicySpec], *,
                     batch_size: int = 4, segments: int = 4, free_tokens: int = 0,
                     policy_kwargs: dict[str, Any] | None = None,
                     progress: Callable[[int, str], None] | None = None,
                     on_batch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Metrics of every policy in ``specs`` against full KV over ``splits`` (documents of equal prompt
    and continuation lengths). ``progress(n, what)`` counts decode steps; ``on_batch(partial)`` gets the
    results so far after each batch. Returns ``{"reference": ..., "policies": [...]}``; each policy has
    ``summary`` (:func:`summarize`), ``kl_by_position``, ``step_s``, ``device_fraction`` and, with
    ``free_tokens``, ``free`` (greedy agreement with full KV's own greedy output) and ``free_by_doc``
    (per document, with full's top-1 margin where it parted: :func:`agreement`)."""
    kwargs = policy_kwargs or {}
    lengths = {(len(s.prompt), len(s.continuation)) for s in splits}
    if len(lengths) != 1:
        raise ValueError(f"documents must share prompt and continuation lengths, got {sorted(lengths)}")
    ref_policy = build_policy(FULL, model.config, device=model.device, **kwargs)
    policies = [build_policy(spec, model.config, device=model.device, **kwargs) for spec in specs]
    # NOTE: the reference is keyed apart from the policies: ``full`` may be one of them (full vs full)
    REF = "reference"
    metrics: dict[str, dict[str, list[torch.Tensor]]] = {s.label: {m: [] for m in METRICS}
                                                         for s in specs}
    metrics[REF] = {m: [] for m in METRICS}
    timings: dict[str, list[dict[str, float]]] = {s.label: [] for s in specs}
    timings[REF] = []
    fractions: dict[str, list[float]] = {s.label: [] for s in specs}
    free: dict[str, list[dict[str, float]]] = {s.label: [] for s in specs}
    tick = progress or (lambda n, what: None)

    def result() -> dict[str, Any]:
        def rows(label: str) -> dict[str, torch.Tensor]:
            return {m: torch.cat(v, dim=1) for m, v in metrics[label].items()}

        ref = rows(REF)
        reference = {**summarize(ref, segments), "step_s": _mean_steps(timings[REF])}
        out = []
        for spec in specs:
            m = rows(spec.label)
            entry = {"policy": spec.label, "selector": spec.selector, "budget": spec.budget,
                     "summary": summarize(m, segments), "kl_by_position": kl_curve(m["kl"]),
                     "step_s": _mean_steps(timings[spec.label]),
                     "device_fraction": sum(fractions[spec.label]) / len(fractions[spec.label])}
            if free[spec.label]:
                entry["free"] = {k: sum(r[k] for r in free[spec.label]) / len(free[spec.label])
                                 for k in ("first_divergence", "agree_fraction")}
                entry["free_by_doc"] = free[spec.label]
            out.append(entry)
        return {"reference": reference, "policies": out}

    window = max((policy_query_window(policy) for policy in policies), default=0)
    for start in range(0, len(splits), batch_size):
        batch = splits[start:start + batch_size]
        tick(0, f"prefill x{len(batch)}")
        # NOTE: the largest observation window any policy asks for (SnapKV's votes, H2O's, InfLLM's,
        # Ada-KV's budgets): without it they decoded as if the prompt had no queries
        snapshot = prefill_snapshot(model, [s.prompt for s in batch], query_window=window)
        tokens = torch.tensor([s.continuation for s in batch], dtype=torch.long)  # [B, M + 1]
        cache = IceCache.from_snapshot(snapshot, ref_policy)
        ref_logp = reference_run(model, cache, snapshot, tokens, lambda n: tick(n, "full (reference)"))
        timings[REF].append(cache.timings.mean(skip=1))
        cache.close()
        for name, value in _self_metrics(ref_logp, tokens).items():
            metrics[REF][name].append(value)
        ref_free: list[list[int]] = []
        ref_margins: list[list[float]] = []
        if free_tokens:
            margins: list[torch.Tensor] = []
            cache = IceCache.from_snapshot(snapshot, ref_policy)
            ref_free = decode(model, cache, snapshot, free_tokens,
                              on_logits=lambda logits, into=margins: into.append(top2_margin(logits)))
            cache.close()
            ref_margins = torch.stack(margins, dim=1).tolist()  # [B, steps]
            tick(free_tokens, "full free-running")
        for spec, policy in zip(specs, policies, strict=True):
            cache = IceCache.from_snapshot(snapshot, policy)
            got = forced_run(model, cache, snapshot, tokens, ref_logp, lambda n, w=spec.label: tick(n, w))
            timings[spec.label].append(cache.timings.mean(skip=1))
            fractions[spec.label].append(cache.memory_report()["device_fraction"])
            cache.close()
            for name, value in got.items():
                metrics[spec.label][name].append(value)
            if free_tokens:
                cache = IceCache.from_snapshot(snapshot, policy)
                out = decode(model, cache, snapshot, free_tokens)
                cache.close()
                parted = agreement(out, ref_free, ref_margins)
                free[spec.label] += [{"id": s.id, **a} for s, a in zip(batch, parted, strict=True)]
                tick(free_tokens, f"{spec.label} free-running")
        del snapshot, ref_logp
        gc.collect()  # NOTE: selector/index objects may hold reference cycles; free them per batch
        if on_batch is not None and specs:
            on_batch(result())
    return result()


def _self_metrics(ref_logp: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Full KV scored against itself: its NLL and entropy, zero KL and extra NLL, agreement 1."""
    target = tokens[:, 1:].T.cpu()[..., None]  # [T - 1, B, 1]
    nll = -ref_logp.gather(-1, target)[..., 0]
    entropy = -(ref_logp.exp() * ref_logp).sum(-1)
    zero = torch.zeros_like(nll)
    return {"nll": nll, "extra_nll": zero, "kl": zero, "agree": torch.ones_like(nll), "full_entropy": entropy}
