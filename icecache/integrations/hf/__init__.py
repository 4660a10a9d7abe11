"""Hugging Face transformers integration: the IceCache, the ``"icecache"`` attention, model loading."""

from icecache.integrations.hf.attention import ATTN_NAME, register_attention, use_icecache
from icecache.integrations.hf.cache import IceCache
from icecache.integrations.hf.generation import decode, pick_tokens
from icecache.integrations.hf.loader import load_model
from icecache.integrations.hf.snapshot import PrefillSnapshot, prefill_snapshot
from icecache.integrations.hf.snapshot_store import (
    SnapshotStore,
    SnapshotWarning,
    load_snapshot,
    save_snapshot,
)
from icecache.selectors.plumbing.prompt_queries import policy_query_window

__all__ = ["ATTN_NAME", "IceCache", "PrefillSnapshot", "SnapshotStore", "SnapshotWarning", "decode",
           "load_model", "load_snapshot", "pick_tokens", "policy_query_window", "prefill_snapshot",
           "register_attention", "save_snapshot", "use_icecache"]
