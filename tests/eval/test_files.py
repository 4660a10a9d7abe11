"""Atomic writes with unique temp names, and the writer lock, under concurrency."""

import json
import os
import threading

import pytest

from icecache.core.errors import ConfigError
from icecache.eval.files import OutputLock, write_atomic


def test_concurrent_atomic_writers_never_collide_or_tear(tmp_path):
    """The fixed ``out.json.tmp`` name made racing writers fail with FileNotFoundError."""
    path = tmp_path / "out.json"
    errors = []

    def writer(n):
        try:
            for i in range(40):
                write_atomic(path, json.dumps({"writer": n, "i": i, "pad": "x" * 20000}))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for _ in range(200):  # a reader never sees a torn file
        if path.exists():
            assert json.loads(path.read_text())["pad"] == "x" * 20000
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_keeps_a_plain_files_mode(tmp_path):
    path = tmp_path / "r.json"
    write_atomic(path, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    os.chmod(path, 0o640)
    write_atomic(path, "{}")
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_the_lock_refuses_a_second_holder_and_cleans_up(tmp_path):
    target = tmp_path / "new" / "deeper" / "r.json"
    first = OutputLock(target).acquire()
    holder = rf"is being written by another icecache process \(pid {os.getpid()}"
    with pytest.raises(ConfigError, match=holder):
        OutputLock(target).acquire()  # flock locks are per open file: refused within one process too
    first.release()
    assert not (tmp_path / "new").exists()  # the directories made for the lock went with it
    with OutputLock(target):
        write_atomic(target, "{}")
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]


def test_a_lock_file_replaced_under_the_taker_is_retaken(tmp_path, monkeypatch):
    """Between our open and flock the previous holder may remove the file; we must lock the new one."""
    import fcntl

    target = tmp_path / "r.json"
    real = fcntl.flock
    calls = {"n": 0}

    def flock(fd, op):
        calls["n"] += 1
        if calls["n"] == 1:  # the file we opened is removed and replaced before we lock it
            os.unlink(str(target) + ".lock")
            open(str(target) + ".lock", "w").close()
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    lock = OutputLock(target).acquire()
    assert calls["n"] == 2
    assert os.fstat(lock._fd).st_ino == os.stat(lock.path).st_ino
    lock.release()
