"""The disk tier: page records in one real file, memory-mapped, with a checksum per page.

File layout: slot ``i`` is bytes ``[i * page_nbytes, (i + 1) * page_nbytes)`` of
``<directory>/icecache-<pid>-<token>.pages``, a record ``[2, S, D]`` (keys then values), so pages in
adjacent slots are one contiguous extent. The file is mapped with ``torch.from_file(shared=True)``:
a gather of many pages is one ``index_select`` over the mapping (zero-copy, no per-page loop).

Space is reserved with ``posix_fallocate`` *before* the mapping grows, so a full disk raises
:class:`DiskFullError` before any byte is written (writing to an unreserved mapped page would be a
``SIGBUS`` instead). Checksums (:mod:`icecache.storage.checksum`) live in memory, one per slot, and
are verified on every read. Reads first hint each contiguous run to the kernel
(``POSIX_FADV_WILLNEED``), so a cold read is a few large asynchronous reads rather than a page fault
per 4 KiB.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import define, field, setters
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ChecksumError, DiskFullError, StorageError
from icecache.storage.checksum import get_checksum
from icecache.storage.device import spec_from_config
from icecache.storage.layout import contiguous_run
from icecache.storage.slots import INITIAL_SLOTS, SlotTier


def reserve_space(fd: int, offset: int, length: int) -> None:
    """Allocate file blocks (the one low-level call that can fail with ``ENOSPC``)."""
    os.posix_fallocate(fd, offset, length)


def _runs(slots: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous runs of ``slots``: ``(first slot, length)`` each, ascending."""
    s = np.sort(slots.numpy())
    first = np.concatenate([[0], np.flatnonzero(np.diff(s) != 1) + 1])  # where each run begins
    lengths = np.diff(np.concatenate([first, [s.size]]))
    return s[first], lengths


@define(eq=False, on_setattr=setters.NO_OP)
class DiskTier(SlotTier):
    """Slots in a file under ``directory`` (``None``: a private temporary directory, removed on close).

    ``checksum``: ``"sum64"`` (default) or ``"crc32"``; ``read_hints``: ask the kernel to read each
    contiguous run ahead of the gather (helps cold reads; costs one syscall per run).
    """

    directory: Path | None = field(kw_only=True, default=None,
                                   converter=lambda p: None if p is None else Path(p))
    checksum: str = field(kw_only=True, default="sum64")
    read_hints: bool = field(kw_only=True, default=True)
    path: Path | None = field(init=False, default=None)
    _fd: int = field(init=False, default=-1)
    _data: Tensor | None = field(init=False, default=None)
    _sums: Tensor = field(init=False, factory=lambda: torch.zeros(0, dtype=torch.int64))
    _own_dir: bool = field(init=False, default=False)
    _checksum_fn: Any = field(init=False, default=None)
    _finalizer: Any = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._checksum_fn = get_checksum(self.checksum)
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="icecache-disk-"))
            self._own_dir = True
        directory = self.directory
        if not directory.exists():
            raise StorageError(f"disk tier directory {str(directory)!r} does not exist")
        if not directory.is_dir():
            raise StorageError(f"disk tier directory {str(directory)!r} is not a directory")
        self.path = directory / f"icecache-{os.getpid()}-{secrets.token_hex(4)}.pages"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StorageError(f"disk tier directory {str(directory)!r} is not writable: "
                               f"{exc.strerror or exc}") from None
        self._finalizer = weakref.finalize(self, _cleanup, self._fd, str(self.path),
                                           str(directory) if self._own_dir else None)
        self._ensure_slots(INITIAL_SLOTS if self.capacity is None else min(self.capacity, INITIAL_SLOTS))

    # ----- memory --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _memory(self) -> str:
        return "file"

    def _details(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "path": str(self.path), "checksum": self.checksum,
                "file_bytes": self._num_slots * self.spec.page_nbytes}

    def _resize_storage(self, num_slots: int) -> None:
        old_bytes = self._num_slots * self.spec.page_nbytes
        new_bytes = num_slots * self.spec.page_nbytes
        try:
            reserve_space(self._fd, old_bytes, new_bytes - old_bytes)
        except OSError as exc:
            os.ftruncate(self._fd, old_bytes)  # NOTE: drop whatever a failed reservation left behind
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"disk tier {self.name!r}: no space left in {str(self.directory)!r} to grow "
                    f"{self.path.name} from {old_bytes} to {new_bytes} bytes"
                ) from None
            raise StorageError(f"disk tier {self.name!r}: cannot grow {str(self.path)!r}: {exc}") from None
        self._data = None  # unmap before mapping the larger file
        self._map(num_slots)
        self._sums = torch.cat([self._sums, torch.zeros(num_slots - self._sums.numel(), dtype=torch.int64)])

    def _map(self, num_slots: int) -> None:
        nbytes = num_slots * self.spec.page_nbytes
        raw = torch.from_file(str(self.path), shared=True, size=nbytes, dtype=torch.uint8)
        self._data = raw.view(self.spec.dtype).view(num_slots, *self.spec.record_shape)

    # ----- data ----------------------------------------------------------------------------------
    def read(self, slots: Tensor, *, out: Tensor | None = None) -> Tensor:
        """Gather ``[n, 2, S, D]`` from the file in one operation and verify every page's checksum."""
        data = self._mapped()
        n = slots.numel()
        if self.read_hints and n:
            self._hint(slots)
        direct = out is not None and out.device.type == "cpu" and out.is_contiguous()
        buf = out if direct else self.spec.empty(n)
        start = contiguous_run(slots)
        if start is not None:
            buf.copy_(data[start:start + n])
        else:
            torch.index_select(data, 0, slots, out=buf)
        self._verify(slots, buf)
        if out is None or direct:
            return buf
        return out.copy_(buf)

    def write(self, slots: Tensor, records: Tensor) -> None:
        data = self._mapped()
        records = records.to("cpu").contiguous()
        self._sums[slots] = self._checksum_fn(records)
        start = contiguous_run(slots)
        if start is not None:
            data[start:start + slots.numel()].copy_(records)
        else:
            data.index_copy_(0, slots, records)

    def view(self, start: int, stop: int) -> None:
        return None

    def _verify(self, slots: Tensor, records: Tensor) -> None:
        got = self._checksum_fn(records)
        bad = got != self._sums[slots]
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            slot = int(slots[i])
            raise ChecksumError(
                f"page {int(self._page_of[slot])} (slot {slot}, bytes {slot * self.spec.page_nbytes}+"
                f"{self.spec.page_nbytes} of {str(self.path)!r}) failed its {self.checksum} checksum: "
                f"stored {int(self._sums[slot]):#x}, read {int(got[i]):#x}"
            )

    def _hint(self, slots: Tensor) -> None:
        first, lengths = _runs(slots)
        nb = self.spec.page_nbytes
        for s, n in zip(first.tolist(), lengths.tolist(), strict=True):  # one syscall per run
            os.posix_fadvise(self._fd, s * nb, n * nb, os.POSIX_FADV_WILLNEED)

    def _mapped(self) -> Tensor:
        if self._data is None:
            raise StorageError(f"disk tier {self.name!r} is closed")
        return self._data

    # ----- file management -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write dirty pages of the mapping to the file (``fsync``)."""
        os.fsync(self._fd)

    def drop_page_cache(self) -> None:
        """Flush, unmap, ask the kernel to drop the file's cached pages, map again: the next reads
        come from the disk (what ``icecache bench transfer`` calls a cold read)."""
        self.flush()
        self._data = None
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self._map(self._num_slots)

    def close(self) -> None:
        """Unmap, close and delete the file (and the directory when the tier created it)."""
        self._data = None
        if self._finalizer is not None:
            self._finalizer()

    @classmethod
    def from_config(cls, config: CacheConfig, *, name: str = "disk", capacity: int | None = None,
                    head_dim: int | None = None, directory: str | os.PathLike[str] | None = None,
                    eviction: str | None = None, checksum: str = "sum64",
                    read_hints: bool = True) -> DiskTier:
        """``config.tiers.disk_pages`` slots (``capacity`` overrides) in ``config.tiers.disk_dir``
        (``directory`` overrides; neither: a private temporary directory)."""
        return cls(name=name, spec=spec_from_config(config, head_dim),
                   capacity=config.tiers.disk_pages if capacity is None else capacity,
                   eviction=eviction or config.tiers.eviction,
                   directory=config.tiers.disk_dir if directory is None else directory,
                   checksum=checksum, read_hints=read_hints)


def _cleanup(fd: int, path: str, own_dir: str | None) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass
    if own_dir is not None:
        shutil.rmtree(own_dir, ignore_errors=True)
