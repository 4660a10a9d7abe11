"""Faults injected into the disk tier's real files: truncation, deletion, corruption, a full disk,
dead owners. Each asserts the failure and its message; none may kill the process (no SIGBUS)."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.errors import ChecksumError, DiskFullError, StorageError
from icecache.storage import disk as disk_module
from icecache.storage import disk_files
from icecache.storage.checksum import crc32, page_keys, pos64, sum64
from icecache.storage.disk import DiskTier
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore
from icecache.testing.strategies.tiers import bits, random_records

SPEC = PageSpec(page_size=16, head_dim=64, dtype=torch.float16)  # 4 KiB pages


def _store(directory, n=8, seed=0, **kw):
    tier = DiskTier(name="disk", spec=SPEC, directory=directory, **kw)
    store = TieredStore([tier])
    ids = store.allocate(n)
    records = random_records(SPEC, n, seed)
    store.write_pages(ids, records[:, 0], records[:, 1])
    return tier, store, ids, records


def _run(code, **env):
    """Run ``code`` in a fresh interpreter; a SIGBUS shows as returncode -7 instead of killing pytest."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, f"rc={done.returncode} (SIGBUS is -{signal.SIGBUS})\n{done.stderr[-3000:]}"
    return done.stdout


# ----- truncation and deletion ----------------------------------------------------------------------------
def test_a_truncated_file_is_a_clear_error_not_sigbus(tmp_path):
    out = _run(f"""
        import os, torch
        from icecache.storage.disk import DiskTier
        from icecache.storage.layout import PageSpec
        from icecache.storage.store import TieredStore
        spec = PageSpec(page_size=16, head_dim=64, dtype=torch.float16)
        tier = DiskTier(name="disk", spec=spec, directory={str(tmp_path)!r})
        store = TieredStore([tier])
        ids = store.allocate(8)
        store.write_pages(ids, torch.ones(8, 16, 64).half(), torch.ones(8, 16, 64).half())
        os.truncate(tier.path, 3 * spec.page_nbytes + 100)   # behind the tier's back
        try:
            store.read_pages(ids)
        except Exception as exc:
            print(type(exc).__name__, exc)
        k, _, _ = store.read_pages(ids[:3])                  # the pages still in the file read fine
        print("first three", bool((k == 1).all()))
    """)
    assert "StorageError disk tier 'disk':" in out and "is shorter than its pages" in out
    assert "was it truncated?" in out and "first three True" in out


def test_a_deleted_file_keeps_working_until_close(tmp_path):
    tier, store, ids, records = _store(tmp_path)
    os.unlink(tier.path)
    more = store.allocate(4)
    extra = random_records(SPEC, 4, 9)
    store.write_pages(more, extra[:, 0], extra[:, 1])  # grows the unlinked file through its descriptor
    k, v, _ = store.read_pages(torch.cat([ids, more]))
    assert torch.equal(bits(k), bits(torch.cat([records[:, 0], extra[:, 0]])))
    assert torch.equal(bits(v), bits(torch.cat([records[:, 1], extra[:, 1]])))
    assert not tier.path.exists()
    store.close()


def test_deleted_file_then_a_full_disk_is_disk_full_not_sigbus(tmp_path, tmpfs):
    """The reported crash: unlink the page file, fill the disk, keep storing."""
    mount = tmpfs(size="256k")
    if mount is None:
        pytest.skip("cannot mount a tmpfs here (not root); the ENOSPC fallback test covers the logic")
    out = _run(f"""
        import os, torch
        from icecache.storage.disk import DiskTier
        from icecache.storage.layout import PageSpec
        from icecache.storage.store import TieredStore
        spec = PageSpec(page_size=16, head_dim=64, dtype=torch.float16)
        tier = DiskTier(name="disk", spec=spec, directory={str(mount)!r})
        store = TieredStore([tier])
        ids = store.allocate(4)
        store.write_pages(ids, torch.ones(4, 16, 64).half(), torch.ones(4, 16, 64).half())
        os.unlink(tier.path)
        fd = os.open(os.path.join({str(mount)!r}, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        try:
            for _ in range(100):
                more = store.allocate(8)
                store.write_pages(more, torch.ones(8, 16, 64).half(), torch.ones(8, 16, 64).half())
        except Exception as exc:
            print(type(exc).__name__, exc)
        print("still", int(store.read_pages(ids)[0].sum()))
    """)
    assert "DiskFullError disk tier 'disk': no space left in" in out, out
    assert f"still {4 * 16 * 64}" in out


def test_closed_tier_refuses_reads_and_writes(tmp_path):
    tier, store, ids, _ = _store(tmp_path)
    slots = tier.slot_of(ids)
    tier.close()
    with pytest.raises(StorageError, match="disk tier 'disk' is closed"):
        tier.read(slots)
    with pytest.raises(StorageError, match="is closed"):
        tier.write(slots, SPEC.empty(len(ids)))


# ----- corruption ------------------------------------------------------------------------------------------
def _damage(tier, slot, edit):
    tier.flush()
    nb = SPEC.page_nbytes
    with open(tier.path, "r+b") as f:
        f.seek(slot * nb)
        record = bytearray(f.read(nb))
        edit(record)
        f.seek(slot * nb)
        f.write(bytes(record))


def _swap_halves(r):
    half = len(r) // 2
    r[:half], r[half:] = r[half:], r[:half]


def _swap_words(r):
    r[0:8], r[8:16] = r[8:16], r[0:8]


def _flip_bit(r):
    r[1234] ^= 0x01


CORRUPTIONS = {"flipped bit": _flip_bit, "K and V halves swapped": _swap_halves,
               "two words swapped": _swap_words}


@pytest.mark.parametrize("checksum", ["pos64", "crc32"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corruption_in_the_file_is_caught_naming_the_page(tmp_path, checksum, corruption):
    tier, store, ids, records = _store(tmp_path, checksum=checksum)
    slot = int(tier.slot_of(ids[5:6]))
    _damage(tier, slot, CORRUPTIONS[corruption])
    where = rf"page {int(ids[5])} \(slot {slot}, bytes {slot * SPEC.page_nbytes}\+{SPEC.page_nbytes} of "
    with pytest.raises(ChecksumError, match=where + rf".*failed its {checksum} checksum"):
        store.read_pages(ids)
    k, _, _ = store.read_pages(ids[:5])
    assert torch.equal(bits(k), bits(records[:5, 0]))
    store.close()


def test_a_record_in_another_pages_slot_is_caught(tmp_path):
    """Intact bytes at the wrong place (a write at the wrong offset): the key (page id, slot) differs."""
    tier, store, ids, _ = _store(tmp_path)
    a, b = (int(s) for s in tier.slot_of(ids[1:3]))
    tier.flush()
    nb = SPEC.page_nbytes
    with open(tier.path, "r+b") as f:
        f.seek(a * nb)
        record = f.read(nb)
        f.seek(b * nb)
        f.write(record)  # page 1's record now also sits in page 2's slot
    with pytest.raises(ChecksumError, match=f"page {int(ids[2])} "):
        store.read_pages(ids[2:3])
    store.close()


def test_the_old_default_missed_swapped_words():
    """Why pos64 is the default: a plain word sum cannot see a transposition."""
    records = random_records(SPEC, 1, 3)
    keys = page_keys(np.array([7]), np.array([2]))
    swapped = records.clone()
    raw, old = swapped.view(torch.uint8).view(-1), records.view(torch.uint8).view(-1)
    raw[:8], raw[8:16] = old[8:16].clone(), old[:8].clone()
    assert not torch.equal(bits(swapped), bits(records))
    assert sum64(swapped, keys) == sum64(records, keys)
    assert pos64(swapped, keys) != pos64(records, keys) and crc32(swapped, keys) != crc32(records, keys)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_pos64_catches_any_one_word_change_and_any_word_swap(seed, data):
    records = random_records(SPEC, 1, seed)
    words = records.view(torch.int64).view(-1)
    keys = page_keys(np.array([3]), np.array([5]))
    base = pos64(records, keys)
    i = data.draw(st.integers(0, words.numel() - 1), label="word")
    changed = records.clone()
    changed.view(torch.int64).view(-1)[i] ^= data.draw(st.integers(1, 2**63 - 1), label="xor")
    assert pos64(changed, keys) != base
    other = st.integers(0, words.numel() - 1).filter(lambda j: int(words[j]) != int(words[i]))
    j = data.draw(other, label="j")
    swapped = records.clone()
    flat = swapped.view(torch.int64).view(-1)
    flat[i], flat[j] = words[j].clone(), words[i].clone()
    assert pos64(swapped, keys) != base
    other_id = page_keys(np.array([data.draw(st.integers(0, 10**6).filter(lambda x: x != 3))]), np.array([5]))
    assert pos64(records, other_id) != base  # the same bytes under another page id


# ----- a full disk -----------------------------------------------------------------------------------------
def _fill_until_full(store, batch=8):
    written = []
    while True:
        ids = store.allocate(batch)
        records = random_records(SPEC, batch, len(written))
        try:
            store.write_pages(ids, records[:, 0], records[:, 1])
        except DiskFullError as exc:
            store.free(ids)
            return written, exc
        written.append((ids, records))


def _check_full(tier, store, written, exc, free_bytes):
    assert "no space left in" in str(exc)
    size = tier.path.stat().st_size
    assert size == tier.stats().details["file_bytes"]  # the failed growth left nothing behind
    assert free_bytes() < 8 * SPEC.page_nbytes  # the request really did not fit (no doubling)
    for ids, records in written:  # everything stored before reads back
        k, v, _ = store.read_pages(ids)
        assert torch.equal(bits(k), bits(records[:, 0])) and torch.equal(bits(v), bits(records[:, 1]))
    store.free(written[0][0])  # holes in the file: stores fit again although the disk is full
    ids = store.allocate(8)
    records = random_records(SPEC, 8, 99)
    store.write_pages(ids, records[:, 0], records[:, 1])
    assert tier.path.stat().st_size == size
    assert torch.equal(bits(store.read_pages(ids)[0]), bits(records[:, 0]))


def test_enospc_on_a_real_tmpfs(tmpfs):
    mount = tmpfs(size="1600k")
    if mount is None:
        pytest.skip("cannot mount a tmpfs here (not root); test_enospc_fallback covers the logic")
    tier = DiskTier(name="disk", spec=SPEC, directory=mount)
    store = TieredStore([tier])
    written, exc = _fill_until_full(store)
    stat = os.statvfs(mount)
    assert len(written) * 8 * SPEC.page_nbytes > 1200 * 1024  # most of the 1600 KiB was used
    _check_full(tier, store, written, exc, lambda: os.statvfs(mount).f_bavail * stat.f_frsize)
    store.close()


def test_enospc_fallback(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: a file system of ``LIMIT`` bytes, enforced where the tier asks for
    space (``reserve_space``, the one call that can raise ENOSPC)."""
    limit = 50 * SPEC.page_nbytes
    real = disk_module.reserve_space

    def limited(fd, offset, length):
        if offset + length > limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, length)

    monkeypatch.setattr(disk_module, "reserve_space", limited)
    tier = DiskTier(name="disk", spec=SPEC, directory=tmp_path)
    store = TieredStore([tier])
    written, exc = _fill_until_full(store)
    assert len(written) == 6  # 48 of the 50 pages: no doubling stopped it early
    _check_full(tier, store, written, exc, lambda: limit - tier.path.stat().st_size)
    store.close()


# ----- dead owners -----------------------------------------------------------------------------------------
OWNER = """
import sys, time, torch
from icecache.storage.disk import DiskTier
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore
tier = DiskTier(name="disk", spec=PageSpec(page_size=4, head_dim=8, dtype=torch.float16),
                directory=None if sys.argv[1] == "private" else sys.argv[1])
store = TieredStore([tier])
ids = store.allocate(4)
store.write_pages(ids, torch.ones(4, 4, 8).half(), torch.ones(4, 4, 8).half())
print(tier.path, flush=True)
time.sleep(60)
"""


def _owner(where, sig, env=None):
    proc = subprocess.Popen([sys.executable, "-c", OWNER, where], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    path = proc.stdout.readline().strip()
    assert path.endswith(".pages"), path
    return proc, path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_page_files_of_dead_processes_are_removed_at_start(tmp_path, sig):
    live, live_path = _owner(str(tmp_path), sig)
    dead, dead_path = _owner(str(tmp_path), sig)
    try:
        dead.send_signal(sig)
        dead.wait(30)
        assert os.path.exists(dead_path)  # the signal skipped every cleanup: the file is orphaned
        tier = DiskTier(name="disk", spec=SPEC, directory=tmp_path)
        assert [str(p) for p in tier.removed_stale] == [dead_path]
        assert not os.path.exists(dead_path) and os.path.exists(live_path)  # a live owner's file stays
        tier.close()
    finally:
        live.kill()
        live.wait()


def test_a_dead_processes_private_directory_is_removed(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    proc, path = _owner("private", signal.SIGKILL, env={"TMPDIR": str(tmp_path)})
    private = os.path.dirname(path)
    assert os.path.basename(private).startswith(disk_files.PRIVATE_PREFIX)
    assert disk_files.sweep_private_dirs(tmp_path) == []  # alive: its directory lock is held
    proc.kill()
    proc.wait()
    tier = DiskTier(name="disk", spec=SPEC)  # no directory: sweeps the temp directory first
    assert [str(p) for p in tier.removed_stale] == [private] and not os.path.exists(private)
    mine = tier.directory
    tier.close()
    assert not mine.exists()


def test_an_unlocked_file_of_a_live_pid_is_kept(tmp_path):
    """Files of older versions are not locked: the pid in the name keeps a live owner's file."""
    (tmp_path / f"icecache-{os.getppid()}-abcd.pages").write_bytes(b"x")
    (tmp_path / "icecache-999999999-abcd.pages").write_bytes(b"x")  # no such pid
    tier = DiskTier(name="disk", spec=SPEC, directory=tmp_path)
    assert [p.name for p in tier.removed_stale] == ["icecache-999999999-abcd.pages"]
    assert (tmp_path / f"icecache-{os.getppid()}-abcd.pages").exists()
    tier.close()


def test_private_directory_is_removed_at_interpreter_exit(tmp_path):
    out = _run("""
        import torch
        from icecache.storage.disk import DiskTier
        from icecache.storage.layout import PageSpec
        tier = DiskTier(name="disk", spec=PageSpec(page_size=4, head_dim=8, dtype=torch.float16))
        print(tier.directory)
        # no close(): the finalizer runs at exit
    """, TMPDIR=str(tmp_path))
    assert out.strip().startswith(str(tmp_path)) and not os.path.exists(out.strip())


def test_empty_directory_name_is_refused(tmp_path):
    from icecache.core.config import TierConfig
    from icecache.core.errors import ConfigError

    with pytest.raises(StorageError, match="disk tier directory is empty"):
        DiskTier(name="disk", spec=SPEC, directory="")
    with pytest.raises(ConfigError, match="disk_dir is empty"):
        TierConfig(disk_dir="")
