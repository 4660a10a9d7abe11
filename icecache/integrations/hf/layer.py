"""One layer of the IceCache: dense (keeps every key on the device), sparse (a selector picks what
each decode step attends; the layer's KV lives once, in the tiered store's pages plus sinks and window on
the device: :class:`~icecache.integrations.hf.sparse_kv.SparseLayerKV`) or sliding-window (the model's
own window, kept whole and attended whole: :class:`~icecache.integrations.hf.window.WindowKV`; no
selection, memory O(window)).

Decode attention applies the model's softcap (Gemma 2) and attention sinks (GPT-OSS ``s_aux``) on every
path: dense, gathered tokens and paged (:mod:`icecache.integrations.hf.dense`).

Positions are those of the K/V tensors, left padding included: row ``b`` holds real tokens from
``start[b]`` on, and positions before it are never attended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers.cache_utils import CacheLayerMixin

from icecache.core.errors import ConfigError
from icecache.core.signatures import accepts_keyword
from icecache.integrations.hf.dense import apply_sinks, attend_with_lse, eager_attention
from icecache.integrations.hf.sparse_kv import SparseLayerKV
from icecache.integrations.hf.store import GrowableKV
from icecache.integrations.hf.window import WindowKV
from icecache.selectors.bases.token_score import TokenScoreSelector
from icecache.selectors.plumbing.eviction import evicts
from icecache.selectors.plumbing.feedback import attention_feedback, wants_feedback
from icecache.selectors.plumbing.prompt_queries import prefill_queries

if TYPE_CHECKING:
    from icecache.integrations.hf.cache import IceCache


class IceCacheLayer(CacheLayerMixin):
    """Cache layer ``layer_idx`` of an :class:`~icecache.integrations.hf.cache.IceCache`; ``window``: the
    model's sliding window for this layer (``None``: full context, the policy applies)."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: IceCache, layer_idx: int, window: int | None = None):
        super().__init__()
        self.owner = owner
        self.layer_idx = layer_idx
        config = owner.policy.config
        self.window = window
        self.is_sliding = window is not None  # NOTE: transformers sizes sliding masks from such layers
        self.sliding_window = window
        self.win: WindowKV | None = None  # sliding-window layers only
        self.dense = window is None and (owner.policy.selector == "full" or layer_idx < config.dense_layers)
        self.selector: Any = None
        self.kv: GrowableKV | None = None  # dense layers only: every key and value, on the device
        self.sparse: SparseLayerKV | None = None  # sparse layers: pages in the store + sinks/window
        self._prompt: tuple[Tensor, Tensor] | None = None  # sparse: the prompt's K/V until its pages exist
        self.n = 0  # positions so far
        self.start: Tensor | None = None  # int64 [B]
        self.prefilled = False
        self.last_selection: Any = None
        self._paged_end: int | None = None
        self._evicting = False  # the selector drops tokens for good: drain them into the store

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
        n = key_states.shape[2]
        if self.window is not None:
            if self.win is None:
                self.win = WindowKV(self.window)
            keys, values = self.win.update(key_states, value_states)
            self.n = self.win.n
            return keys, values
        if self.dense:
            if self.kv is None:
                device = self.owner.policy.config.device
                self.kv = GrowableKV.from_tensors(key_states, value_states, device=device)
            else:
                self.kv.append(key_states, value_states)
            self.keys, self.values = self.kv.view()
            self.n = self.kv.length
            if n > 1 and self.prefilled:
                return self.keys.to(key_states.device), self.values.to(key_states.device)
            return key_states, value_states
        if not self.prefilled:
            if self._prompt is not None:
                raise ConfigError(f"layer {self.layer_idx}: a second prompt chunk before the first was "
                                  "attended; IceCache prefills in one call")
            # NOTE: held only until finish_prefill writes them into pages (no second copy stays)
            self._prompt = (key_states, value_states)
            self.n = n
            return key_states, value_states
        self.sparse.append(key_states, value_states)
        self.n += n
        try:
            self.selector.append(key_states)
            if self._evicting:
                self._drain_evictions()
            if self._layout_may_have_changed():
                self.sparse.sync(self.selector.layout.token_ids)
        finally:
            self.sparse.end_chunk()
        if n > 1:  # a multi-token continuation attends densely: a transient copy of every position
            return self.sparse.gather_all()
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.window is not None:
            return (query_length, 0) if self.win is None else self.win.mask_sizes(query_length)
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.n

    def get_max_length(self) -> int:
        return -1 if self.window is None else self.window

    def reset(self) -> None:
        self.kv = self.selector = self.start = self.last_selection = self.sparse = self._prompt = None
        self.win = None
        self.keys = self.values = None
        self._paged_end = None
        self._evicting = False
        self.n = 0
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
    def finish_prefill(self, start: Tensor, queries: Tensor | None = None) -> None:
        """Build the selector from the prompt's keys and write the prompt's pages (called once, after the
        dense prefill attention). ``start``: int64 ``[B]``, first real position of each row; ``queries``:
        float ``[B, H_q, n, D]``, the queries of the prompt's last ``n`` positions (all of them live, a
        snapshot's window otherwise): the selector gets its observation window of them
        (:mod:`~icecache.selectors.plumbing.prompt_queries`)."""
        if self.prefilled:
            return
        self.start = start.to(torch.int64).cpu()
        policy = self.owner.policy
        num_tokens = self.n
        if not self.dense and self.window is None:
            keys, values = self._prompt
            device = policy.config.device
            self.selector = policy.make_selector(self.layer_idx)
            self.sparse = self.owner.make_sparse(self.layer_idx, keys.shape, keys.dtype,
                                                 page_size=self.selector.page_size)
            self.sparse.begin(keys, values, self.start)
            kwargs = {"reader": self.sparse} if accepts_keyword(self.selector.prefill, "reader") else {}
            window = prefill_queries(self.selector, queries, self.start, num_positions=num_tokens)
            kwargs.update({k: v.to(device) for k, v in window.items()})
            try:
                self.selector.prefill(keys.to(device), start=self.start.to(device), **kwargs)
                self._evicting = evicts(self.selector)
                if self._evicting:  # NOTE: before the prompt's pages are written: evicted ones never are
                    self._drain_evictions()
                self.owner.reserve_pages(self.layer_idx, self._live_layout())
                self.sparse.sync(self.selector.layout.token_ids)
                self._layout_may_have_changed()
            finally:
                self.sparse.end_chunk()
                self._prompt = None
        self.prefilled = True
        policy.hook.icecache_prefill_done(layer_idx=self.layer_idx, num_tokens=num_tokens, policy=policy)

    def _drain_evictions(self) -> None:
        """Hand the tokens the selector evicted since the last call to the layer's store (which frees
        their pages once every token of a page is gone): :mod:`~icecache.selectors.plumbing.eviction`."""
        evicted = self.selector.evictions()
        if evicted is not None:
            self.owner.note_evicted(self.layer_idx, int((evicted >= 0).sum()), self.sparse.evict(evicted))

    def _live_layout(self) -> Tensor:
        """The selector's layout, evicted positions as ``-1`` (what will be stored)."""
        layout = self.selector.layout.token_ids
        gone = self.sparse.gone
        if gone is None:
            return layout
        B, H, P, S = layout.shape
        flat = layout.cpu().clamp(min=0).reshape(B, H, P * S)
        dead = torch.zeros(B, H, P * S, dtype=torch.bool)
        if gone.shape[2]:
            dead = gone.gather(2, flat.clamp(max=gone.shape[2] - 1)) & (flat < gone.shape[2])
        return torch.where(dead.view(B, H, P, S), -1, layout.cpu())

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

    def load_prefill(self, keys: Tensor, values: Tensor, start: Tensor, queries: Tensor | None = None
                     ) -> None:
        """Fill the layer from a prefill snapshot (``[B, H_kv, N, D]`` each; ``queries``: the prompt's
        last queries ``[B, H_q, n, D]`` or None) without running the model."""
        if self.is_initialized:
            raise ConfigError(f"layer {self.layer_idx} already holds {self.n} tokens")
        self.update(keys, values)
        self.device = self.owner.policy.config.device
        self.finish_prefill(start, queries)

    # -- decode -----------------------------------------------------------------------------------
    def decode_attention(self, query: Tensor, scale: float, *, key: Tensor | None = None,
                         value: Tensor | None = None, softcap: float | None = None,
                         sinks: Tensor | None = None) -> Tensor:
        """Attention of one decode position. ``query`` ``[B, H_q, 1, D]`` -> ``[B, 1, H_q, D]``;
        ``key``/``value``: what :meth:`update` returned (a sliding-window layer attends them whole);
        ``softcap`` and ``sinks`` ``[H_q]``: the model's (``None``: none)."""
        B, H_q, _, D = query.shape
        timings = self.owner.timings
        if self.window is not None:
            pos = self.win.positions(key.shape[2]).to(key.device)  # [T] positions of the returned keys
            mask = pos[None, :] >= self.start.to(key.device)[:, None]  # [B, T] left padding never attended
            with timings.part("attention"):
                return eager_attention(query, key, value, mask[:, None, None, :], scale, softcap=softcap,
                                       sinks=sinks)
        if self.dense:
            keys, values = self.kv.view()
            H_kv = keys.shape[1]
            q = query[:, :, 0, :].reshape(B, H_kv, H_q // H_kv, D)  # [B, H_kv, G, D]
            N = keys.shape[2]
            pos = torch.arange(N, device=keys.device)
            mask = (pos[None, :] >= self.start.to(keys.device)[:, None])[:, None, :].expand(B, H_kv, N)
            with timings.part("attention"):
                out, lse = attend_with_lse(q, keys, values, mask, scale, softcap)
                out = apply_sinks(out.reshape(B, H_q, D), lse.reshape(B, H_q), sinks)
            return out[:, None]
        with timings.part("index_query"):
            selection = self.selector.select(query[:, :, 0, :])
        # NOTE: the selector itself calls the icecache_selection_made observer hook.
        self.last_selection = selection
        paged = self.owner.paged and not isinstance(self.selector, TokenScoreSelector)
        if paged and selection.page_ids.shape[-1] > 0:
            self.owner.note_attended(int(selection.ledger.selected.sum()))
            out = self.sparse.attend(query[:, :, 0, :], selection, scale, timings, softcap=softcap,
                                     sinks=sinks)
            self._feedback(query, selection, scale)
            return out[:, None]  # [B, 1, H_q, D]
        # token-level selectors (oracle, streamingllm): sinks + window as held, the others gathered
        out = self.sparse.attend_tokens(query[:, :, 0, :], selection, scale, timings, softcap=softcap,
                                        sinks=sinks)
        self.owner.note_device_tokens(self.layer_idx, int(selection.token_ids.shape[-1]))
        self._feedback(query, selection, scale)
        return out[:, None]  # [B, 1, H_q, D]

    def _feedback(self, query: Tensor, selection: Any, scale: float, keys: Tensor | None = None) -> None:
        """Hand a selector that asks for it the step's attention weights over what it selected
        (:mod:`~icecache.selectors.plumbing.feedback`); ``keys``: the selected keys when in hand."""
        if not wants_feedback(self.selector):
            return
        if keys is None:
            keys, _ = self.sparse.gather(selection.token_ids)
        ids = selection.token_ids.to(keys.device)
        self.selector.observe(attention_feedback(query[:, :, 0, :].to(keys.device), keys, ids, scale))
        if self._evicting:
            self._drain_evictions()
