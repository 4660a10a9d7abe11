"""Prefill snapshots on disk: saved once, reopened by any later process (``--snapshot-dir``).

Use :func:`save_snapshot` / :func:`load_snapshot`, or a :class:`SnapshotStore` (which also counts what
it reused and what that saved). See docs/running.md, "Reusing prefills across runs".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icecache.integrations.hf.snapshot import PrefillSnapshot
from icecache.integrations.hf.snapshot_store.key import FORMAT_VERSION, SnapshotKey, model_identity
from icecache.integrations.hf.snapshot_store.store import SnapshotStats, SnapshotStore, SnapshotWarning


def save_snapshot(directory: str | Path, model: Any, prompts: Sequence[Sequence[int]],
                  snapshot: PrefillSnapshot, *, query_window: int = 0, model_id: str | None = None) -> Path:
    """Store ``snapshot``, the :func:`~icecache.integrations.hf.snapshot.prefill_snapshot` of
    ``prompts`` (token id lists) by ``model`` with ``query_window``, under ``directory`` (created if
    needed); returns its entry's folder. Keyed by the model's config and weights, its dtype, the
    prompts' token ids, the query window and the format version (not the device)."""
    store = SnapshotStore(directory)
    return store.save(store.key(model, prompts, query_window, model_id), snapshot)


def load_snapshot(directory: str | Path, model: Any, prompts: Sequence[Sequence[int]], *,
                  query_window: int = 0, model_id: str | None = None) -> PrefillSnapshot | None:
    """The snapshot :func:`save_snapshot` stored for the same model, prompts and ``query_window``, on
    ``model.device``; ``None`` if there is none. A corrupt or mismatched entry gives a
    :class:`SnapshotWarning` naming its path and what is wrong, is removed, and ``None`` is returned."""
    store = SnapshotStore(directory)
    return store.load(store.key(model, prompts, query_window, model_id), model.device)


__all__ = ["FORMAT_VERSION", "SnapshotKey", "SnapshotStats", "SnapshotStore", "SnapshotWarning",
           "load_snapshot", "model_identity", "save_snapshot"]
