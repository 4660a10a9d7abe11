"""``IceCache``: a transformers ``Cache`` whose decode steps attend only what a selector picks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError
from icecache.core.policy import CachePolicy, compose_policy
from icecache.integrations.hf.attention import mark_active
from icecache.integrations.hf.layer import IceCacheLayer
from icecache.integrations.hf.paged import PagedLayerKV
from icecache.integrations.hf.timing import DecodeTimings


class IceCache(Cache):
    """KV cache for llama-family models (GQA) following a :class:`CachePolicy`.

    Prefill runs dense; each layer's selector is built from the prompt's keys; every decode step of
    a sparse layer attends only the tokens its selector returns (sinks, window and selected pages).
    Dense layers (``config.dense_layers`` first ones, or every layer for the ``full`` selector) keep
    their KV on the device; sparse layers keep it in the host tier. Use with a model switched to
    the ``"icecache"`` attention (:func:`~icecache.integrations.hf.attention.use_icecache`).

    Sparse layers of page-based selectors (``paged=True``, the default) keep their pages in a
    :class:`~icecache.storage.store.TieredStore` built from ``policy.tiers`` (device tier = a bounded
    page pool; host, optionally disk, behind it) shared by all layers; each step loads the selected
    pages and runs the kernels' sparse paged attention. Token-level selectors (oracle, streamingllm)
    gather their tokens from the host tier. The device tier's capacity is ``config.tiers.device_pages``,
    or by default room for every sparse layer's selected pages at full pages.

    ``timings`` records per-step index query / page load / attention / rest.
    """

    def __init__(self, policy: CachePolicy, num_layers: int, *, host_device: str | torch.device = "cpu",
                 timing: bool = True, paged: bool = True):
        if num_layers < 1:
            raise ConfigError(f"num_layers must be positive, got {num_layers}")
        self.policy = policy
        self.host_device = torch.device(host_device)
        self.timings = DecodeTimings(enabled=timing)
        self.paged = paged
        self.store: Any = None
        self.kernels: Any = None
        self._working_set: dict[int, int] = {}
        super().__init__(layers=[IceCacheLayer(self, i) for i in range(num_layers)])

    # -- tiers and kernels ------------------------------------------------------------------------
    def device_pages(self, batch: int, kv_heads: int) -> int:
        """Device-tier capacity in pages: ``config.tiers.device_pages`` or, by default, the selected pages
        of every sparse layer at full pages (at least one layer's worst case of one token per page)."""
        config = self.policy.config
        if config.tiers.device_pages is not None:
            return config.tiers.device_pages
        sparse = max(1, len(self.layers) - config.dense_layers)
        rows = batch * kv_heads
        per_layer = -(-config.selected_budget // config.page_size)
        return max(sparse * rows * per_layer, rows * config.selected_budget, 1)

    def make_paged(self, layer_idx: int, shape: tuple[int, ...]) -> PagedLayerKV:
        """The paged state of a sparse layer whose keys are ``shape = [B, H_kv, N, D]``; builds the shared
        store and kernels on first use."""
        from attrs import evolve

        from icecache.storage.store import TieredStore

        B, H, _, D = shape
        config = self.policy.config
        if self.store is None:
            tiers = evolve(config.tiers, device_pages=self.device_pages(B, H))
            self.store = TieredStore.build(evolve(config, tiers=tiers), tiers=self.policy.tiers, head_dim=D,
                                           plugin_manager=self.policy.plugin_manager)
            self.kernels = self.policy.make_kernels()
        # NOTE: the window holds at most window_tokens + flush - 1 tokens and a flush is at most a page.
        keep = config.window_tokens + config.page_size
        return PagedLayerKV(self.store, self.kernels, layer_idx, sink_tokens=config.sink_tokens,
                            keep_recent=keep, device=config.device)

    def close(self) -> None:
        """Release the tiers (the disk tier's files) and every layer's KV, selector and pages, so the
        memory returns at once (layers and cache refer to each other; without this only a garbage
        collection frees them). The cache cannot decode afterwards."""
        if self.store is not None:
            self.store.close()
            self.store = None
        self.kernels = None
        for layer in self.layers:
            layer.reset()

    @classmethod
    def for_model(cls, model: Any, selector: str = "icecache", budget: int = 256, *,
                  options: dict[str, dict[str, Any]] | None = None, timing: bool = True,
                  **config: Any) -> IceCache:
        """A cache for ``model`` (its geometry read from ``model.config``), composing ``selector`` at
        ``budget`` tokens per KV head; ``config`` overrides other :class:`CacheConfig` fields."""
        config.setdefault("device", model.device)
        cfg = CacheConfig.from_model_config(model.config, budget=budget, **config)
        policy = compose_policy(selector=selector, config=cfg, options=options)
        return cls(policy, model.config.num_hidden_layers, timing=timing)

    @classmethod
    def from_snapshot(cls, snapshot: Any, policy: CachePolicy, *, timing: bool = True) -> IceCache:
        """A cache holding a :class:`~icecache.integrations.hf.snapshot.PrefillSnapshot`'s prompt, its
        selectors built, ready to decode (the model's prefill is not re-run)."""
        cache = cls(policy, len(snapshot.keys), timing=timing)
        for layer, k, v in zip(cache.layers, snapshot.keys, snapshot.values, strict=True):
            layer.load_prefill(k, v, snapshot.start)
        return cache

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[Tensor, Tensor]:
        layer = self.layers[layer_idx]
        if layer_idx == 0 and layer.prefilled and key_states.shape[2] == 1:
            self.timings.begin_step()
        keys, values = layer.update(key_states, value_states)
        mark_active(layer, keys)
        return keys, values

    # -- reporting --------------------------------------------------------------------------------
    def note_device_tokens(self, layer_idx: int, tokens: int) -> None:
        """Record the tokens per KV head a sparse layer held on the device in one step (peak kept)."""
        self._working_set[layer_idx] = max(self._working_set.get(layer_idx, 0), tokens)

    def memory_report(self) -> dict[str, Any]:
        """KV bytes on the device tier against a full cache of the same length: dense layers' KV, the
        page pool's whole capacity, sinks and recent windows of paged layers, and the peak per-step
        working set of token-level layers."""
        full = device = 0
        for layer in self.layers:
            if layer.kv is None:
                continue
            keys = layer.kv.keys
            B, H, _, D = keys.shape
            per_token = 2 * B * H * D * keys.element_size()
            full += per_token * layer.kv.length
            if layer.dense:
                device += per_token * layer.kv.length
            elif layer.paged is not None:
                device += layer.paged.nbytes()
            else:
                device += per_token * self._working_set.get(layer.layer_idx, 0)
        pool = 0
        if self.store is not None:
            pool = self.store.device_pool.kv.numel() * self.store.device_pool.kv.element_size()
            device += pool
        return {"full_kv_bytes": full, "device_kv_bytes": device, "device_pool_bytes": pool,
                "device_fraction": device / full if full else 0.0}
