"""The disk tier: page records in one real file, read and written with ``preadv``/``pwritev``, a
checksum per page.

File layout: slot ``i`` is bytes ``[i * page_nbytes, (i + 1) * page_nbytes)`` of
``<directory>/icecache-<pid>-<token>.pages``, a record ``[2, S, D]`` (keys then values), so pages in
adjacent slots are one contiguous extent. A gather or scatter of many pages is **one system call per
contiguous run of slots** (the run's pages go straight into, or out of, their rows of the caller's
buffer as one I/O vector).

Why not a memory mapping: a mapped page whose file was truncated, or whose blocks a full disk could
not allocate, kills the process with ``SIGBUS``. With ``pread``/``pwrite`` on a descriptor held open
(never re-opened by path) a truncated file is a short read (:class:`StorageError` naming it), a
deleted file keeps working until close, and a full disk is ``ENOSPC`` (:class:`DiskFullError`).

The file grows by exactly the slots a store needs, reserved with ``posix_fallocate`` before any byte
is written; when that fails the tier falls back to free slots already in the file, and raises
:class:`DiskFullError` with nothing changed only when there are none. Checksums
(:mod:`icecache.storage.checksum`, keyed by page id and slot) live in memory and are verified on every
read. Stale files of dead processes are removed at start (:mod:`icecache.storage.disk_files`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import define, field, setters
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ChecksumError, DiskFullError, StorageError
from icecache.storage import disk_files
from icecache.storage.checksum import DEFAULT_CHECKSUM, get_checksum, page_keys
from icecache.storage.device import spec_from_config
from icecache.storage.slots import FREE, SlotTier

#: I/O vectors per system call (Linux ``IOV_MAX``)
IOV_MAX = 1024


def reserve_space(fd: int, offset: int, length: int) -> None:
    """Allocate file blocks (the one low-level call that can fail with ``ENOSPC``)."""
    os.posix_fallocate(fd, offset, length)


def _runs(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous runs of ``slots`` in file order: ``(order, run starts, segment starts)``.

    ``order`` sorts ``slots``; runs are maximal ``s, s+1, ...`` stretches of ``slots[order]``;
    segments split runs further where the rows (``order``) stop being consecutive, so each segment is
    one contiguous block of the caller's buffer. Starts index ``order``; both end with ``n``.
    """
    order = np.argsort(slots, kind="stable")
    s = slots[order]
    gap = np.diff(s) != 1
    run = np.concatenate([[0], np.flatnonzero(gap) + 1, [s.size]])
    seg = np.concatenate([[0], np.flatnonzero(gap | (np.diff(order) != 1)) + 1, [s.size]])
    return order, run, seg


@define(eq=False, on_setattr=setters.NO_OP)
class DiskTier(SlotTier):
    """Slots in a file under ``directory`` (``None``: a private temporary directory, removed on close
    and at interpreter exit).

    ``checksum``: ``"pos64"`` (default), ``"crc32"`` or ``"sum64"``; ``read_hints``: ask the kernel to
    read each contiguous run ahead (``POSIX_FADV_WILLNEED``; helps cold reads, one syscall per run).
    """

    directory: Path | None = field(kw_only=True, default=None, converter=lambda p: None if p is None else
                                   p if isinstance(p, Path) else _directory(p))
    checksum: str = field(kw_only=True, default=DEFAULT_CHECKSUM)
    read_hints: bool = field(kw_only=True, default=True)
    path: Path | None = field(init=False, default=None)
    removed_stale: list[Path] = field(init=False, factory=list)  # stale files removed at start
    _fd: int = field(init=False, default=-1)
    _file_slots: int = field(init=False, default=0)  # slots whose bytes are reserved in the file
    _sums: np.ndarray = field(init=False, factory=lambda: np.zeros(0, dtype=np.uint64))
    _own_dir: bool = field(init=False, default=False)
    _checksum_fn: Any = field(init=False, default=None)
    _finalizer: Any = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._checksum_fn = get_checksum(self.checksum)
        dir_fd = -1
        if self.directory is None:
            self.removed_stale = disk_files.sweep_private_dirs()
            self.directory, dir_fd = disk_files.make_private_dir()
            self._own_dir = True
        directory = self.directory
        if not directory.exists():
            raise StorageError(f"disk tier directory {str(directory)!r} does not exist")
        if not directory.is_dir():
            raise StorageError(f"disk tier directory {str(directory)!r} is not a directory")
        self.path = directory / f"icecache-{os.getpid()}-{secrets.token_hex(4)}.pages"
        try:
            held = contextlib.nullcontext() if self._own_dir else disk_files.directory_locked(directory)
            with held:  # NOTE: sweep and create under one lock: a sweeper never sees an unlocked new file
                self.removed_stale += disk_files.sweep_stale_pages(directory)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if dir_fd >= 0:
                os.close(dir_fd)
            raise StorageError(f"disk tier directory {str(directory)!r} is not writable: "
                               f"{exc.strerror or exc}") from None
        self._finalizer = weakref.finalize(self, _cleanup, self._fd, str(self.path), dir_fd,
                                           str(directory) if self._own_dir else None)

    # ----- memory --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def memory_kind(self) -> str:
        return "file"

    def details(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "path": str(self.path), "checksum": self.checksum,
                "file_bytes": self._file_slots * self.spec.page_nbytes}

    def resize_storage(self, num_slots: int) -> None:
        # NOTE: bookkeeping only; file bytes are reserved in _take_slots for the slots actually taken.
        self._sums = np.concatenate([self._sums, np.zeros(num_slots - self._sums.size, dtype=np.uint64)])

    def _take_slots(self, n: int) -> np.ndarray:
        slots = super()._take_slots(n)
        top = int(slots.max()) + 1 if slots.size else 0
        if top <= self._file_slots:
            return slots
        try:
            self._grow_file(top)
        except DiskFullError:
            inside = np.flatnonzero(self._state[: self._file_slots] == FREE)
            if inside.size >= n:  # the disk is full, the file is not: use its holes
                return inside[:n].copy()
            raise
        return slots

    def _grow_file(self, num_slots: int) -> None:
        fd = self._open_fd()
        nb = self.spec.page_nbytes
        old, new = self._file_slots * nb, num_slots * nb
        try:
            reserve_space(fd, old, new - old)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, old)  # NOTE: drop whatever a failed reservation left behind
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"disk tier {self.name!r}: no space left in {str(self.directory)!r} to grow "
                    f"{self.path.name} from {old} to {new} bytes"
                ) from None
            raise StorageError(f"disk tier {self.name!r}: cannot grow {str(self.path)!r}: {exc}") from None
        self._file_slots = num_slots

    # ----- data ----------------------------------------------------------------------------------
    def read(self, slots: Tensor, *, out: Tensor | None = None) -> Tensor:
        """Gather ``[n, 2, S, D]`` with one ``preadv`` per contiguous run and verify every checksum."""
        fd = self._open_fd()
        s = torch.as_tensor(slots).numpy()
        direct = out is not None and out.device.type == "cpu" and out.is_contiguous() \
            and out.dtype == self.spec.dtype
        buf = out if direct else self.spec.empty(s.size)
        if s.size:
            self._io(fd, s, buf, write=False)
            self._verify(s, buf)
        if out is None or direct:
            return buf
        return out.copy_(buf)

    def write(self, slots: Tensor, records: Tensor) -> None:
        """Scatter ``records`` with one ``pwritev`` per contiguous run; checksums recorded after."""
        fd = self._open_fd()
        s = torch.as_tensor(slots).numpy()
        records = records.to("cpu", self.spec.dtype).contiguous()
        if s.size:
            if int(s.max()) >= self._file_slots:
                raise StorageError(f"disk tier {self.name!r}: slot {int(s.max())} was not reserved "
                                   f"(the file holds {self._file_slots} slots); call prepare_store first")
            self._io(fd, s, records, write=True)
            self._sums[s] = self._checksum_fn(records, page_keys(self._page_of[s], s))

    def view(self, start: int, stop: int) -> None:
        return None

    def _io(self, fd: int, slots: np.ndarray, buf: Tensor, *, write: bool) -> None:
        nb = self.spec.page_nbytes
        rows = buf.view(torch.uint8).reshape(slots.size, nb).numpy()  # [n, bytes], shares memory
        order, run, seg = _runs(slots)
        spans = list(zip(run[:-1].tolist(), run[1:].tolist(), strict=True))
        if self.read_hints and not write and len(spans) > 1:
            for a, b in spans:  # NOTE: all runs first, so the kernel reads them while we wait on one
                os.posix_fadvise(fd, int(slots[order[a]]) * nb, (b - a) * nb, os.POSIX_FADV_WILLNEED)
        k = 0  # next segment
        for a, b in spans:
            offset = int(slots[order[a]]) * nb
            views = []
            while seg[k] < b:
                first, count = int(order[seg[k]]), int(seg[k + 1] - seg[k])
                views.append(memoryview(rows[first:first + count]).cast("B"))
                k += 1
            for i in range(0, len(views), IOV_MAX):
                part = views[i:i + IOV_MAX]
                offset += self._transfer(fd, part, offset, write)

    def _transfer(self, fd: int, views: list[memoryview], offset: int, write: bool) -> int:
        want = sum(v.nbytes for v in views)
        try:
            done = os.pwritev(fd, views, offset) if write else os.preadv(fd, views, offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk tier {self.name!r}: no space left in {str(self.directory)!r} "
                                    f"writing {want} bytes at {offset} of {self.path.name}") from None
            raise StorageError(f"disk tier {self.name!r}: {'write' if write else 'read'} of {want} bytes "
                               f"at {offset} of {str(self.path)!r} failed: {exc}") from None
        if done != want:
            if not write:
                raise StorageError(
                    f"disk tier {self.name!r}: {str(self.path)!r} is shorter than its pages: read {done} of "
                    f"{want} bytes at offset {offset} (file size {os.fstat(fd).st_size}); was it truncated?")
            # NOTE: a short write with space reserved: finish it through the plain path
            rest = b"".join(bytes(v) for v in views)[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + done)
                if n <= 0:
                    raise DiskFullError(f"disk tier {self.name!r}: short write to {str(self.path)!r}")
                done, rest = done + n, rest[n:]
        return want

    def _verify(self, slots: np.ndarray, records: Tensor) -> None:
        got = self._checksum_fn(records, page_keys(self._page_of[slots], slots))
        bad = got != self._sums[slots]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            slot = int(slots[i])
            raise ChecksumError(
                f"page {int(self._page_of[slot])} (slot {slot}, bytes {slot * self.spec.page_nbytes}+"
                f"{self.spec.page_nbytes} of {str(self.path)!r}) failed its {self.checksum} checksum: "
                f"stored {int(self._sums[slot]):#x}, read {int(got[i]):#x}"
            )

    def _open_fd(self) -> int:
        if self._fd < 0:
            raise StorageError(f"disk tier {self.name!r} is closed")
        return self._fd

    # ----- file management -----------------------------------------------------------------------
    def flush(self) -> None:
        """``fsync`` the page file."""
        os.fsync(self._open_fd())

    def drop_page_cache(self) -> None:
        """Flush and ask the kernel to drop the file's cached pages: the next reads come from the disk
        (what ``icecache bench transfer`` calls a cold read)."""
        self.flush()
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Close and delete the file (and the directory when the tier created it)."""
        self._fd = -1
        if self._finalizer is not None:
            self._finalizer()

    @classmethod
    def from_config(cls, config: CacheConfig, *, name: str = "disk", capacity: int | None = None,
                    head_dim: int | None = None, directory: str | os.PathLike[str] | None = None,
                    eviction: str | None = None, checksum: str = DEFAULT_CHECKSUM,
                    read_hints: bool = True) -> DiskTier:
        """``config.tiers.disk_pages`` slots (``capacity`` overrides) in ``config.tiers.disk_dir``
        (``directory`` overrides; neither: a private temporary directory)."""
        return cls(name=name, spec=spec_from_config(config, head_dim),
                   capacity=config.tiers.disk_pages if capacity is None else capacity,
                   eviction=eviction or config.tiers.eviction,
                   directory=config.tiers.disk_dir if directory is None else directory,
                   checksum=checksum, read_hints=read_hints)


def _directory(value: Any) -> Path:
    # NOTE: Path("") is "."; an empty name would put page files in the working directory.
    if not str(value).strip():
        raise StorageError("disk tier directory is empty; give a directory, or None for a private one")
    return Path(value)


def _cleanup(fd: int, path: str, dir_fd: int, own_dir: str | None) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)  # drops the page file's lock
    if own_dir is not None:
        shutil.rmtree(own_dir, ignore_errors=True)
    if dir_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(dir_fd)
