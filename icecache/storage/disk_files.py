"""Page files of the disk tier on the file system: ownership, stale-file cleanup, private directories.

* Each page file ``icecache-<pid>-<token>.pages`` is ``flock``-ed by its tier for as long as it is
  open. The kernel drops the lock when the process ends however it ends (SIGKILL included), so a
  page file whose lock can be taken has no live owner: it is stale and removed.
* ``<dir>/.icecache-disk.lock`` (holding the pid of the last process that took it) serializes the
  sweep with file creation: a new file is created and locked while the directory lock is held, so a
  sweeping process never sees a file whose owner has not locked it yet.
* A private directory (``icecache-disk-*`` in the system temp directory, made when no directory is
  given) is locked by its tier for its whole life; one whose lock is free is removed whole at the next
  start. One without a lock file (made by an older version) goes once its page files are all free and
  it is older than a minute.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DIR_LOCK = ".icecache-disk.lock"
PRIVATE_PREFIX = "icecache-disk-"
PAGE_GLOB = "icecache-*.pages"
#: a private directory without a lock file is left alone this long (it may be being set up)
SETUP_GRACE_S = 60.0


def _free(path: Path) -> bool:
    """True when ``path``'s ``flock`` can be taken (no live owner); False when held or gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def lock_directory(directory: Path) -> int:
    """Take ``directory``'s lock (waits for a sweep or a creation in progress) and return its fd."""
    fd = os.open(directory / DIR_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def directory_locked(directory: Path) -> Iterator[None]:
    fd = lock_directory(directory)
    try:
        yield
    finally:
        os.close(fd)


def sweep_stale_pages(directory: Path) -> list[Path]:
    """Remove page files in ``directory`` whose owner is gone (call with the directory lock held)."""
    removed = []
    for path in sorted(directory.glob(PAGE_GLOB)):
        if _free(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def sweep_private_dirs(root: Path | None = None) -> list[Path]:
    """Remove private tier directories under ``root`` (the system temp directory) left by dead
    processes."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for directory in sorted(root.glob(PRIVATE_PREFIX + "*")):
        if directory.is_symlink() or not directory.is_dir():
            continue
        lock = directory / DIR_LOCK
        if lock.exists():
            stale = _free(lock)
        else:
            try:
                old = time.time() - directory.stat().st_mtime > SETUP_GRACE_S
            except OSError:
                continue
            stale = old and all(_free(p) for p in directory.glob(PAGE_GLOB))
        if stale:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def make_private_dir() -> tuple[Path, int]:
    """A new private directory and the fd of its lock, held until the tier closes."""
    directory = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
    return directory, lock_directory(directory)
