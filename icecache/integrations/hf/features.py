"""Which attention a transformers decoder LM runs, layer by layer, and whether IceCache reproduces it.

Supported: causal GQA attention over full-context layers (the policy selects what they attend) and
sliding-window layers (a bounded window cache, attended whole, no selection), with or without
attention logit softcapping (Gemma 2: ``cap * tanh(s / cap)``) and attention sinks (GPT-OSS ``s_aux``:
one learned logit per query head in the softmax denominator). Anything else that changes attention
(chunked, linear or state-space layers, latent attention, ALiBi, bidirectional or encoder-decoder
attention) is refused by :func:`check_config` with an error naming the feature, before any work.

The same checks run at three places: ``use_icecache`` / ``IceCache.for_model`` (the model), the CLI's
checkpoint guard (its ``config.json``), and each attention call (the arguments the model actually
passes, :func:`check_call`), so a reading of the config that misses something fails loudly instead
of running wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from icecache.core.errors import ConfigError

FULL, SLIDING = "full_attention", "sliding_attention"
#: model types whose attention the architecture matrix reproduces exactly (tiny random configs)
TESTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "olmo3", "gemma2",
                                "gemma3_text", "gpt_oss", "smollm3", "granite"})
ALIBI_TYPES = frozenset({"bloom", "mpt"})

# NOTE: attention-call arguments that do not change what attention computes (or that IceCache handles).
KNOWN_CALL_ARGUMENTS = frozenset({
    "sliding_window", "softcap", "s_aux", "position_ids", "cache_position", "output_attentions",
    "use_cache", "is_causal", "position_embeddings", "past_key_values", "cache", "layer_idx",
    "head_mask", "token_type_ids",
})
HARMLESS_PREFIXES = ("output_", "return_", "use_")  # flags of what a forward returns


@frozen(kw_only=True)
class AttentionFeatures:
    """What each layer's attention needs: ``windows[i]`` is layer ``i``'s sliding window in tokens (the
    query and the ``window - 1`` positions before it) or ``None`` for full context; ``softcap`` the
    attention logit cap or ``None``; ``sinks`` whether attention modules carry a sink logit per head."""

    windows: tuple[int | None, ...]
    softcap: float | None = None
    sinks: bool = False

    @property
    def num_sliding(self) -> int:
        return sum(w is not None for w in self.windows)

    def describe(self) -> str:
        parts = [f"{len(self.windows) - self.num_sliding} full-context layers"]
        if self.num_sliding:
            sizes = sorted({w for w in self.windows if w is not None})
            parts.append(f"{self.num_sliding} sliding-window layers (window {', '.join(map(str, sizes))})")
        if self.softcap is not None:
            parts.append(f"softcap {self.softcap:g}")
        if self.sinks:
            parts.append("attention sinks")
        return ", ".join(parts)


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _text_config(config: Any) -> Any:
    """The decoder's config of a composite (multimodal) config, else ``config`` itself."""
    if isinstance(config, Mapping):
        return config.get("text_config") or config
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def check_config(config: Any, *, name: str = "model") -> None:
    """Refuse a config (a ``PretrainedConfig`` or a ``config.json`` dict) whose attention IceCache cannot
    reproduce: :class:`ConfigError` naming ``name`` and the feature."""
    outer = config
    config = _text_config(config)

    def refuse(feature: str) -> None:
        raise ConfigError(f"{name} (model_type {_get(config, 'model_type')!r}) uses {feature}, which "
                          "IceCache cannot reproduce; supported: causal attention over full-context and "
                          "sliding-window layers, with softcapping and attention sinks")

    if _get(outer, "is_encoder_decoder", False):
        refuse("encoder-decoder attention")
    if _get(config, "is_causal", True) is False or _get(config, "use_bidirectional_attention", False):
        refuse("bidirectional attention")
    types = _get(config, "layer_types")
    if types is not None:
        other = sorted({str(t) for t in types} - {FULL, SLIDING})
        if other:
            refuse(f"layers of type {', '.join(map(repr, other))}")
    if _get(config, "attention_chunk_size") is not None:
        refuse(f"chunked attention (attention_chunk_size={_get(config, 'attention_chunk_size')})")
    if _get(config, "kv_lora_rank") is not None or _get(config, "q_lora_rank") is not None:
        refuse("multi-head latent attention (kv_lora_rank)")
    head_dim = _get(config, "head_dim")
    v_dim = _get(config, "v_head_dim")
    if v_dim is not None and head_dim is not None and v_dim != head_dim:
        refuse(f"values of another head dim than keys (v_head_dim={v_dim}, head_dim={head_dim})")
    attn_config = _get(config, "attn_config")
    if (_get(config, "alibi", False) or _get(config, "use_alibi", False)
            or _get(config, "position_embedding_type") == "alibi" or _get(config, "model_type") in ALIBI_TYPES
            or (attn_config is not None and _get(attn_config, "alibi", False))):
        refuse("ALiBi position biases")


def check_tested(config: Any, *, name: str = "model") -> None:
    """The CLI's guard for a checkpoint: :func:`check_config`, and a model type the architecture matrix
    (``tests/integration/test_architectures.py``) covers."""
    check_config(config, name=name)
    model_type = _get(_text_config(config), "model_type")
    if model_type not in TESTED_MODEL_TYPES:
        raise ConfigError(f"{name} has model_type {model_type!r}, which IceCache is not tested on; tested "
                          f"decoder LMs: {', '.join(sorted(TESTED_MODEL_TYPES))}")


def layer_windows(model: Any) -> tuple[int | None, ...]:
    """The sliding window of each decoder layer of ``model`` (``None``: full context), as its attention
    modules pass it: the module's own ``sliding_window`` where it has one (Qwen2/3, Gemma, GPT-OSS,
    OLMo3, SmolLM3), else the config's (Mistral, Phi3 pass ``config.sliding_window`` for every layer)."""
    config = _text_config(model.config)
    n = config.num_hidden_layers
    by_layer: dict[int, Any] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and 0 <= idx < n and hasattr(module, "o_proj") and idx not in by_layer:
            by_layer[idx] = module
    default = getattr(config, "sliding_window", None)
    windows = []
    for i in range(n):
        module = by_layer.get(i)
        w = getattr(module, "sliding_window", default) if module is not None else default
        windows.append(_window(w, i))
    return tuple(windows)


def windows_from_config(config: Any) -> tuple[int | None, ...]:
    """Layer windows read from a config alone (``layer_types`` and ``sliding_window``): used where no
    model is at hand; :func:`layer_windows` reads the model's modules and is preferred."""
    config = _text_config(config)
    n = _get(config, "num_hidden_layers")
    w = _get(config, "sliding_window")
    if w is None or _get(config, "use_sliding_window", True) is False:
        return (None,) * n
    types = _get(config, "layer_types")
    if types is None:
        return (_window(w, 0),) * n
    return tuple(_window(w, i) if t == SLIDING else None for i, t in enumerate(types))


def _window(w: Any, layer_idx: int) -> int | None:
    if w is None:
        return None
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise ConfigError(f"layer {layer_idx} has sliding_window={w!r}; expected a positive int or None")
    return w


def attention_features(model: Any, *, name: str | None = None) -> AttentionFeatures:
    """Check ``model`` (:func:`check_config`) and read what its layers need."""
    config = model.config
    label = name or f"model {getattr(config, 'name_or_path', '') or type(model).__name__!r}"
    check_config(config, name=label)
    text = _text_config(config)
    sinks = any(getattr(m, "sinks", None) is not None and hasattr(m, "o_proj") for m in model.modules())
    return AttentionFeatures(windows=layer_windows(model),
                             softcap=getattr(text, "attn_logit_softcapping", None), sinks=sinks)


def check_call(layer_idx: int, window: int | None, kwargs: Mapping[str, Any]) -> None:
    """The arguments a model passed to the attention function agree with what the cache layer does:
    its window is the one the model asks for, and no unknown argument changes attention."""
    asked = kwargs.get("sliding_window")
    if asked is not None and not isinstance(asked, int):
        asked = int(asked)
    if asked != window:
        raise ConfigError(f"layer {layer_idx}: the model attends with sliding_window={asked}, the IceCache "
                          f"layer was built for {window}; build the cache with IceCache.for_model(model)")
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in KNOWN_CALL_ARGUMENTS
                     and not k.startswith(HARMLESS_PREFIXES))
    if unknown:
        raise ConfigError(f"layer {layer_idx}: the model passes attention argument(s) {unknown} that "
                          "IceCache does not implement; refusing rather than attending differently")
