"""Evaluate policies on task samples: prefill each sample once, decode the answer once per policy."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from attrs import asdict, field, frozen

from icecache.core.errors import ConfigError
from icecache.eval.forced import force_tokens
from icecache.eval.policies import PolicySpec, build_policy
from icecache.integrations.hf.cache import IceCache
from icecache.integrations.hf.generation import decode
from icecache.integrations.hf.snapshot import prefill_snapshot
from icecache.selectors.plumbing.prompt_queries import policy_query_window
from icecache.tasks.sample import TaskSample, split_prompt_ids
from icecache.tasks.scoring import is_correct, match_fraction


@frozen(kw_only=True)
class SampleResult:
    """One sample decoded under one policy. ``batch`` numbers the decode batch it ran in; ``step_s``
    holds that batch's seconds per decode step (mean over steps after the first) by part;
    ``device_fraction`` is device-tier KV bytes over a full cache's; ``host_bytes`` / ``disk_bytes`` what
    the cache held in host memory and on disk, ``memory`` the whole breakdown of ``memory_report()``."""

    sample_id: str
    task: str
    policy: str
    selector: str
    budget: int | None
    prompt_tokens: int
    correct: bool
    score: float
    output: str
    new_tokens: int
    batch: int
    batch_size: int
    index_build_s: float
    step_s: dict[str, float]
    device_kv_bytes: int
    full_kv_bytes: int
    device_fraction: float
    host_bytes: int = 0
    disk_bytes: int = 0
    memory: dict[str, Any] = field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eos_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def check_prompts(samples: Sequence[TaskSample], prompts: Sequence[list[int]],
                  max_positions: int | None) -> None:
    """Raise :class:`ConfigError` naming the first sample whose prompt plus answer exceeds the model."""
    if max_positions is None:
        return
    for sample, ids in zip(samples, prompts, strict=True):
        if len(ids) + sample.max_new_tokens > max_positions:
            raise ConfigError(
                f"sample {sample.id!r}: prompt of {len(ids)} tokens plus {sample.max_new_tokens} new tokens "
                f"exceeds the model's {max_positions} positions")


def batches(samples: Sequence[TaskSample], batch_size: int,
            decoded: Sequence[int] | None = None) -> list[list[int]]:
    """Indices of samples in batches of at most ``batch_size``, one task per batch (same answer length)
    and, given ``decoded`` (tokens teacher-forced per sample), one such length per batch."""
    out: list[list[int]] = []
    by_task: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(samples):
        by_task.setdefault((s.task, decoded[i] if decoded is not None else 0), []).append(i)
    for idx in by_task.values():
        out += [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
    return out


def evaluate(model: Any, tokenizer: Any, samples: Sequence[TaskSample], specs: Sequence[PolicySpec], *,
             batch_size: int = 4, policy_kwargs: dict[str, Any] | None = None,
             progress: Callable[[int, str], None] | None = None, temperature: float = 0.0,
             seed: int = 0, done: Collection[tuple[str, str]] = (),
             on_results: Callable[[list[SampleResult]], None] | None = None,
             snapshots: Any = None) -> list[SampleResult]:
    """Every sample under every policy. ``progress(n_done, description)`` is called as work finishes
    (units: sample x policy). All prompts are checked against the model's positions before any work.

    ``done``: ``(sample id, policy label)`` pairs finished by an earlier run; a batch is decoded under
    a policy unless all its samples are done there, and prefilled only when some policy is left.
    ``on_results(chunk)`` receives each batch's results under one policy as soon as they exist (the
    caller writes them out, so an interrupted run keeps them). ``snapshots``: a
    :class:`~icecache.integrations.hf.snapshot_store.SnapshotStore`; a batch whose prefill it holds
    is read from it instead of prefilled, others are prefilled and saved. Returns the new results."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if not samples:
        raise ConfigError("no samples to evaluate")
    kwargs = policy_kwargs or {}
    policies = [build_policy(spec, model.config, device=model.device, **kwargs) for spec in specs]
    split = [split_prompt_ids(tokenizer, s) for s in samples]
    prompts = [p + d for p, d in split]
    check_prompts(samples, prompts, getattr(model.config, "max_position_embeddings", None))
    eos = eos_ids(tokenizer)
    results: list[SampleResult] = []
    done = set(done)
    for batch_no, idx in enumerate(batches(samples, batch_size, [len(d) for _, d in split])):
        batch = [samples[i] for i in idx]
        todo = [(spec, policy) for spec, policy in zip(specs, policies, strict=True)
                if not all((s.id, spec.label) in done for s in batch)]
        if progress is not None and len(todo) < len(specs):
            progress(len(batch) * (len(specs) - len(todo)), f"{batch[0].task} done before")
        if not todo:
            continue
        if progress is not None:
            progress(0, f"prefill {batch[0].task} x{len(batch)}")
        window = max(policy_query_window(policy) for _, policy in todo)
        ids = [split[i][0] for i in idx]
        snapshot = (prefill_snapshot(model, ids, query_window=window) if snapshots is None
                    else snapshots.prefill(model, ids, query_window=window))
        forced = [split[i][1] for i in idx]
        for spec, policy in todo:
            chunk: list[SampleResult] = []
            t0 = time.perf_counter()
            cache = IceCache.from_snapshot(snapshot, policy)
            build_s = time.perf_counter() - t0
            # NOTE: a task's decoded text reaches the cache through decode steps, as generated text would
            state = force_tokens(model, cache, snapshot, forced) if forced[0] else snapshot
            outs = decode(model, cache, state, [s.max_new_tokens for s in batch], eos_token_ids=eos,
                          temperature=temperature, seed=seed)
            texts = tokenizer.batch_decode(outs, skip_special_tokens=True)
            step_s = cache.timings.mean(skip=1)
            memory = cache.memory_report()
            for i, sample, text, out in zip(idx, batch, texts, outs, strict=True):
                chunk.append(SampleResult(
                    sample_id=sample.id, task=sample.task, policy=spec.label, selector=spec.selector,
                    budget=spec.budget, prompt_tokens=len(prompts[i]),
                    correct=is_correct(text, sample.answers), score=match_fraction(text, sample.answers),
                    output=text, new_tokens=len(out), batch=batch_no, batch_size=len(batch),
                    index_build_s=build_s, step_s=step_s,
                    device_kv_bytes=memory["device_kv_bytes"], full_kv_bytes=memory["full_kv_bytes"],
                    device_fraction=memory["device_fraction"], host_bytes=memory["host_bytes"],
                    disk_bytes=memory["disk_bytes"], memory=memory,
                ))
            cache.close()
            del cache
            results += chunk
            if on_results is not None:
                on_results(chunk)
            if progress is not None:
                progress(len(batch), f"{batch[0].task} {spec.label}")
        del snapshot
        gc.collect()  # NOTE: selector/index objects may hold reference cycles; free them per batch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results
