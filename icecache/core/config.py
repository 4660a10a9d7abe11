"""Frozen, validated configuration objects.

The budget is the number of tokens attended **per KV head per decode step, sinks and the
recent window included** (the IceCache paper's convention). ``budget=256`` with 4 sink tokens
and a 60-token window leaves 192 tokens for selected pages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from attrs import field, fields, frozen
from attrs.validators import instance_of, optional

from icecache.core.errors import ConfigError
from icecache.core.validators import non_negative, optional_positive, positive, power_of_two

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def to_dtype(value: Any) -> torch.dtype:
    """Accept a ``torch.dtype`` or one of its common names."""
    if isinstance(value, torch.dtype) and value in set(_DTYPES.values()):
        return value
    if isinstance(value, str) and value.lower() in _DTYPES:
        return _DTYPES[value.lower()]
    raise ConfigError(f"dtype must be one of {sorted(set(_DTYPES))}, got {value!r}")


def to_device(value: Any) -> torch.device:
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {value!r} is not a valid torch device: {exc}") from None


@frozen(kw_only=True)
class ModelGeometry:
    """The shapes of a model's KV cache."""

    num_layers: int = field(validator=positive)
    num_q_heads: int = field(validator=positive)
    num_kv_heads: int = field(validator=positive)
    head_dim: int = field(validator=positive)
    max_positions: int | None = field(default=None, validator=optional_positive)

    def __attrs_post_init__(self) -> None:
        if self.num_q_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_q_heads={self.num_q_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA ratio)."""
        return self.num_q_heads // self.num_kv_heads

    @classmethod
    def from_model_config(cls, model_config: Any) -> ModelGeometry:
        """Read geometry from a Hugging Face ``PretrainedConfig`` (llama family)."""
        c = model_config
        heads = c.num_attention_heads
        return cls(
            num_layers=c.num_hidden_layers,
            num_q_heads=heads,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            max_positions=getattr(c, "max_position_embeddings", None),
        )


def _disk_dir(value: Any) -> Path | None:
    # NOTE: Path("") is "." and would put page files in the working directory.
    if value is not None and not str(value).strip():
        raise ConfigError("disk_dir is empty; give a directory, or None for no disk tier")
    return None if value is None else Path(value)


@frozen(kw_only=True)
class TierConfig:
    """Capacities of the storage tiers, in pages. ``None`` means unbounded."""

    device_pages: int | None = field(default=None, validator=optional_positive)
    host_pages: int | None = field(default=None, validator=optional_positive)
    disk_dir: Path | None = field(default=None, converter=_disk_dir)
    disk_pages: int | None = field(default=None, validator=optional_positive)
    eviction: str = field(default="lru", validator=instance_of(str))


def _default_window(self: CacheConfig) -> int:
    # NOTE: 60 tokens matches the reference measurements at budget 256; small budgets get a
    # quarter of the budget (less the sinks) so something is always left to select.
    return max(0, min(60, self.budget // 4 - self.sink_tokens))


@frozen(kw_only=True)
class CacheConfig:
    """What a cache policy needs to know, validated at construction."""

    page_size: int = field(default=16, validator=power_of_two)
    budget: int = field(default=256, validator=positive)
    sink_tokens: int = field(default=4, validator=non_negative)
    window_tokens: int = field(validator=non_negative)
    dense_layers: int = field(default=2, validator=non_negative)
    dtype: torch.dtype = field(default=torch.float32, converter=to_dtype)
    # NOTE: ``dtype`` is the page dtype of a store built directly from this config; an ``IceCache`` stores
    # pages in ``page_dtype``, or in the model's KV dtype when it is None.
    page_dtype: torch.dtype | None = field(default=None,
                                           converter=lambda v: None if v is None else to_dtype(v))
    device: torch.device = field(default="cpu", converter=to_device)
    tiers: TierConfig = field(factory=TierConfig, validator=instance_of(TierConfig))
    geometry: ModelGeometry | None = field(default=None, validator=optional(instance_of(ModelGeometry)))
    seed: int = field(default=0, validator=non_negative)

    @window_tokens.default
    def _window_default(self) -> int:
        return _default_window(self)

    def __attrs_post_init__(self) -> None:
        if self.budget < self.sink_tokens + self.window_tokens:
            raise ConfigError(
                f"budget={self.budget} is smaller than sink_tokens + window_tokens = "
                f"{self.sink_tokens} + {self.window_tokens} = {self.sink_tokens + self.window_tokens}"
            )
        if self.geometry is not None and self.dense_layers > self.geometry.num_layers:
            raise ConfigError(
                f"dense_layers={self.dense_layers} exceeds the model's {self.geometry.num_layers} layers"
            )

    @property
    def selected_budget(self) -> int:
        """Tokens left for selected pages once sinks and the full window are counted."""
        return self.budget - self.sink_tokens - self.window_tokens

    @classmethod
    def from_model_config(cls, model_config: Any, **overrides: Any) -> CacheConfig:
        """Build a config whose geometry is read from a Hugging Face model config."""
        return cls(geometry=ModelGeometry.from_model_config(model_config), **overrides)

    def with_budget(self, budget: int) -> CacheConfig:
        """The same config at another budget, with the default window re-derived for it.

        NOTE: ``attrs.evolve`` would keep the old ``window_tokens``; use it when that is wanted.
        """
        kept = {a.name: getattr(self, a.name) for a in fields(CacheConfig)}
        kept.update(budget=budget)
        del kept["window_tokens"]
        return CacheConfig(**kept)
