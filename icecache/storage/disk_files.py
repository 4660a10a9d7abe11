"""Page files of the disk tier on the file system: ownership, stale-file cleanup, private directories.

* Each page file ``icecache-<pid>-<token>.pages`` is ``flock``-ed by its tier for as long as it is
  open; the kernel drops the lock when the process ends, however it ends (SIGKILL included). A page
  file is **stale** when its lock can be taken *and* the pid in its name is not a live process (the
  pid covers files of older versions, which did not lock); stale files are removed at start.
* The directory itself is ``flock``-ed (no lock file is left behind) around the sweep and the
  creation of a new file, so a sweeping process never sees a new file before its owner locked it.
* A private directory (``icecache-disk-*`` in the system temp directory, made when no directory is
  given) stays locked by its tier for its whole life; one whose lock is free and whose page files
  are all stale is removed whole at the next start (one just made, and not yet locked, is spared for
  a minute).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PRIVATE_PREFIX = "icecache-disk-"
PAGE_GLOB = "icecache-*.pages"
_PID = re.compile(r"icecache-(\d+)-")
#: an unlocked private directory without page files is left alone this long (it may be being set up)
SETUP_GRACE_S = 60.0


def _lock_free(path: Path) -> bool:
    """True when ``path``'s ``flock`` can be taken now (nobody holds it); False when held or gone."""
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale(page_file: Path) -> bool:
    """No live process owns ``page_file``: its lock is free and the pid in its name is gone."""
    match = _PID.match(page_file.name)
    if match and pid_alive(int(match.group(1))) and int(match.group(1)) != os.getpid():
        return False
    return _lock_free(page_file)


def lock_directory(directory: Path) -> int:
    """``flock`` ``directory`` (waits while a sweep or a creation is in progress); returns the fd."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
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
    """Remove the stale page files in ``directory`` (call with the directory locked)."""
    removed = []
    for path in sorted(directory.glob(PAGE_GLOB)):
        if is_stale(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def sweep_private_dirs(root: Path | None = None) -> list[Path]:
    """Remove private tier directories under ``root`` (default: the system temp directory) that no
    live process owns."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for directory in sorted(root.glob(PRIVATE_PREFIX + "*")):
        if directory.is_symlink() or not directory.is_dir() or not _lock_free(directory):
            continue
        pages = list(directory.glob(PAGE_GLOB))
        if not pages:
            try:
                if time.time() - directory.stat().st_mtime < SETUP_GRACE_S:
                    continue
            except OSError:
                continue
        if all(is_stale(p) for p in pages):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def make_private_dir() -> tuple[Path, int]:
    """A new private directory and the fd of its lock, held until the tier closes."""
    directory = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
    return directory, lock_directory(directory)
