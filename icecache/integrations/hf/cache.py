"""``IceCache``: a transformers ``Cache`` whose decode steps attend only what a selector picks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError
from icecache.core.policy import CachePolicy, compose_policy, default_tier_stack
from icecache.integrations.hf.attention import mark_active
from icecache.integrations.hf.layer import IceCacheLayer
from icecache.integrations.hf.sparse_kv import SparseLayerKV
from icecache.integrations.hf.timing import DecodeTimings

#: decoded tokens per row whose window flushes the host tier is reserved for at prefill (then it grows by
#: an eighth); at 4k prompts and pages of 8, 6% more host slots than the prompt's, at 32k 0.8%
DECODE_HEADROOM_TOKENS = 256


class IceCache(Cache):
    """KV cache for decoder LMs (GQA) following a :class:`CachePolicy`.

    Prefill runs dense; each layer's selector is built from the prompt's keys; every decode step of
    a sparse layer attends only the tokens its selector returns (sinks, window and selected pages).
    Dense layers (``config.dense_layers`` first ones, or every layer for the ``full`` selector) keep
    their KV on the device. A sparse layer's KV lives once, in the pages of a
    :class:`~icecache.storage.store.TieredStore` built from ``policy.tiers`` (device tier = a bounded
    page pool caching what attention reads; host, optionally disk, behind it) shared by all layers, plus
    its sinks and recent window on the device (:class:`~icecache.integrations.hf.sparse_kv.SparseLayerKV`);
    its selector and index read keys back from there. Use with a model switched to the ``"icecache"``
    attention (:func:`~icecache.integrations.hf.attention.use_icecache`).

    Page-based selectors (``paged=True``, the default) load the selected pages each step and run the
    kernels' sparse paged attention; token-level selectors (oracle, streamingllm), or ``paged=False``,
    gather the selected tokens from their pages. The device tier's capacity is
    ``config.tiers.device_pages``, or by default room for every sparse layer's selected pages at full
    pages. Pages are stored in ``config.page_dtype`` (default: the model's KV dtype).

    Sliding-window layers (``windows[i]`` not ``None``: Mistral, Gemma 2/3, GPT-OSS, OLMo3, windowed
    Qwen2...) keep only the model's window and attend it whole; the policy applies to full-context
    layers. :meth:`for_model` reads the windows from the model and refuses attention it cannot
    reproduce (:mod:`icecache.integrations.hf.features`).

    ``timings`` records per-step index query / page load / attention / rest.
    """

    def __init__(self, policy: CachePolicy, num_layers: int, *, host_device: str | torch.device = "cpu",
                 timing: bool = True, paged: bool = True, windows: Sequence[int | None] | None = None):
        if not isinstance(policy, CachePolicy):
            raise ConfigError(f"policy must be a CachePolicy (from compose_policy, or build the cache with "
                              f"IceCache.for_model(model, selector=..., budget=...)), got {policy!r}")
        if num_layers < 1:
            raise ConfigError(f"num_layers must be positive, got {num_layers}")
        windows = tuple(windows) if windows is not None else (None,) * num_layers
        if len(windows) != num_layers:
            raise ConfigError(f"windows lists {len(windows)} layers, the cache has {num_layers}")
        self.policy = policy
        self.host_device = torch.device(host_device)
        self.timings = DecodeTimings(enabled=timing)
        self.paged = paged
        self.store: Any = None
        self.kernels: Any = None
        self._working_set: dict[int, int] = {}
        self._reserved = False
        self._attended = 0
        #: layer -> [tokens evicted, store pages freed] (selectors that evict for good)
        self.evictions: dict[int, list[int]] = {}
        super().__init__(layers=[IceCacheLayer(self, i, window=w) for i, w in enumerate(windows)])

    # -- tiers and kernels ------------------------------------------------------------------------
    def device_pages(self, batch: int, kv_heads: int, page_size: int | None = None) -> int:
        """Device-tier capacity in pages: ``config.tiers.device_pages`` or, by default, the selected pages
        of every sparse layer at full pages (at least one layer's worst case of one token per page)."""
        sparse = sum(1 for layer in self.layers if not layer.dense and layer.window is None)
        return device_capacity(self.policy, sparse_layers=sparse, num_layers=len(self.layers),
                               rows=batch * kv_heads, page_size=page_size)

    def make_sparse(self, layer_idx: int, shape: tuple[int, ...], dtype: torch.dtype, *,
                    page_size: int) -> SparseLayerKV:
        """The KV home of a sparse layer whose keys are ``shape = [B, H_kv, N, D]`` in ``dtype``, with pages
        of ``page_size`` slots (the selector's); builds the shared store and kernels on first use."""
        from attrs import evolve

        from icecache.storage.store import TieredStore

        B, H, _, D = shape
        config = self.policy.config
        if self.store is None:
            tiers = evolve(config.tiers, device_pages=self.device_pages(B, H, page_size))
            store_config = evolve(config, tiers=tiers, page_size=page_size, dtype=config.page_dtype or dtype)
            # NOTE: the policy's per-tier options (``options[tier name]``) reach the tiers; the device
            # tier's capacity comes from the sized config unless its options give one
            options = {name: self.policy.tier_options(name) for name in self.policy.tiers}
            self.store = TieredStore.build(store_config, tiers=self.policy.tiers, head_dim=D, options=options,
                                           plugin_manager=self.policy.plugin_manager)
            self.kernels = self.policy.make_kernels()
        elif self.store.spec.page_size != page_size:
            raise ConfigError(f"layer {layer_idx}'s selector has pages of {page_size} slots, the store "
                              f"(built for an earlier layer) {self.store.spec.page_size}")
        # NOTE: the window holds at most window_tokens + flush - 1 tokens and a flush is at most a page.
        keep = config.window_tokens + config.page_size
        return SparseLayerKV(self.store, self.kernels, layer_idx, sink_tokens=config.sink_tokens,
                             keep_recent=keep, device=config.device, dtype=dtype)

    def reserve_pages(self, layer_idx: int, layout: Tensor) -> None:
        """Before the first sparse layer's prompt pages are written: reserve host room for every sparse
        layer's (about as many each), plus the pages their windows flush over the first
        :data:`DECODE_HEADROOM_TOKENS` decoded tokens (at most an eighth of the prompt's pages: a selector
        that evicts keeps few), so the host tier is sized once.

        NOTE: a tier grows by copying all it holds into a larger block: sized to the prompt alone, the
        first window flush (decode step ~16) grew it, a 0.5-3.6 s stall in one step at 4k x 4 on the
        2-core CPU (the whole host KV copied; docs/storage.md)."""
        if self._reserved or self.store is None:
            return
        self._reserved = True
        B, H, _, S = layout.shape
        pages = int(((layout >= 0).any(-1)).sum())
        pages += min(B * H * -(-DECODE_HEADROOM_TOKENS // S), pages // 8)
        later = sum(1 for layer in self.layers[layer_idx:] if not layer.dense and layer.window is None)
        self.store.reserve(pages * later)

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
                  tiers: Any = None, tier_names: tuple[str, ...] | None = None,
                  budget_policy: str = "uniform", **config: Any) -> IceCache:
        """A cache for ``model`` (its geometry read from ``model.config``), composing ``selector`` at
        ``budget`` tokens per KV head; ``config`` overrides other :class:`CacheConfig` fields.

        ``tiers``: the storage stack, as tier names in order (``("device", "host", "my-tier")``), or a
        dict of names to their options in order (``{"device": {"eviction": "lfu"}, "host": {}}``), or a
        :class:`TierConfig` (capacities, disk directory, eviction; the stack is then the default:
        device and host, and disk when it names a disk directory). ``tier_names`` is the older
        spelling of a list of names. Tier options may also come in ``options[tier name]``.
        ``budget_policy`` spreads ``budget`` over layers and KV heads (``options["budget"]``: its
        options; see :mod:`icecache.budgets`). A model whose attention the cache cannot reproduce is
        refused (:class:`ConfigError` naming the feature)."""
        from icecache.core.config import TierConfig
        from icecache.integrations.hf.features import attention_features

        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"budget must be a positive integer, got {budget!r}")
        features = attention_features(model)

        names, options = tier_names, dict(options or {})
        if isinstance(tiers, TierConfig):
            config["tiers"] = tiers
        elif isinstance(tiers, dict):
            names = tuple(tiers)
            for name, opts in tiers.items():
                options[name] = {**options.get(name, {}), **(opts or {})}
        elif tiers is not None:
            if isinstance(tiers, str) or not all(isinstance(t, str) for t in tiers):
                raise ConfigError(f"tiers must be tier names in order, a dict of names to options, or a "
                                  f"TierConfig, got {tiers!r}")
            names = tuple(tiers)
        config.setdefault("device", model.device)
        cfg = CacheConfig.from_model_config(model.config, budget=budget, **config)
        policy = compose_policy(selector=selector, config=cfg, options=options, budget_policy=budget_policy,
                                tiers=names if names is not None else default_tier_stack(cfg.tiers))
        return cls(policy, model.config.num_hidden_layers, timing=timing, windows=features.windows)

    @classmethod
    def from_snapshot(cls, snapshot: Any, policy: CachePolicy, *, timing: bool = True,
                      fewer_queries: bool = False) -> IceCache:
        """A cache holding a :class:`~icecache.integrations.hf.snapshot.PrefillSnapshot`'s prompt, its
        selectors built (from its keys and its prompt queries' window), ready to decode (the model's
        prefill is not re-run); its sliding-window layers are the snapshot's.

        A snapshot holding fewer prompt queries than the policy's selector asks for at prefill (SnapKV's
        votes, IceCache's query-aware clustering, ...) is refused: the selector would silently fall back
        to its query-free form, which no runner gives it. Prefill with ``query_window=``
        :func:`~icecache.selectors.plumbing.prompt_queries.policy_query_window` ``(policy)``, or pass
        ``fewer_queries=True`` to accept the fallback on purpose."""
        if not fewer_queries:
            check_snapshot_queries(snapshot, policy)
        cache = cls(policy, len(snapshot.keys), timing=timing, windows=snapshot.windows)
        queries = snapshot.queries or (None,) * len(snapshot.keys)
        for layer, k, v, q in zip(cache.layers, snapshot.keys, snapshot.values, queries, strict=True):
            layer.load_prefill(k, v, snapshot.start, q)
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

    def note_evicted(self, layer_idx: int, tokens: int, pages: int) -> None:
        """Record ``tokens`` evicted for good by a sparse layer's selector and the ``pages`` that freed."""
        counts = self.evictions.setdefault(layer_idx, [0, 0])
        counts[0] += tokens
        counts[1] += pages

    def note_attended(self, selected_tokens: int) -> None:
        """Record the selected (paged) tokens one sparse layer's step attended, for bytes moved per token."""
        self._attended += selected_tokens

    def memory_report(self) -> dict[str, Any]:
        """Everything this cache holds, against a full cache of the same length (every layer's K and V in
        the model dtype): ``device`` / ``host`` / ``disk`` dicts of bytes by part, their totals and
        fractions of ``full_kv_bytes``, ``page_fill`` (tokens over slots of the stored pages) and
        ``load_bytes_per_token`` (bytes moved to the device per selected token attended) and ``tiers``
        (:meth:`~icecache.storage.store.TieredStore.occupancy`: pages, tokens and slots per tier);
        ``evicted_tokens`` / ``freed_pages``: what selectors that evict for good dropped (per KV head row)
        and the store pages that freed (their tokens leave ``kv_payload``, their slots go to
        ``spare_slots`` for later pages).

        Parts: ``dense_kv`` (dense layers), ``window_kv`` (sliding-window layers: a full cache holds
        their ``window - 1`` newest positions too, and ``full_kv_bytes`` counts that), ``resident``
        (sinks and windows), ``device_pool`` (the device tier's pages), ``working_set`` (the most K/V a
        token-level layer gathered in one step: transient, one layer at a time), ``kv_payload`` /
        ``page_padding`` / ``spare_slots`` (a backing tier's stored tokens, the empty slots of its pages,
        its allocated but unused slots), ``index``,
        ``selector`` (state besides the index), ``selection`` (the last step's, kept for observers),
        ``tables`` (page ids and locations), ``staging``, ``bookkeeping`` (the store's page-id and slot
        maps); ``other``: what the walk of every array reachable from the cache finds beyond the
        itemized parts.
        NOTE: the index and selector state live on ``config.device`` (host on a CPU machine)."""
        from icecache.core.memory import data_pointers, reachable_bytes

        parts: dict[str, dict[str, int]] = {"device": {}, "host": {}, "disk": {}}

        def add(where: str, what: str, n: int) -> None:
            parts[where][what] = parts[where].get(what, 0) + int(n)

        config = self.policy.config
        state_where = "device" if config.device.type == "cuda" else "host"
        full = 0
        for layer in self.layers:
            if layer.n == 0:
                continue
            if layer.win is not None and layer.win.keys is not None:
                B, H, _, D = layer.win.keys.shape
                add("device", "window_kv", layer.win.nbytes())
                # NOTE: a full cache of a sliding-window layer holds its window too (transformers'
                # DynamicSlidingWindowLayer), so that is what it is compared with.
                full += 2 * B * H * D * layer.win.keys.element_size() * min(layer.n, layer.window - 1)
                continue
            if layer.dense and layer.kv is not None:
                B, H, _, D = layer.kv.keys.shape
                add("device", "dense_kv", layer.kv.nbytes(used_only=False))
            elif layer.sparse is not None:
                B, H, D = *layer.sparse.phys.shape[:2], layer.sparse.ring[0].shape[-1]
                held = layer.sparse.nbytes()
                add("device", "resident", held["device"])
                add("host", "tables", held["tables"])
                # NOTE: a token-level layer's gathered K/V are transient and one layer's exist at a time
                gathered = 2 * B * H * D * layer.sparse.ring[0].element_size() * self._working_set.get(
                    layer.layer_idx, 0)
                parts["device"]["working_set"] = max(parts["device"].get("working_set", 0), gathered)
            else:
                continue
            full += 2 * B * H * D * torch.empty((), dtype=layer.dtype).element_size() * layer.n
            if layer.last_selection is not None:
                add(state_where, "selection", sum(reachable_bytes(layer.last_selection).values()))
            if layer.selector is not None and hasattr(layer.selector, "nbytes"):
                for what, n in layer.selector.nbytes().items():
                    add(state_where, "index" if what.startswith("index_") else "selector", n)
        disk_ptrs: set[int] = set()
        fill_tokens = fill_slots = 0
        occupancy = self.store.occupancy() if self.store is not None else []
        if self.store is not None:
            S = self.store.spec.page_size
            for tier, occ in zip(self.store.tiers, occupancy, strict=True):
                where = {"file": "disk", "cuda": "device", "cpu-standin": "device"}.get(occ["memory"], "host")
                if occ["memory"] == "file":
                    disk_ptrs |= data_pointers(getattr(tier, "data", None))
                if occ["role"] == "cache":
                    add(where, "device_pool", occ["allocated_slots"] * occ["page_nbytes"])
                    continue
                add(where, "kv_payload", occ["tokens"] * occ["token_nbytes"])
                add(where, "page_padding", (occ["pages"] * S - occ["tokens"]) * occ["token_nbytes"])
                add(where, "spare_slots", (occ["allocated_slots"] - occ["pages"]) * occ["page_nbytes"])
                fill_tokens += occ["tokens"]
                fill_slots += occ["pages"] * S
            add("host", "staging", self.store.staging_nbytes())
            add("host", "bookkeeping", self.store.bookkeeping_nbytes())
        held = reachable_bytes(self, skip=disk_ptrs)
        itemized = sum(v for where in ("device", "host") for k, v in parts[where].items()
                       if k != "working_set")
        add("host", "other", sum(held.values()) - itemized)
        totals = {where: sum(v for k, v in p.items() if k != "working_set") for where, p in parts.items()}
        device = totals["device"] + parts["device"].get("working_set", 0)
        frac = (lambda n: n / full if full else 0.0)
        moved = self.store.stats().moves["load"]["nbytes"] if self.store is not None else 0
        return {"full_kv_bytes": full, "device_kv_bytes": device, "host_bytes": totals["host"],
                "disk_bytes": totals["disk"], "device_pool_bytes": parts["device"].get("device_pool", 0),
                "device_fraction": frac(device), "host_fraction": frac(totals["host"]),
                "disk_fraction": frac(totals["disk"]), "held_fraction": frac(device + totals["host"]),
                "page_fill": fill_tokens / fill_slots if fill_slots else 1.0,
                "load_bytes_per_token": moved / self._attended if self._attended else 0.0,
                "evicted_tokens": sum(c[0] for c in self.evictions.values()),
                "freed_pages": sum(c[1] for c in self.evictions.values()),
                "device": parts["device"], "host": parts["host"], "disk": parts["disk"], "tiers": occupancy}


def device_capacity(policy: CachePolicy, *, sparse_layers: int, num_layers: int, rows: int,
                    page_size: int | None = None) -> int:
    """The device tier's capacity in pages for ``rows`` (batch x KV heads) rows: ``--device-pages``
    (``config.tiers.device_pages``) or, by default, the selected pages of the ``sparse_layers`` layers at
    full pages (at least one layer's worst case of one token per page). Also what the checks before a
    run size the device tier with."""
    config = policy.config
    if config.tiers.device_pages is not None:
        return config.tiers.device_pages
    S = page_size or config.page_size
    budgets = getattr(policy, "budgets", None)
    if budgets is not None and not budgets.uniform:
        # NOTE: a budget policy: each layer's mean selected share, a page more per row for the split
        # over heads; one layer's worst case is its rows' whole share at one token per page
        floor = config.sink_tokens + config.window_tokens
        shares = [budgets.layer_budget(i, num_layers) - floor
                  for i in range(config.dense_layers, num_layers)] or [config.selected_budget]
        return max(rows * sum(-(-s // S) + 1 for s in shares), rows * max(shares), 1)
    per_layer = -(-config.selected_budget // S)
    return max(max(1, sparse_layers) * rows * per_layer, rows * config.selected_budget, 1)


def check_snapshot_queries(snapshot: Any, policy: CachePolicy) -> None:
    """:class:`ConfigError` when ``snapshot`` keeps fewer of the prompt's last queries than ``policy``'s
    selector wants at prefill (the prompt's length caps what it can want)."""
    from icecache.selectors.plumbing.prompt_queries import policy_query_window

    if not isinstance(policy, CachePolicy):
        return  # NOTE: the constructor names the bad value
    wanted = min(policy_query_window(policy), snapshot.num_positions)
    held = snapshot.queries[0].shape[2] if snapshot.queries else 0
    if held < wanted:
        raise ConfigError(f"selector {policy.selector!r} wants the prompt's last {wanted} queries at "
                          f"prefill; the snapshot holds {held}: prefill it with prefill_snapshot(..., "
                          f"query_window={wanted}), or pass fewer_queries=True to decode without them")
