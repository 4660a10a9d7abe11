"""One layer of the IceCache: dense (keeps every key on the device) or sparse (a selector picks what
each decode step attends; KV beyond the device working set lives in the host tier).

Positions are those of the K/V tensors, left padding included: row ``b`` holds real tokens from
``start[b]`` on, and positions before it are never attended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers.cache_utils import CacheLayerMixin

from icecache.core.errors import ConfigError
from icecache.integrations.hf.dense import attend_with_lse
from icecache.integrations.hf.paged import PagedLayerKV
from icecache.integrations.hf.store import GrowableKV
from icecache.selectors.bases.token_score import TokenScoreSelector

if TYPE_CHECKING:
    from icecache.integrations.hf.cache import IceCache


class IceCacheLayer(CacheLayerMixin):
    """Cache layer ``layer_idx`` of an :class:`~icecache.integrations.hf.cache.IceCache`."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: IceCache, layer_idx: int):
        super().__init__()
        self.owner = owner
        self.layer_idx = layer_idx
        config = owner.policy.config
        self.dense = owner.policy.selector == "full" or layer_idx < config.dense_layers
        self.selector: Any = None
        self.kv: GrowableKV | None = None  # dense layers: device; sparse layers: host tier
        self.start: Tensor | None = None  # int64 [B]
        self.prefilled = False
        self.last_selection: Any = None
        self.paged: PagedLayerKV | None = None  # page-based selectors: pages in the tiered store
        self._paged_end: int | None = None

    # -- CacheLayerMixin --------------------------------------------------------------------------
    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
               ) -> tuple[Tensor, Tensor]:
        """Store new K/V ``[B, H_kv, n, D]``. A multi-token call (prefill) returns every key and value
        for dense attention; a decode step returns only the new ones (the registered attention
        function reads the selected ones from this layer)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.kv is None:
            self.kv = GrowableKV.from_tensors(key_states, value_states, device=self._store_device())
            self.keys, self.values = self.kv.view()
            return key_states, value_states
        self.kv.append(key_states, value_states)
        if self.prefilled and self.selector is not None:
            self.selector.append(key_states)
            if self.paged is not None:
                self.paged.append(key_states, value_states)
                if self._layout_may_have_changed():
                    self.paged.sync(self.selector.layout.token_ids, self.kv)
        if key_states.shape[2] > 1:
            keys, values = self.kv.view()
            return keys.to(key_states.device), values.to(key_states.device)
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return 0 if self.kv is None else self.kv.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.kv = self.selector = self.start = self.last_selection = self.paged = None
        self._paged_end = None
        self.prefilled = False
        self.is_initialized = False

    def reorder_cache(self, beam_idx: Tensor) -> None:
        raise NotImplementedError("IceCache does not support beam search (reorder_cache)")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("IceCache cannot crop: the index never forgets inserted tokens")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("IceCache does not support batch expansion (num_return_sequences > 1)")

    def batch_select_indices(self, indices: Tensor) -> None:
        raise NotImplementedError("IceCache does not support batch selection")

    # -- prefill ----------------------------------------------------------------------------------
    def _store_device(self) -> torch.device:
        config = self.owner.policy.config
        return config.device if self.dense else self.owner.host_device

    def finish_prefill(self, start: Tensor) -> None:
        """Build the selector from the prompt's keys (called once, after the dense prefill attention).
        ``start``: int64 ``[B]``, first real position of each row."""
        if self.prefilled:
            return
        self.start = start.to(torch.int64).cpu()
        policy = self.owner.policy
        keys, _ = self.kv.view()
        if not self.dense:
            self.selector = policy.make_selector(self.layer_idx)
            self.selector.prefill(keys.to(policy.config.device), start=self.start.to(policy.config.device))
            if self.owner.paged and not isinstance(self.selector, TokenScoreSelector):
                self.paged = self.owner.make_paged(self.layer_idx, keys.shape)
                self.paged.sync(self.selector.layout.token_ids, self.kv)
                self.paged.init_resident(self.kv, self.start)
                self._layout_may_have_changed()
        self.prefilled = True
        policy.hook.icecache_prefill_done(layer_idx=self.layer_idx, num_tokens=int(keys.shape[2]),
                                          policy=policy)

    def _layout_may_have_changed(self) -> bool:
        """Whether tokens moved from the window into pages since the last call (always True for a
        selector that does not expose its positions)."""
        positions = getattr(self.selector, "positions", None)
        end = getattr(positions, "paged_end", None)
        if end is None:
            return True
        changed = end != self._paged_end
        self._paged_end = end
        return changed

    def load_prefill(self, keys: Tensor, values: Tensor, start: Tensor) -> None:
        """Fill the layer from a prefill snapshot (``[B, H_kv, N, D]`` each) without running the model."""
        if self.kv is not None:
            raise ConfigError(f"layer {self.layer_idx} already holds {self.kv.length} tokens")
        self.lazy_initialization(keys, values)
        self.device = self.owner.policy.config.device
        self.kv = GrowableKV.from_tensors(keys, values, device=self._store_device())
        self.keys, self.values = self.kv.view()
        self.finish_prefill(start)

    # -- decode -----------------------------------------------------------------------------------
    def decode_attention(self, query: Tensor, scale: float) -> Tensor:
        """Attention of one decode position. ``query`` ``[B, H_q, 1, D]`` -> ``[B, 1, H_q, D]``."""
        B, H_q, _, D = query.shape
        H_kv = self.kv.keys.shape[1]
        q = query[:, :, 0, :].reshape(B, H_kv, H_q // H_kv, D)  # [B, H_kv, G, D]
        timings = self.owner.timings
        if self.dense:
            keys, values = self.kv.view()
            N = keys.shape[2]
            pos = torch.arange(N, device=keys.device)
            mask = (pos[None, :] >= self.start.to(keys.device)[:, None])[:, None, :].expand(B, H_kv, N)
            with timings.part("attention"):
                out, _ = attend_with_lse(q, keys, values, mask, scale)
        else:
            with timings.part("index_query"):
                selection = self.selector.select(query[:, :, 0, :])
            # NOTE: the selector itself calls the icecache_selection_made observer hook.
            self.last_selection = selection
            if self.paged is not None and selection.page_ids.shape[-1] > 0:
                out = self.paged.attend(query[:, :, 0, :], selection, self.kv.length, scale, timings)
                return out[:, None]  # [B, 1, H_q, D]
            # token-level selectors (oracle, streamingllm): gather the chosen tokens from the host tier
            with timings.part("page_load"):
                keys, values = self.kv.gather(selection.token_ids, device=query.device)
            self.owner.note_device_tokens(self.layer_idx, int(selection.token_ids.shape[-1]))
            with timings.part("attention"):
                out, _ = attend_with_lse(q, keys, values, selection.token_ids.to(q.device) >= 0, scale)
        return out.reshape(B, H_q, D)[:, None]  # [B, 1, H_q, D]
