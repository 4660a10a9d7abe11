"""Teacher-force tokens through an :class:`IceCache`'s decode path before generating (a task's
``decoded`` text: what the model wrote during decoding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from attrs import evolve

from icecache.integrations.hf.snapshot import PrefillSnapshot


@torch.inference_mode()
def force_tokens(model: Any, cache: Any, snapshot: PrefillSnapshot, tokens: Sequence[Sequence[int]]
                 ) -> PrefillSnapshot:
    """Feed ``tokens`` (one equal-length list per row) one per step through ``cache`` after the snapshot's
    prompts; returns the state :func:`~icecache.integrations.hf.generation.decode` continues from: the
    snapshot with ``lengths`` advanced and ``last_logits`` the last step's (its keys and values are the
    prompt's only: the cache holds the rest)."""
    lengths = {len(t) for t in tokens}
    if len(lengths) != 1 or len(tokens) != snapshot.batch_size:
        raise ValueError(f"one equal-length token list per row needed, got lengths {sorted(lengths)} for "
                         f"{snapshot.batch_size} rows")
    ids = torch.tensor([list(t) for t in tokens], dtype=torch.long, device=model.device)  # [B, T]
    positions = snapshot.lengths.to(model.device).clone()
    logits = snapshot.last_logits
    for t in range(ids.shape[1]):
        out = model(input_ids=ids[:, t:t + 1], position_ids=positions[:, None], past_key_values=cache,
                    use_cache=True)
        cache.timings.end_step()
        positions += 1
        logits = out.logits[:, -1].float()
    return evolve(snapshot, lengths=snapshot.lengths + ids.shape[1],
                  last_logits=logits.to(snapshot.last_logits.device))
