"""Result files: output paths checked before any work, atomic writes, one writer per output.

* :func:`check_output_file` / :func:`check_output_dir` raise :class:`ConfigError` naming the path when
  it cannot be written (a directory given as a file, a path inside a file, a read-only directory...).
  Writability is tested for real: a probe file is created in the nearest existing directory and
  removed (``os.access`` is wrong for root, read-only mounts and ACLs). Nothing is left behind.
* :func:`write_atomic` writes a unique temp file in the target's directory, fsyncs it and renames it
  over the target (``os.replace``): a reader, a crash or a second writer sees the old or the new file,
  never a mix.
* :class:`OutputLock` is an advisory ``flock`` on ``PATH.lock`` held while a command writes ``PATH``:
  a second process is refused with the holder's pid. The kernel drops the lock when the holder dies
  (even by SIGKILL), so a stale lock file never blocks a later run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

from icecache.core.errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if os.path.lexists(parent):
            return parent
    return Path(".")


def _probe(directory: Path, flag: str, path: str | os.PathLike[str]) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".icecache-probe-")
    except OSError as exc:
        raise ConfigError(f"{flag} {str(path)!r}: cannot write in {str(directory)!r} "
                          f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


def _check_parent(path: Path, flag: str) -> None:
    """The directory that will hold ``path`` exists or can be made, and is writable."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is inside {str(ancestor)!r}, which is not a directory")
    _probe(ancestor, flag, path)


def check_output_file(path: str | os.PathLike[str], flag: str = "--json") -> Path:
    """``path`` can be written as a regular file (its parent is made later, at the first write)."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; give a file name")
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a directory; give a file name inside it")
    if os.path.lexists(p) and not p.is_file():
        raise ConfigError(f"{flag} {str(path)!r} exists and is not a regular file")
    _check_parent(p, flag)
    return p


def check_output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``path`` is (or can be made) a writable directory."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; give a directory")
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} exists and is not a directory")
    if p.is_dir():
        _probe(p, flag, path)
    else:
        _check_parent(p, flag)
    return p


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (unique temp name beside it; parents made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))  # NOTE: mkstemp makes 0600; keep what a plain write would give
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


class OutputLock:
    """``flock`` on ``<path>.lock``, taken without waiting; :class:`ConfigError` names the holder.

    NOTE: the lock file is removed on release; a taker checks that the file it locked is still the one
    at the path (an earlier holder may have removed it meanwhile) and retries otherwise.
    """

    def __init__(self, path: str | os.PathLike[str], flag: str = "--json"):
        self.target = Path(path)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.flag = flag
        self._fd = -1
        self._made: list[Path] = []  # directories made for the lock, removed on release when empty

    def acquire(self) -> OutputLock:
        self._made = [p for p in (self.path.parent, *self.path.parent.parents) if not os.path.lexists(p)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(
                    f"{self.flag} {str(self.target)!r} is being written by another icecache process "
                    f"(pid {holder}, lock {str(self.path)!r}); wait for it to finish or write elsewhere"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)  # removed by the previous holder between our open and flock: take the new one
        raise ConfigError(f"cannot take the lock {str(self.path)!r}: it keeps being replaced")

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)  # closing drops the flock
        self._fd = -1
        for directory in self._made:  # deepest first; one holding results is not empty and stays
            try:
                directory.rmdir()
            except OSError:
                break

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
