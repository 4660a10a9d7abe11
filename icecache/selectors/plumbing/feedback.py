"""Feedback: the attention weights of the step a selector chose, handed back to it when it asks.

A selector that sets ``wants_feedback = True`` gets ``observe(feedback)`` after every decode step's
attention, with an :class:`AttentionFeedback` of exactly what it selected (H2O- or TOVA-style scores
accumulate these). Runners that call it: the HF integration (``generate()``, ``run``, ``eval``), the
selector bench and the conformance suite. A selector that does not ask costs nothing: no weights are
computed (the check is one attribute read per layer and step).

NOTE: the weights are recomputed from the selected keys (a gather of the selected tokens, one
``[B, H_q, T]`` softmax), not read out of the attention kernel: exact, backend-independent, and paid
only by selectors that ask.
"""

from __future__ import annotations

from typing import Any

import torch
from attrs import frozen
from torch import Tensor


@frozen(kw_only=True)
class AttentionFeedback:
    """One decode step's attention over what was selected.

    * ``token_ids``: int64 ``[B, H_kv, T]``, the attended positions (the selection's), ``-1`` padded;
    * ``weights``: float32 ``[B, H_kv, G, T]``, each query head's softmax weight on them (0 at padding;
      each head's weights sum to 1).
    """

    token_ids: Tensor
    weights: Tensor

    def token_mass(self) -> Tensor:
        """float32 ``[B, H_kv, T]``: weights summed over the GQA group's query heads."""
        return self.weights.sum(2)

    def mass_by_position(self, num_tokens: int) -> Tensor:
        """float32 ``[B, H_kv, num_tokens]``: :meth:`token_mass` scattered to positions (0 elsewhere)."""
        B, H, _ = self.token_ids.shape
        out = torch.zeros(B, H, num_tokens + 1, device=self.weights.device)
        idx = torch.where(self.token_ids >= 0, self.token_ids, num_tokens)
        return out.scatter_add_(2, idx, self.token_mass())[..., :num_tokens]

    def page_mass(self, pages: Tensor) -> Tensor:
        """float32 ``[B, H_kv, P]``: the mass of each page of a layout ``pages`` int64 ``[B, H_kv, P, S]``
        (positions, ``-1`` padded)."""
        B, H, P, S = pages.shape
        top = [int(t.max()) for t in (pages, self.token_ids) if t.numel()]
        n = max([-1, *top]) + 1
        by_pos = torch.nn.functional.pad(self.mass_by_position(n), (0, 1))  # [B, H_kv, n + 1]
        idx = torch.where(pages >= 0, pages, n).reshape(B, H, P * S)
        return by_pos.gather(2, idx).reshape(B, H, P, S).sum(-1)


def attention_feedback(query: Tensor, keys: Tensor, token_ids: Tensor, scale: float) -> AttentionFeedback:
    """``query`` float ``[B, H_q, D]``; ``keys`` float ``[B, H_kv, T, D]`` of ``token_ids`` int64
    ``[B, H_kv, T]`` (``-1`` padded) -> the step's :class:`AttentionFeedback`."""
    B, H, T, D = keys.shape
    q = query.reshape(B, H, -1, D).float()  # [B, H_kv, G, D]
    logits = torch.einsum("bhgd,bhtd->bhgt", q, keys.float()) * scale
    logits = logits.masked_fill((token_ids < 0)[:, :, None], float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return AttentionFeedback(token_ids=token_ids, weights=weights)


def wants_feedback(selector: Any) -> bool:
    """Whether ``selector`` asked for :class:`AttentionFeedback` (``wants_feedback = True`` and an
    ``observe`` method)."""
    return bool(getattr(selector, "wants_feedback", False)) and callable(getattr(selector, "observe", None))
