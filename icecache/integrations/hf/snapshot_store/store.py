"""A folder of prefill snapshots that any process can reopen: one entry per key, written atomically.

Layout: ``ROOT/<key sha256>/manifest.json`` (format version, the key's fields, the tensor format, each
tensor file's sha256, size and tensors with shapes and dtypes, the seconds the prefill took) beside
``meta.*`` (start, lengths, last logits) and one ``layer-NNN.*`` per layer (keys, values, queries).

An entry is written in a unique ``.partial-HOST-PID-*`` folder (every file fsynced, the manifest
last) and renamed into place in one step, so a killed writer leaves no folder under a key's name; the
next save on this host removes partial folders of processes that are gone. Of two processes saving
one key, the first rename wins and the other keeps its own copy in memory and drops the files. A
loaded entry is checked in full (manifest, key fields, every file's sha256, tensor names, shapes,
dtypes, batch geometry) before use; one that fails is reported through ``warn`` (naming the path and
what is wrong), removed and recomputed, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from attrs import define, field

from icecache.core.errors import ConfigError
from icecache.integrations.hf.snapshot import PrefillSnapshot, prefill_snapshot
from icecache.integrations.hf.snapshot_store.key import FORMAT_VERSION, SnapshotKey, model_identity
from icecache.integrations.hf.snapshot_store.tensor_files import (
    TensorFileError,
    default_format,
    read_tensors,
    suffix,
    write_tensors,
)

MANIFEST = "manifest.json"
PARTIAL, DISCARD = ".partial-", ".discard-"


class SnapshotWarning(UserWarning):
    """A stored snapshot could not be used (corrupt, mismatched) or saved; it is recomputed."""


class _Bad(Exception):
    """An entry that must not be used; the message says why."""


def _warn(message: str) -> None:
    warnings.warn(message, SnapshotWarning, stacklevel=3)


@define
class SnapshotStats:
    """What a store did: batches ``reused`` (and the seconds their prefills took when they were made,
    ``reused_prefill_s``, against ``load_s`` to read them), ``computed`` (``computed_s``), ``saved``
    (``save_s``), ``rejected`` (bad entries recomputed)."""

    reused: int = 0
    reused_prefill_s: float = 0.0
    load_s: float = 0.0
    computed: int = 0
    computed_s: float = 0.0
    saved: int = 0
    save_s: float = 0.0
    rejected: int = 0

    def summary(self, root: str | Path) -> str:
        text = f"{self.reused} of {self.reused + self.computed} batch prefills reused from {str(root)!r}"
        if self.reused:
            text += (f" (their prefill took {self.reused_prefill_s:.1f} s when made, loading them "
                     f"{self.load_s:.1f} s)")
        if self.computed:
            text += (f"; {self.computed} computed in {self.computed_s:.1f} s, {self.saved} saved in "
                     f"{self.save_s:.1f} s")
        return text + (f"; {self.rejected} bad entries recomputed" if self.rejected else "")

    def to_dict(self) -> dict[str, Any]:
        from attrs import asdict

        return asdict(self)


@define
class SnapshotStore:
    """Prefill snapshots under ``root`` (created at the first save). ``warn`` receives a message per
    entry that cannot be used or saved (default: a :class:`SnapshotWarning`); ``tensor_format``:
    ``"safetensors"`` (when installed) or ``"torch"``. Entries of either format are read."""

    root: Path = field(converter=Path)
    warn: Callable[[str], None] = field(default=_warn)
    tensor_format: str = field(factory=default_format)
    stats: SnapshotStats = field(factory=SnapshotStats)

    def key(self, model: Any, prompts: Sequence[Sequence[int]], query_window: int = 0,
            model_id: str | None = None) -> SnapshotKey:
        """The key of ``prompts`` (a batch of token id lists) prefilled by ``model``; ``model_id``
        replaces the weights fingerprint (a name you guarantee identifies the weights)."""
        return SnapshotKey.for_batch(model_identity(model, model_id), prompts, query_window)

    def path(self, key: SnapshotKey) -> Path:
        return self.root / key.digest

    # -- reading ----------------------------------------------------------------------------------
    def load(self, key: SnapshotKey, device: str | torch.device = "cpu") -> PrefillSnapshot | None:
        """The stored snapshot of ``key`` on ``device``, or ``None`` when there is none (or it was bad:
        then reported, removed, and counted in ``stats.rejected``)."""
        entry = self.path(key)
        if not entry.is_dir():
            return None
        t0 = time.perf_counter()
        try:
            manifest = self._manifest(entry, key)
            snapshot = self._snapshot(entry, manifest, key, torch.device(device))
        except _Bad as exc:
            self.warn(f"snapshot {str(entry)!r}: {exc}; not used, recomputing it")
            self.stats.rejected += 1
            self._discard(entry)
            return None
        self.stats.reused += 1
        self.stats.load_s += time.perf_counter() - t0
        self.stats.reused_prefill_s += float(manifest.get("prefill_s") or 0.0)
        return snapshot

    @staticmethod
    def _manifest(entry: Path, key: SnapshotKey) -> dict[str, Any]:
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _Bad(f"no {MANIFEST}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Bad(f"{MANIFEST} cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(manifest, dict):
            raise _Bad(f"{MANIFEST} is not a JSON object")
        if manifest.get("format") != FORMAT_VERSION:
            raise _Bad(f"written in format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}")
        stored = manifest.get("key")
        if stored != key.fields:
            stored = stored if isinstance(stored, dict) else {}
            diff = next((k for k in key.fields if stored.get(k) != key.fields[k]), "?")
            raise _Bad(f"its key differs from the requested one in {diff!r}")
        if manifest.get("tensor_format") not in ("safetensors", "torch"):
            raise _Bad(f"unknown tensor format {manifest.get('tensor_format')!r}")
        if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("num_layers"), int):
            raise _Bad(f"{MANIFEST} lacks its files or num_layers")
        return manifest

    @staticmethod
    def _snapshot(entry: Path, manifest: dict[str, Any], key: SnapshotKey, device: torch.device
                  ) -> PrefillSnapshot:
        fmt, files, L = manifest["tensor_format"], manifest["files"], manifest["num_layers"]
        ext = suffix(fmt)
        names = [f"meta{ext}", *(f"layer-{i:03d}{ext}" for i in range(L))]
        if sorted(files) != sorted(names):
            raise _Bad(f"{MANIFEST} lists files {sorted(files)}, expected {names[0]} and {L} layer files")
        try:
            meta = read_tensors(entry / names[0], files[names[0]], fmt)
            layers = [read_tensors(entry / n, files[n], fmt) for n in names[1:]]
        except TensorFileError as exc:
            raise _Bad(str(exc)) from None
        lengths, start = meta["lengths"], meta["start"]
        if tuple(lengths.tolist()) != key.batch_lengths:
            raise _Bad(f"its prompt lengths {lengths.tolist()} are not the batch's {list(key.batch_lengths)}")
        N = max(key.batch_lengths)
        has_queries = key.query_window > 0
        for i, layer in enumerate(layers):
            want = {"keys", "values", *(("queries",) if has_queries else ())}
            if set(layer) != want:
                raise _Bad(f"layer {i} holds {sorted(layer)}, expected {sorted(want)}")
            k = layer["keys"]
            if k.ndim != 4 or k.shape[0] != len(key.batch_lengths) or k.shape[2] != N:
                raise _Bad(f"layer {i}'s keys are {list(k.shape)}, not [batch={len(key.batch_lengths)}, "
                           f"H, {N}, D]")
            if has_queries and layer["queries"].shape[2] != min(key.query_window, N):
                raise _Bad(f"layer {i}'s queries cover {layer['queries'].shape[2]} positions, expected "
                           f"{min(key.query_window, N)}")
        if not torch.equal(start, N - lengths):
            raise _Bad("its start positions do not match its lengths")
        windows = manifest.get("windows")

        def to(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        return PrefillSnapshot(
            keys=tuple(to(layer["keys"]) for layer in layers),
            values=tuple(to(layer["values"]) for layer in layers),
            start=start, lengths=lengths, last_logits=to(meta["last_logits"]),
            windows=None if windows is None else tuple(windows),
            queries=tuple(to(layer["queries"]) for layer in layers) if has_queries else None)

    # -- writing ----------------------------------------------------------------------------------
    def save(self, key: SnapshotKey, snapshot: PrefillSnapshot, *, prefill_s: float | None = None) -> Path:
        """Store ``snapshot`` under ``key`` (atomically; if another process stored it first, its entry
        stays). ``prefill_s``: the seconds the prefill took, reported when the entry is reused."""
        self._check_fits(key, snapshot)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_partials()
        target = self.path(key)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{PARTIAL}{socket.gethostname()}-{os.getpid()}-"))
        try:
            os.chmod(tmp, 0o755)  # NOTE: mkdtemp makes it private; a shared store is read by other users
            ext = suffix(self.tensor_format)
            meta = {"start": snapshot.start, "lengths": snapshot.lengths, "last_logits": snapshot.last_logits}
            files = {f"meta{ext}": write_tensors(tmp / f"meta{ext}", meta, self.tensor_format)}
            for i, (k, v) in enumerate(zip(snapshot.keys, snapshot.values, strict=True)):
                tensors = {"keys": k, "values": v}
                if snapshot.queries is not None:
                    tensors["queries"] = snapshot.queries[i]
                files[f"layer-{i:03d}{ext}"] = write_tensors(tmp / f"layer-{i:03d}{ext}", tensors,
                                                             self.tensor_format)
            manifest = {"format": FORMAT_VERSION, "key": key.fields, "key_sha256": key.digest,
                        "tensor_format": self.tensor_format, "num_layers": len(snapshot.keys),
                        "windows": None if snapshot.windows is None else list(snapshot.windows),
                        "prefill_s": prefill_s, "made_on": str(snapshot.keys[0].device),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
            with (tmp / MANIFEST).open("w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():
                    raise
                return target  # NOTE: another process stored this key first; its entry is kept
            _fsync_dir(self.root)
            self.stats.saved += 1
            return target
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _check_fits(key: SnapshotKey, snapshot: PrefillSnapshot) -> None:
        if tuple(snapshot.lengths.tolist()) != key.batch_lengths:
            raise ConfigError(f"the snapshot's prompt lengths {snapshot.lengths.tolist()} are not the key's "
                              f"{list(key.batch_lengths)} (a snapshot of other prompts)")
        W = min(key.query_window, snapshot.num_positions)
        got = 0 if snapshot.queries is None else snapshot.queries[0].shape[2]
        if got != W:
            raise ConfigError(f"the snapshot holds {got} prompt queries per layer, the key's query_window "
                              f"{key.query_window} means {W}: pass the query_window it was prefilled with")

    def _discard(self, entry: Path) -> None:
        """Move a bad entry out of its key's name (one rename), then delete it."""
        aside = self.root / f"{DISCARD}{entry.name[:12]}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(entry, aside)
        except OSError:
            return  # NOTE: another process moved it first
        shutil.rmtree(aside, ignore_errors=True)

    def _clean_partials(self) -> None:
        """Remove partial entries left by dead writers on this host (and leftovers of discards)."""
        host = socket.gethostname()
        for path in self.root.iterdir():
            if path.name.startswith(DISCARD):
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(PARTIAL):
                owner, _, rest = path.name[len(PARTIAL):].rpartition("-")[0].rpartition("-")
                if owner == host and rest.isdigit() and not _alive(int(rest)):
                    shutil.rmtree(path, ignore_errors=True)

    # -- both -------------------------------------------------------------------------------------
    def prefill(self, model: Any, prompts: Sequence[Sequence[int]], *, query_window: int = 0,
                model_id: str | None = None) -> PrefillSnapshot:
        """:func:`~icecache.integrations.hf.snapshot.prefill_snapshot` of ``prompts``, read from the
        store when there, else computed and saved (a failed save is reported; the run goes on)."""
        key = self.key(model, prompts, query_window, model_id)
        snapshot = self.load(key, model.device)
        if snapshot is not None:
            return snapshot
        t0 = time.perf_counter()
        snapshot = prefill_snapshot(model, prompts, query_window=query_window)
        if snapshot.last_logits.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        self.stats.computed += 1
        self.stats.computed_s += seconds
        t0 = time.perf_counter()
        try:
            self.save(key, snapshot, prefill_s=seconds)
            self.stats.save_s += time.perf_counter() - t0
        except OSError as exc:
            self.warn(f"cannot save a snapshot in {str(self.root)!r} ({exc.strerror or exc}); going on "
                      "without storing it")
        return snapshot


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
