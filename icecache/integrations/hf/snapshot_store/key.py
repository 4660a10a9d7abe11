"""What a stored prefill is keyed by: everything that changes the snapshot, nothing that does not.

A snapshot depends on the model (its config and weights), the dtype it ran in, the batch's token ids
and the prompt-query window recorded; the software versions are in the key too, so an upgrade of torch
or transformers recomputes instead of reusing another build's arithmetic. The device is not: a snapshot
made on one device is reused on another (tensors are stored on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

#: bump when the stored layout or the meaning of a field changes; older entries are then recomputed
FORMAT_VERSION = 1
#: weight files fingerprinted in a checkpoint directory
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: bytes hashed at each of a weight file's start, middle and end
SAMPLE_BYTES = 4 << 20

#: model -> (checkpoint folder, dtype) -> its weights' part of the identity (hashing takes a while)
_IDENTITIES: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], dict[str, Any]]] = \
    weakref.WeakKeyDictionary()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_fingerprint(path: Path) -> dict[str, Any]:
    """Name, size and the sha256 of three samples (start, middle, end): a changed or truncated file
    shows without reading gigabytes. NOTE: no mtime, so a copy on another machine still matches."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            fh.seek(offset)
            digest.update(fh.read(SAMPLE_BYTES))
    return {"name": path.name, "bytes": size, "sample_sha256": digest.hexdigest()}


def _parameters_digest(model: Any) -> str:
    """sha256 of every parameter and buffer (a model with no checkpoint directory, e.g. built from a
    config in memory): exact, and cheap for the small models that have no files."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_identity(model: Any, model_id: str | None = None) -> dict[str, Any]:
    """The model's part of a key: its config (private fields such as the checkpoint path left out),
    dtype, software versions, and ``model_id`` if given, else a fingerprint of its checkpoint's weight
    files (or, without any, a hash of its parameters). NOTE: the weights' part is computed once per
    model object and dtype; a model whose weights change in place needs its own ``model_id``."""
    import torch
    import transformers

    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    dtype = str(model.dtype).removeprefix("torch.")
    identity: dict[str, Any] = {
        "model_type": config.get("model_type"),
        "config_sha256": _sha256(json.dumps(config, sort_keys=True, default=str).encode()),
        "dtype": dtype,
        "software": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model_id": model_id,
    }
    if model_id is None:
        identity.update(_weights(model, dtype))
    return identity


def _weights(model: Any, dtype: str) -> dict[str, Any]:
    folder = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    cached = _IDENTITIES.setdefault(model, {})
    memo = (str(folder), dtype)
    if memo not in cached:
        files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
        cached[memo] = ({"weights": [_file_fingerprint(p) for p in files]} if files
                        else {"parameters_sha256": _parameters_digest(model)})
    return cached[memo]


@frozen(kw_only=True)
class SnapshotKey:
    """One batch's key. ``fields`` is what the manifest records and a load compares; ``digest`` (its
    sha256) names the entry's folder."""

    fields: dict[str, Any]
    batch_lengths: tuple[int, ...]

    @classmethod
    def for_batch(cls, identity: dict[str, Any], prompts: Sequence[Sequence[int]], query_window: int
                  ) -> SnapshotKey:
        tokens = json.dumps([[int(t) for t in p] for p in prompts], separators=(",", ":")).encode()
        fields = {"format": FORMAT_VERSION, "model": identity, "tokens_sha256": _sha256(tokens),
                  "batch": len(prompts), "query_window": int(query_window)}
        return cls(fields=fields, batch_lengths=tuple(len(p) for p in prompts))

    @property
    def digest(self) -> str:
        return _sha256(json.dumps(self.fields, sort_keys=True).encode())

    @property
    def query_window(self) -> int:
        return self.fields["query_window"]
