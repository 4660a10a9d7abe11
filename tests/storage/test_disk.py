import errno
import os
import sys

import pytest
import torch

from icecache.core.errors import ChecksumError, DiskFullError, PageError, StorageError
from icecache.storage import disk as disk_module
from icecache.storage.device import DeviceTier
from icecache.storage.disk import DiskTier
from icecache.storage.host import HostTier
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore
from icecache.testing.strategies.tiers import bits, random_records

SPEC = PageSpec(page_size=4, head_dim=8, dtype=torch.float16)


def _kv(n, seed):
    r = random_records(SPEC, n, seed)
    return r[:, 0], r[:, 1]


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(StorageError, match="nope.*does not exist"):
        DiskTier(name="disk", spec=SPEC, directory=missing)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(StorageError, match="afile.*is not a directory"):
        DiskTier(name="disk", spec=SPEC, directory=afile)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_directory_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StorageError, match="locked.*is not writable"):
        DiskTier(name="disk", spec=SPEC, directory=locked)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.access("/sys", os.W_OK) and os.geteuid() != 0,
                    reason="needs Linux sysfs")
def test_directory_where_files_cannot_be_created_is_named():
    # NOTE: sysfs refuses new files even to root, so this runs where the chmod test cannot.
    with pytest.raises(StorageError, match="'/sys' is not writable"):
        DiskTier(name="disk", spec=SPEC, directory="/sys")


def test_pages_live_in_a_real_file_removed_on_close(tmp_path):
    tier = DiskTier(name="disk", spec=SPEC, directory=tmp_path)
    store = TieredStore([tier])
    ids = store.allocate(3)
    k, v = _kv(3, 0)
    store.write_pages(ids, k, v)
    path = tier.path
    assert path.parent == tmp_path and path.stat().st_size >= 3 * SPEC.page_nbytes
    tier.flush()
    raw = path.read_bytes()
    slot = int(tier.slot_of(ids[1:2]))
    record = raw[slot * SPEC.page_nbytes:(slot + 1) * SPEC.page_nbytes]
    assert record == bits(torch.stack([k[1], v[1]])).numpy().tobytes()
    store.close()
    assert not path.exists()


def test_private_directory_is_removed_on_close():
    tier = DiskTier(name="disk", spec=SPEC)
    directory = tier.directory
    assert directory.is_dir()
    tier.close()
    assert not directory.exists()


@pytest.mark.parametrize("checksum", ["sum64", "crc32"])
def test_a_flipped_byte_in_the_file_is_detected_on_read(tmp_path, checksum):
    tier = DiskTier(name="disk", spec=SPEC, directory=tmp_path, checksum=checksum)
    store = TieredStore([tier])
    ids = store.allocate(4)
    store.write_pages(ids, *_kv(4, 1))
    tier.flush()
    slot = int(tier.slot_of(ids[2:3]))
    offset = slot * SPEC.page_nbytes + 37
    with open(tier.path, "r+b") as f:  # the real file, behind the mapping's back
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ChecksumError, match=rf"page {int(ids[2])} \(slot {slot}.*failed its {checksum}"):
        store.read_pages(ids)
    assert torch.equal(bits(store.read_pages(ids[:2])[0]), bits(_kv(4, 1)[0][:2]))  # the others still read
    store.close()


def test_a_corrupt_page_fails_the_load_and_leaves_no_device_slot(tmp_path):
    device = DeviceTier(name="device", spec=SPEC, capacity=4)
    disk = DiskTier(name="disk", spec=SPEC, directory=tmp_path)
    store = TieredStore([device, disk])
    ids = store.allocate(2)
    store.write_pages(ids, *_kv(2, 2))
    disk.flush()
    with open(disk.path, "r+b") as f:
        f.seek(int(disk.slot_of(ids[:1])) * SPEC.page_nbytes)
        f.write(b"\xff\xff")
    with pytest.raises(ChecksumError, match=f"page {int(ids[0])}"):
        store.load(ids)
    assert device.resident_ids().numel() == 0 and device.free_slots == 4
    store.close()


def test_disk_full_raises_with_host_and_device_intact(tmp_path, monkeypatch):
    device = DeviceTier(name="device", spec=SPEC, capacity=2)
    host = HostTier(name="host", spec=SPEC, capacity=4)
    disk = DiskTier(name="disk", spec=SPEC, directory=tmp_path)  # unbounded: grows its file
    store = TieredStore([device, host, disk])
    first = store.allocate(4 + 64)  # fills the host and the disk's first 64 slots
    k0, v0 = _kv(68, 3)
    store.write_pages(first, k0, v0)
    store.load(first[-2:])
    file_size = disk.path.stat().st_size
    before = {t.name: t.resident_ids().tolist() for t in (device, host, disk)}

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_module, "reserve_space", no_space)
    extra = store.allocate(3)
    with pytest.raises(DiskFullError, match="no space left"):
        store.write_pages(extra, *_kv(3, 4))
    assert {t.name: t.resident_ids().tolist() for t in (device, host, disk)} == before
    assert disk.path.stat().st_size == file_size
    with pytest.raises(PageError, match="has no data"):
        store.read_pages(extra[:1])
    k, v, _ = store.read_pages(first)
    assert torch.equal(bits(k), bits(k0)) and torch.equal(bits(v), bits(v0))
    monkeypatch.undo()
    store.write_pages(extra, *_kv(3, 4))  # space is back: the same write succeeds
    assert torch.equal(bits(store.read_pages(extra)[0]), bits(_kv(3, 4)[0]))
    store.close()


def test_cold_reads_after_dropping_the_page_cache_return_the_same_bytes(tmp_path):
    tier = DiskTier(name="disk", spec=SPEC, directory=tmp_path)
    store = TieredStore([tier])
    ids = store.allocate(10)
    k, v = _kv(10, 5)
    store.write_pages(ids, k, v)
    tier.drop_page_cache()
    got_k, got_v, _ = store.read_pages(ids.flip(0))
    assert torch.equal(bits(got_k), bits(k.flip(0))) and torch.equal(bits(got_v), bits(v.flip(0)))
    store.close()
