"""Evaluate selectors on captured queries/keys: every layer in order, decode step by decode step.

For each (selector, budget) the selectors of all evaluated layers are built and prefilled with the
prompt's keys; then, per decode step, each layer appends its new key and selects for its query,
layer by layer (so ``icecache-reuse`` followers see their leader's fresh selection). Each selection
is scored against dense attention over the same keys. Figures are means over layers and steps.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from icecache.bench.capture import Capture
from icecache.core.config import CacheConfig, ModelGeometry
from icecache.metrics import (
    attention_probs,
    attention_recall,
    copy_runs,
    oracle_mask,
    oracle_recall,
    output_rel_error,
    touched_page_ids,
)
from icecache.selectors.plumbing.feedback import attention_feedback, wants_feedback
from icecache.selectors.plumbing.positions import Positions
from icecache.selectors.plumbing.prompt_queries import prefill_queries


@frozen(kw_only=True)
class EvalSpec:
    """What to evaluate: ``layers`` (indices into the capture), decode ``steps``, cache ``page_size``."""

    layers: tuple[int, ...]
    steps: int
    page_size: int = 16
    sink_tokens: int = 4
    seed: int = 0


def make_config(capture: Capture, budget: int, spec: EvalSpec) -> CacheConfig:
    L, H, _, D = capture.keys.shape
    geo = ModelGeometry(num_layers=L, num_q_heads=capture.decode_queries.shape[1], num_kv_heads=H, head_dim=D)
    return CacheConfig(
        budget=budget,
        page_size=spec.page_size,
        sink_tokens=spec.sink_tokens,
        geometry=geo,
        dense_layers=min(spec.layers),
        seed=spec.seed,
    )


def build_selectors(
    registry: Any,
    name: str,
    config: CacheConfig,
    capture: Capture,
    spec: EvalSpec,
    options: dict[str, Any] | None = None,
) -> tuple[dict[int, Any], float]:
    """Selectors of every evaluated layer, prefilled with the prompt; returns them and the total
    prefill (index build) wall time in seconds."""
    options = dict(options or {})
    if name == "icecache-reuse" and "shared" not in options:
        from icecache.selectors.policies.icecache_reuse import ReuseGroup

        options["shared"] = ReuseGroup()
    if name == "omnikv" and "shared" not in options:
        from icecache.selectors.policies.omnikv import FilterGroup

        options["shared"] = FilterGroup()
    N = capture.prompt_len
    out, seconds = {}, 0.0
    for layer in spec.layers:
        sel = registry.create("selector", name, config, layer_idx=layer, policy=None, **options)
        # NOTE: the same observation window run / eval / generate() hand the selector
        queries = None if capture.prompt_queries is None else capture.prompt_queries[layer, None]
        kwargs = prefill_queries(sel, queries)
        kwargs = {k: v.float() for k, v in kwargs.items()}
        keys = capture.keys[layer, None, :, :N].contiguous()  # [1, H_kv, N, D]
        _sync(keys.device)
        t0 = time.perf_counter()
        sel.prefill(keys, **kwargs)
        _sync(keys.device)
        seconds += time.perf_counter() - t0
        out[layer] = sel
    return out, seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flush_tokens(config: CacheConfig) -> int:
    return max(1, min(config.page_size, config.selected_budget + 1))


def evaluate(
    registry: Any,
    name: str,
    budget: int,
    capture: Capture,
    spec: EvalSpec,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mean fidelity of selector ``name`` at ``budget`` over ``spec.layers`` and ``spec.steps``."""
    config = make_config(capture, budget, spec)
    selectors, build_s = build_selectors(registry, name, config, capture, spec, options)
    N = capture.prompt_len
    dev = capture.keys.device
    pos = Positions.after_prefill(
        torch.zeros(1, dtype=torch.int64, device=dev),
        N,
        sink_tokens=config.sink_tokens,
        window_tokens=config.window_tokens,
        flush_tokens=_flush_tokens(config),
    )
    acc: dict[str, list[Tensor]] = {
        k: []
        for k in (
            "attention_recall",
            "oracle_recall",
            "output_rel_error",
            "pages_touched",
            "copy_runs",
            "attended",
        )
    }
    select_s = 0.0
    for t in range(spec.steps):
        pos.advance(1)
        n = N + t + 1
        forced = torch.zeros(1, n, dtype=torch.bool, device=dev)
        for ids in (pos.sink_ids(), pos.window_ids()):
            forced.scatter_(1, ids.clamp(min=0), ids >= 0)
        for layer in spec.layers:
            sel = selectors[layer]
            keys = capture.keys[layer, None, :, :n]  # [1, H_kv, n, D]
            sel.append(keys[:, :, n - 1 :].contiguous())
            q = capture.decode_queries[layer, None, :, t]  # [1, H_q, D]
            _sync(dev)
            t0 = time.perf_counter()
            selection = sel.select(q)
            _sync(dev)
            select_s += time.perf_counter() - t0
            if wants_feedback(sel):
                ids = selection.token_ids
                picked = keys.gather(2, ids.clamp(min=0)[..., None].expand(*ids.shape, keys.shape[-1]))
                sel.observe(attention_feedback(q, picked, ids, sel.attention_scale(keys.shape[-1])))
            mask = selection.token_mask(n)  # [1, H_kv, n]
            probs = attention_probs(q, keys)
            H = keys.shape[1]
            k_left = (budget - forced.sum(1))[:, None].expand(1, H)
            oracle = oracle_mask(
                probs, forced[:, None].expand(1, H, n), pos.paged_mask()[:, None].expand(1, H, n), k_left
            )
            touched = touched_page_ids(selection.token_ids, sel.layout.token_ids)  # [1, H_kv, P]
            ids = torch.where(touched, torch.arange(touched.shape[-1], device=dev), -1)
            acc["attention_recall"].append(attention_recall(probs, mask))
            acc["oracle_recall"].append(oracle_recall(mask, oracle))
            acc["output_rel_error"].append(
                output_rel_error(q, keys, capture.values[layer, None, :, :n], mask)
            )
            acc["pages_touched"].append(touched.sum(-1).float())
            acc["copy_runs"].append(copy_runs(ids).float())
            acc["attended"].append(mask.sum(-1).float())
    row: dict[str, Any] = {"selector": name, "budget": budget, "context": N}
    for key, values in acc.items():
        row[key] = float(torch.stack(values).mean()) if values else float("nan")
    row["min_attention_recall"] = (
        float(torch.stack(acc["attention_recall"]).min()) if acc["attention_recall"] else float("nan")
    )
    row["build_seconds"] = build_s
    row["select_ms"] = 1000 * select_s / max(1, spec.steps * len(spec.layers))
    return row
