"""Reading a model's attention features, and refusing what IceCache cannot reproduce (config level)."""

import pytest
import torch
from tiny_models import ARCHITECTURES, WINDOW, tiny_model
from transformers import CONFIG_MAPPING, AutoConfig

from icecache.core.errors import ConfigError
from icecache.integrations.hf import IceCache, use_icecache
from icecache.integrations.hf.features import (
    TESTED_MODEL_TYPES,
    attention_features,
    check_call,
    check_config,
    windows_from_config,
)

REFUSED = [("llama4_text", {}, "chunked"),
           ("qwen3_next", {}, "'linear_attention'"),
           ("jamba", {}, "'linear_attention'"),
           ("deepseek_v3", {}, "latent attention"),
           ("bloom", {}, "ALiBi"),
           ("t5", {}, "encoder-decoder")]


@pytest.mark.parametrize(("model_type", "overrides", "feature"), REFUSED)
def test_real_configs_with_other_attention_are_refused(model_type, overrides, feature):
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"{model_type} not in this transformers")
    with pytest.raises(ConfigError, match=feature):
        check_config(AutoConfig.for_model(model_type, **overrides), name="m")


def test_use_icecache_and_for_model_refuse_before_any_work():
    model = tiny_model("llama")
    model.config.layer_types = ["chunked_attention", "full_attention"] * 2
    with pytest.raises(ConfigError, match="layers of type 'chunked_attention'"):
        use_icecache(model)
    with pytest.raises(ConfigError, match="layers of type 'chunked_attention'"):
        IceCache.for_model(model, "full")
    assert model.config._attn_implementation != "icecache"  # left as it was


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_model_and_config_readings_agree(name):
    """The windows read from the modules (what the model attends with) match those read from the
    config alone (what the CLI sees), and the features name what each architecture exercises."""
    model = tiny_model(name)
    features = attention_features(model)
    assert features.windows == windows_from_config(model.config)
    assert set(features.windows) <= {None, WINDOW}
    assert (features.softcap is not None) == (name == "gemma2")
    assert features.sinks == (name == "gpt-oss")
    assert model.config.model_type in TESTED_MODEL_TYPES


def test_gemma3_default_config_is_five_sliding_to_one_global():
    config = AutoConfig.for_model("gemma3_text", num_hidden_layers=18)
    windows = windows_from_config(config)
    assert windows.count(None) == 3 and {w for w in windows if w} == {config.sliding_window}


def test_call_checks_name_the_disagreement():
    check_call(0, WINDOW, {"sliding_window": WINDOW, "softcap": 1.0, "s_aux": torch.zeros(2),
                           "output_attentions": False, "position_ids": None})
    with pytest.raises(ConfigError, match="sliding_window=None, the IceCache layer was built for 16"):
        check_call(3, WINDOW, {})
    with pytest.raises(ConfigError, match=r"\['attention_bias_fn'\]"):
        check_call(0, None, {"attention_bias_fn": object()})
