"""Tensor files of a stored snapshot: safetensors when installed, else ``torch.save``; each file's
bytes are hashed as they are written and checked before they are read back."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from torch import Tensor

from icecache.core.errors import IceCacheError


class TensorFileError(IceCacheError, OSError):
    """A stored tensor file is missing, changed or unreadable (the message says which and how)."""


def default_format() -> str:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return "torch"
    return "safetensors"


def suffix(fmt: str) -> str:
    return {"safetensors": ".safetensors", "torch": ".pt"}[fmt]


def _encode(tensors: dict[str, Tensor], fmt: str) -> bytes:
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    if fmt == "safetensors":
        from safetensors.torch import save

        return save(cpu)
    buffer = io.BytesIO()
    torch.save(cpu, buffer)
    return buffer.getvalue()


def _decode(data: bytes, fmt: str) -> dict[str, Tensor]:
    if fmt == "safetensors":
        from safetensors.torch import load

        return load(data)
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"holds a {type(loaded).__name__}, not a dict of tensors")
    return loaded


def write_tensors(path: Path, tensors: dict[str, Tensor], fmt: str) -> dict[str, object]:
    """Write and fsync ``tensors`` to ``path``; returns the file's manifest entry: ``sha256``,
    ``bytes`` and each tensor's ``shape`` and ``dtype``."""
    data = _encode(tensors, fmt)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                        for name, t in tensors.items()}}


def read_tensors(path: Path, entry: dict[str, object], fmt: str) -> dict[str, Tensor]:
    """The tensors of ``path`` if its size and sha256 are the manifest ``entry``'s and it holds exactly
    the tensors (names, shapes, dtypes) the entry lists; else :class:`TensorFileError` saying what."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TensorFileError(f"{path.name}: cannot be read ({exc.strerror or exc})") from None
    if len(data) != entry["bytes"]:
        raise TensorFileError(f"{path.name}: {len(data)} bytes, the manifest says {entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise TensorFileError(f"{path.name}: its sha256 is not the manifest's (the file changed)")
    try:
        tensors = _decode(data, fmt)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways inside the reader
        raise TensorFileError(f"{path.name}: not a readable {fmt} file ({type(exc).__name__}: "
                              f"{exc})") from None
    listed = entry["tensors"]
    assert isinstance(listed, dict)
    if set(tensors) != set(listed):
        raise TensorFileError(f"{path.name}: holds tensors {sorted(tensors)}, the manifest lists "
                              f"{sorted(listed)}")
    for name, t in tensors.items():
        got = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if got != listed[name]:
            raise TensorFileError(f"{path.name}: tensor {name!r} is {got}, the manifest says {listed[name]}")
    return tensors
