"""Teacher-forced and free-running decodes of a continuation through an :class:`IceCache`, scored against
full KV.

Each policy's cache is built from the same prefill snapshot (:meth:`IceCache.from_snapshot`, as
``icecache eval`` does) and decodes one token per row per step through the model, so pages are inserted,
the index updated and the tiers used exactly as in a real generation. The reference is the ``full``
policy on the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from icecache.integrations.hf.snapshot import PrefillSnapshot

#: per-step metrics recorded for each row: ``[steps, B]`` float tensors
METRICS = ("nll", "extra_nll", "kl", "agree", "full_entropy")


@torch.inference_mode()
def forced_logits(model: Any, cache: Any, snapshot: PrefillSnapshot, tokens: Tensor) -> Iterator[Tensor]:
    """Feed ``tokens`` ``[B, T]`` (int64) one column per step after the snapshot's prompts; yields the
    float32 logits ``[B, V]`` after each step (predicting the next column)."""
    device = model.device
    positions = snapshot.lengths.to(device).clone()  # RoPE position of the fed token, per row
    tokens = tokens.to(device)
    for t in range(tokens.shape[1]):
        out = model(input_ids=tokens[:, t:t + 1], position_ids=positions[:, None], past_key_values=cache,
                    use_cache=True)
        cache.timings.end_step()
        positions += 1
        yield out.logits[:, -1].float()


@torch.inference_mode()
def reference_run(model: Any, cache: Any, snapshot: PrefillSnapshot, tokens: Tensor,
                  progress: Callable[[int], None] | None = None) -> Tensor:
    """Full KV's log-probabilities ``[T - 1, B, V]`` (float32, CPU) after feeding ``tokens[:, :-1]``."""
    out = []
    for logits in forced_logits(model, cache, snapshot, tokens[:, :-1]):
        out.append(torch.log_softmax(logits, dim=-1).cpu())
        if progress is not None:
            progress(1)
    return torch.stack(out)


def step_metrics(logits: Tensor, ref_logp: Tensor, target: Tensor) -> dict[str, Tensor]:
    """One step's metrics per row. ``logits`` ``[B, V]`` (the policy's), ``ref_logp`` ``[B, V]`` (full's
    log-probs), ``target`` ``[B]`` (the next token). ``kl`` is KL(full || policy) in nats, ``agree`` is
    1 where both argmaxes match, ``extra_nll`` the policy's NLL of the target minus full's."""
    logp = torch.log_softmax(logits.float().cpu(), dim=-1)
    target = target.cpu()[:, None]
    nll = -logp.gather(-1, target)[:, 0]
    ref_nll = -ref_logp.gather(-1, target)[:, 0]
    p_ref = ref_logp.exp()
    kl = (p_ref * (ref_logp - logp)).sum(-1).clamp_min(0.0)  # NOTE: rounding can give -1e-9
    agree = (logp.argmax(-1) == ref_logp.argmax(-1)).float()
    entropy = -(p_ref * ref_logp).sum(-1)
    return {"nll": nll, "extra_nll": nll - ref_nll, "kl": kl, "agree": agree, "full_entropy": entropy}


@torch.inference_mode()
def forced_run(model: Any, cache: Any, snapshot: PrefillSnapshot, tokens: Tensor, ref_logp: Tensor,
               progress: Callable[[int], None] | None = None) -> dict[str, Tensor]:
    """Teacher-force ``tokens[:, :-1]`` through ``cache``; metrics ``[T - 1, B]`` against ``ref_logp``
    (:func:`reference_run`), step ``t`` scored on ``tokens[:, t + 1]``."""
    rows: dict[str, list[Tensor]] = {m: [] for m in METRICS}
    for t, logits in enumerate(forced_logits(model, cache, snapshot, tokens[:, :-1])):
        for name, value in step_metrics(logits, ref_logp[t], tokens[:, t + 1]).items():
            rows[name].append(value)
        if progress is not None:
            progress(1)
    return {m: torch.stack(v) for m, v in rows.items()}


def top2_margin(logits: Tensor) -> Tensor:
    """Per row, how far the most likely token leads the runner-up, in nats (log-prob gap) ``[B]``."""
    top = torch.log_softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]).cpu()


def agreement(tokens: list[list[int]], reference: list[list[int]],
              reference_margins: list[list[float]] | None = None) -> list[dict[str, float]]:
    """Per row: ``first_divergence`` (tokens generated before the first that differs from full's; the
    length when none does) and ``agree_fraction`` (positions where both generated the same token).
    With ``reference_margins`` (full's :func:`top2_margin` per row and step) also ``full_margin``: full's
    own top-1 lead at the first divergence, ``None`` when none; a small one means a near-tie that any
    perturbation flips, not a failure of the cache."""
    out = []
    for r, (row, ref) in enumerate(zip(tokens, reference, strict=True)):
        n = min(len(row), len(ref))
        same = [a == b for a, b in zip(row[:n], ref[:n], strict=True)]
        first = next((i for i, s in enumerate(same) if not s), n)
        entry = {"first_divergence": float(first), "agree_fraction": sum(same) / max(1, len(ref))}
        if reference_margins is not None:
            entry["full_margin"] = reference_margins[r][first] if first < n else None
        out.append(entry)
    return out
