"""Tiny random-initialised decoder LMs of the architectures transformers has (no download): one per
attention variant IceCache must reproduce. Small enough that the whole matrix runs in seconds on CPU;
windows are shorter than the prompts and softcaps small enough to bite, so a missed feature shows."""

from __future__ import annotations

from typing import Any

WINDOW = 16
# NOTE: 4 layers, 4 query heads over 2 KV heads of dim 16: GQA and every layer type fit.
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
              initializer_range=0.05, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]

# name -> (model_type, config overrides, what it exercises)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any], str]] = {
    "llama": ("llama", {}, "full context"),
    "mistral": ("mistral", {"sliding_window": None}, "full context"),
    "mistral-window": ("mistral", {"sliding_window": WINDOW}, "every layer windowed"),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2},
                     "windowed layers from max_window_layers on"),
    "qwen3": ("qwen3", {}, "q/k norms"),
    "phi3": ("phi3", {"sliding_window": None}, "fused qkv"),
    "olmo2": ("olmo2", {}, "q/k norms over heads"),
    "olmo3": ("olmo3", {"sliding_window": WINDOW, "layer_types": MIXED}, "hybrid windowed"),
    "gemma2": ("gemma2", {"sliding_window": WINDOW, "layer_types": MIXED, "attn_logit_softcapping": 1.0,
                          "query_pre_attn_scalar": 16}, "softcap + hybrid windowed"),
    "gemma3": ("gemma3_text", {"sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                               "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
               "5:1-style hybrid (3:1 here)"),
    "gpt-oss": ("gpt_oss", {"sliding_window": WINDOW, "layer_types": MIXED, "num_local_experts": 4,
                            "num_experts_per_tok": 2}, "attention sinks + hybrid windowed"),
    "smollm3": ("smollm3", {}, "no-RoPE layers"),
    "granite": ("granite", {"attention_multiplier": 0.3}, "attention multiplier"),
}


def available() -> dict[str, bool]:
    """Which of the matrix's model types the installed transformers knows."""
    from transformers import CONFIG_MAPPING

    return {name: model_type in CONFIG_MAPPING for name, (model_type, _, _) in ARCHITECTURES.items()}


def tiny_model(name: str, seed: int = 0) -> Any:
    """A float32 eval-mode causal LM of architecture ``name`` with random weights (and random sinks), on
    transformers' eager attention."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, overrides, _ = ARCHITECTURES[name]
    config = AutoConfig.for_model(model_type, **{**COMMON, **overrides})
    torch.manual_seed(seed)
    # NOTE: eager attention is transformers' definition of each model's attention, so the references
    # come from it (transformers 5.17 runs Gemma 2 under SDPA and drops its softcap there).
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for module in model.modules():
            sinks = getattr(module, "sinks", None)
            if isinstance(sinks, torch.nn.Parameter):
                sinks.normal_(0.0, 1.0)  # NOTE: zeros at init would hide a dropped sink
    model.generation_config.eos_token_id = None  # every run generates the same number of tokens
    model.generation_config.pad_token_id = 0
    return model
