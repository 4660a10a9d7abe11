"""Merging the page scores of a GQA group's query heads into one ranking per KV head.

Every query head of a group is scored; the selection is shared by the group, so the per-head scores
must become one ranking. The fidelity we report (attention recall) is the attention mass covered,
averaged over the group's heads, so the merge that targets it directly is ``mass``:

* ``mass`` (default for q.k-like scores): each head's page logit ``scale * score + log(len)``
  estimates the log of the page's unnormalized attention mass; it is normalized per head by a
  log-sum-exp over all pages *and the always-attended sink/window tokens* (their exact logits), and
  the per-head masses are summed. A page then ranks by the attention share it brings to the group.
  Normalizing per head matters: heads whose mass sits on the sinks should not outvote heads that
  need the page.
* ``max``: the best head's raw score (a page any head wants); ``mean``: the average raw score.

Measured on SmolLM2 decode queries (docs/benchmarks.md, `icecache bench selectors`), ``mass``
gives the best attention recall for centroid scores; ``max`` is the natural merge for upper bounds
that are not logit estimates (and is what the ``merge`` option can switch to).
"""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.core.errors import ConfigError

MERGES = ("mass", "max", "mean")


def check_merge(name: str) -> str:
    if name not in MERGES:
        raise ConfigError(f"merge must be one of {MERGES}, got {name!r}")
    return name


def merge_heads(
    scores: Tensor,
    how: str,
    *,
    scale: float = 1.0,
    log_weight: Tensor | None = None,
    resident_logits: Tensor | None = None,
) -> Tensor:
    """``scores`` float ``[B, H_kv, G, P]`` -> merged ``[B, H_kv, P]``.

    ``log_weight``: float ``[B, H_kv, P]`` added to each head's logit under ``mass`` (log page length);
    ``resident_logits``: float ``[B, H_kv, G, R]``, exact logits of the always-attended tokens (they
    join each head's normalizer under ``mass``). ``-inf`` scores stay ``-inf``.
    """
    if how == "max":
        return scores.amax(dim=2)
    if how == "mean":
        return scores.mean(dim=2)
    if how != "mass":
        raise ConfigError(f"merge must be one of {MERGES}, got {how!r}")
    logits = scores * scale
    if log_weight is not None:
        logits = logits + log_weight[:, :, None, :]
    parts = logits if resident_logits is None else torch.cat([logits, resident_logits], dim=-1)
    log_z = torch.logsumexp(parts, dim=-1, keepdim=True)  # [B, H_kv, G, 1]
    log_z = torch.where(torch.isfinite(log_z), log_z, torch.zeros_like(log_z))
    return torch.logsumexp(logits - log_z, dim=2)  # [B, H_kv, P]
