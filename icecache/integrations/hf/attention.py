"""The ``"icecache"`` attention implementation for transformers models.

transformers does not pass the cache to the attention function, so :class:`IceCache` records, in
a context variable, which layer it just updated and the key tensor it returned; the attention
function acts only when it receives that very tensor (anything else, e.g. a ``DynamicCache``,
falls back to SDPA, or to :func:`~icecache.integrations.hf.dense.eager_attention` when the model passes
a softcap or sinks, which SDPA lacks). Prefill (several query positions) runs dense attention and then
builds the layer's selector; a decode step attends what the selector picks (a sliding-window layer: its
whole window). Each call's arguments are checked against the layer
(:func:`~icecache.integrations.hf.features.check_call`).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from icecache.integrations.hf.dense import eager_attention
from icecache.integrations.hf.features import attention_features, check_call

ATTN_NAME = "icecache"


@frozen
class _Active:
    layer: Any  # IceCacheLayer
    key: Tensor  # the key tensor its update returned


_ACTIVE: ContextVar[_Active | None] = ContextVar("icecache_active_layer", default=None)


def mark_active(layer: Any, key: Tensor) -> None:
    """Called by :meth:`IceCache.update` right before the model calls the attention function."""
    _ACTIVE.set(_Active(layer, key))


def start_from_mask(attention_mask: Tensor | None, batch: int, num_keys: int, device: torch.device) -> Tensor:
    """First attended key position of each row (left padding), int64 ``[B]``, from a 4-D mask
    ``[B, 1, q, kv]`` (bool, True = attend; or additive float, 0 = attend). ``None``: zeros."""
    if attention_mask is None or attention_mask.dim() != 4:
        return torch.zeros(batch, dtype=torch.int64, device=device)
    last = attention_mask[:, 0, -1, :num_keys]  # [B, kv] the last query sees every real key
    allowed = last if last.dtype == torch.bool else last == 0
    allowed = allowed.expand(batch, -1)
    # NOTE: argmax returns the first maximal index, i.e. the first attended position.
    return allowed.to(torch.int8).argmax(dim=-1).to(torch.int64)


def icecache_attention_forward(module: Any, query: Tensor, key: Tensor, value: Tensor,
                               attention_mask: Tensor | None, scaling: float | None = None,
                               dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, None]:
    """``query`` ``[B, H_q, q, D]``, ``key``/``value`` ``[B, H_kv, kv, D]`` -> ``([B, q, H_q, D], None)``.
    ``softcap`` (Gemma 2) and ``s_aux`` (GPT-OSS sinks, ``[H_q]``) come in ``kwargs``."""
    active = _ACTIVE.get()
    if active is None or active.key is not key:
        return dense_attention(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    _ACTIVE.set(None)  # NOTE: drop the reference so a finished cache can be freed
    layer = active.layer
    check_call(layer.layer_idx, layer.window, kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if query.shape[2] == 1 and layer.prefilled:
        return layer.decode_attention(query, scale, key=key, value=value, softcap=kwargs.get("softcap"),
                                      sinks=kwargs.get("s_aux")), None
    out, weights = dense_attention(module, query, key, value, attention_mask, scale, dropout, kwargs)
    if not layer.prefilled:
        layer.finish_prefill(start_from_mask(attention_mask, query.shape[0], key.shape[2], query.device),
                             query)
    return out, weights


def dense_attention(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                    scaling: float | None, dropout: float, kwargs: dict[str, Any]) -> tuple[Tensor, Any]:
    """Dense attention as the model defines it: transformers' SDPA, or the eager torch attention when
    the model passes a softcap or sinks (SDPA refuses the one and drops the other)."""
    softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
    if softcap is None and sinks is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if dropout and module.training:
        raise NotImplementedError("icecache attention with softcap or sinks does not train (dropout > 0)")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return eager_attention(query, key, value, attention_mask, scale, softcap=softcap, sinks=sinks), None


def register_attention() -> str:
    """Register the ``"icecache"`` attention (and its SDPA-style mask) with transformers; idempotent.
    Returns the implementation name for ``model.set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, icecache_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


def use_icecache(model: Any) -> Any:
    """Switch ``model`` to the icecache attention implementation (dense attention whenever no IceCache is
    in use). A model whose attention IceCache cannot reproduce is refused first
    (:func:`~icecache.integrations.hf.features.attention_features`), naming the feature."""
    attention_features(model)
    model.set_attn_implementation(register_attention())
    return model
