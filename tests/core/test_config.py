import pytest
import torch
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st

from icecache.core.config import CacheConfig, ModelGeometry, TierConfig
from icecache.core.errors import ConfigError


@pytest.mark.parametrize("page_size", [0, 3, 12, 24, -16])
def test_page_size_not_power_of_two_is_rejected_naming_value(page_size):
    with pytest.raises(ConfigError, match=rf"page_size must be a power of two, got {page_size}"):
        CacheConfig(page_size=page_size)


def test_budget_below_sink_plus_window_is_rejected_naming_values():
    with pytest.raises(ConfigError, match=r"budget=50 .* 4 \+ 60 = 64"):
        CacheConfig(budget=50, window_tokens=60)


@given(budget=st.integers(1, 1 << 16), sink=st.integers(0, 8))
def test_default_window_always_fits_the_budget(budget, sink):
    if budget < sink:
        with pytest.raises(ConfigError):
            CacheConfig(budget=budget, sink_tokens=sink)
        return
    config = CacheConfig(budget=budget, sink_tokens=sink)
    assert config.selected_budget >= 0
    assert config.window_tokens <= 60


def test_with_budget_rederives_window_but_evolve_keeps_it():
    config = CacheConfig(budget=256)
    assert config.window_tokens == 60
    assert config.with_budget(64).window_tokens == 12
    assert evolve(config, budget=1024).window_tokens == 60
    with pytest.raises(ConfigError):
        evolve(config, budget=32)


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bfloat16", torch.bfloat16),
                                        ("float32", torch.float32)])
def test_dtype_names_convert(name, dtype):
    assert CacheConfig(dtype=name).dtype is dtype


def test_bad_dtype_and_device_name_the_value():
    with pytest.raises(ConfigError, match="int8"):
        CacheConfig(dtype="int8")
    with pytest.raises(ConfigError, match="potato"):
        CacheConfig(device="potato")


def test_tier_capacities_must_be_positive():
    with pytest.raises(ConfigError, match="device_pages must be a positive integer, got 0"):
        TierConfig(device_pages=0)


class _HFConfig:
    num_hidden_layers = 30
    num_attention_heads = 9
    num_key_value_heads = 3
    hidden_size = 576
    max_position_embeddings = 8192


def test_from_model_config_reads_geometry():
    config = CacheConfig.from_model_config(_HFConfig(), budget=128)
    g = config.geometry
    assert (g.num_layers, g.num_q_heads, g.num_kv_heads, g.head_dim, g.group_size) == (30, 9, 3, 64, 3)
    assert config.budget == 128


def test_gqa_ratio_must_divide():
    with pytest.raises(ConfigError, match="num_q_heads=10 is not a multiple of num_kv_heads=3"):
        ModelGeometry(num_layers=1, num_q_heads=10, num_kv_heads=3, head_dim=8)


def test_dense_layers_beyond_model_rejected():
    g = ModelGeometry(num_layers=4, num_q_heads=4, num_kv_heads=2, head_dim=8)
    with pytest.raises(ConfigError, match="dense_layers=5 exceeds the model's 4 layers"):
        CacheConfig(geometry=g, dense_layers=5)
