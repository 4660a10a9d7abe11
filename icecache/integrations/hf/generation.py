"""A plain decode loop over an :class:`IceCache` built from a prefill snapshot (greedy or sampling)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from icecache.integrations.hf.compat import with_cache
from icecache.integrations.hf.snapshot import PrefillSnapshot


def pick_tokens(logits: Tensor, *, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """Next tokens ``[B]`` from ``logits`` ``[B, V]``: argmax when ``temperature == 0``, else sampling
    with temperature and nucleus ``top_p``."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the best token
        sorted_p = torch.where(keep, sorted_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def decode(model: Any, cache: Any, snapshot: PrefillSnapshot, max_new_tokens: int | Sequence[int], *,
           eos_token_ids: Sequence[int] = (), temperature: float = 0.0, top_p: float = 1.0,
           seed: int = 0, on_logits: Callable[[Tensor], None] | None = None) -> list[list[int]]:
    """Generate after the snapshot's prompts; each row stops at an EOS token (kept out of the result)
    or after its ``max_new_tokens``. The first token comes from the dense prefill's logits; each
    further step runs the model on one token per row through ``cache``. ``on_logits``, when given, sees
    the logits ``[B, V]`` each token is picked from (the prefill's first). Returns token ids per row."""
    B = snapshot.batch_size
    limits = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    eos = torch.tensor(sorted(set(eos_token_ids)) or [-1], device=device)
    positions = snapshot.lengths.to(device).clone()  # RoPE position of the next token, per row
    logits = snapshot.last_logits.to(device)
    if on_logits is not None:
        on_logits(logits)
    token = pick_tokens(logits, temperature=temperature, top_p=top_p, generator=generator)
    limit_t = torch.tensor(limits, device=device)
    cache_arg = with_cache(model, cache)
    steps: list[Tensor] = []
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max(limits)):
        steps.append(token)
        done |= torch.isin(token, eos) | (step + 1 >= limit_t)
        if bool(done.all()):
            break
        out = model(input_ids=token[:, None], position_ids=positions[:, None], **cache_arg, use_cache=True)
        if on_logits is not None:
            on_logits(out.logits[:, -1])
        token = pick_tokens(out.logits[:, -1], temperature=temperature, top_p=top_p, generator=generator)
        cache.timings.end_step()
        positions += 1
    generated = torch.stack(steps, dim=1).cpu()  # [B, steps]
    results = []
    for row, limit in zip(generated.tolist(), limits, strict=True):
        row = row[:limit]
        cut = next((i for i, t in enumerate(row) if t in set(eos_token_ids)), len(row))
        results.append(row[:cut])
    return results
