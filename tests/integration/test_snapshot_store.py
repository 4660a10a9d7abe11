"""The snapshot store: a prefill saved once is read back exactly by a fresh store (another process's
view: nothing shared but the files), under a key that follows everything that changes the prefill;
bad entries are reported and recomputed, killed and concurrent writers leave one valid entry."""

import json
import os
import socket
import threading
import warnings

import pytest
import torch
from tiny_models import tiny_model

from icecache.core.errors import ConfigError
from icecache.integrations.hf import (
    IceCache,
    SnapshotStore,
    SnapshotWarning,
    decode,
    load_snapshot,
    prefill_snapshot,
    save_snapshot,
    use_icecache,
)
from icecache.integrations.hf.snapshot_store import model_identity
from icecache.integrations.hf.snapshot_store import tensor_files as files

WINDOW = 8
PROMPTS = [list(range(3, 40)), list(range(5, 30))]  # a left-padded batch of two (37 and 25 tokens)


def _same(a, b):
    assert len(a.keys) == len(b.keys) and a.windows == b.windows
    for x, y in zip((*a.keys, *a.values, *(a.queries or ()), a.start, a.lengths, a.last_logits),
                    (*b.keys, *b.values, *(b.queries or ()), b.start, b.lengths, b.last_logits), strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert (a.queries is None) == (b.queries is None)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("olmo3")  # hybrid: sliding-window and full layers, so windows are stored too
    use_icecache(model)
    return model


@pytest.fixture(scope="module")
def tiny_snapshot(tiny):
    return prefill_snapshot(tiny, PROMPTS, query_window=WINDOW)


def _quiet(tmp_path, **kw):
    seen = []
    return SnapshotStore(tmp_path / "snaps", warn=seen.append, **kw), seen


@pytest.mark.model
def test_the_embedded_models_prefill_reads_back_exactly_and_decodes_the_same(model_and_tokenizer,
                                                                             passkey_prompts, snapshot,
                                                                             tmp_path):
    model, _ = model_and_tokenizer
    prompts, _ = passkey_prompts
    window = snapshot.queries[0].shape[2]  # NOTE: the fixture keeps the prompt's last 64 queries
    path = save_snapshot(tmp_path, model, prompts, snapshot, query_window=window)
    assert (path / "manifest.json").is_file() and path.parent == tmp_path
    loaded = load_snapshot(tmp_path, model, prompts, query_window=window)
    _same(snapshot, loaded)
    policy = IceCache.for_model(model, selector="icecache", budget=128).policy
    runs = [decode(model, IceCache.from_snapshot(s, policy), s, 6) for s in (snapshot, loaded)]
    assert runs[0] == runs[1]
    assert load_snapshot(tmp_path, model, prompts, query_window=4) is None  # another key: a miss
    assert load_snapshot(tmp_path, model, [prompts[1], prompts[0]], query_window=window) is None


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_a_fresh_store_reads_what_another_wrote_in_either_format(tiny, tiny_snapshot, tmp_path, fmt):
    writer, _ = _quiet(tmp_path, tensor_format=fmt)
    key = writer.key(tiny, PROMPTS, WINDOW)
    writer.save(key, tiny_snapshot, prefill_s=1.5)
    manifest = json.loads((writer.path(key) / "manifest.json").read_text())
    assert manifest["tensor_format"] == fmt and manifest["key"] == key.fields
    assert sorted(manifest["files"]) == sorted([f"meta{files.suffix(fmt)}"] +
                                               [f"layer-{i:03d}{files.suffix(fmt)}" for i in range(4)])
    reader, seen = _quiet(tmp_path)  # NOTE: the default format reads both
    loaded = reader.load(reader.key(tiny, PROMPTS, WINDOW))
    _same(tiny_snapshot, loaded)
    assert loaded.windows is not None and None in loaded.windows  # olmo3: windowed and full layers
    assert reader.stats.reused == 1 and reader.stats.reused_prefill_s == 1.5 and not seen


def test_the_key_follows_weights_dtype_tokens_window_and_model_id(tiny, tmp_path):
    store, _ = _quiet(tmp_path)
    base = store.key(tiny, PROMPTS, WINDOW).digest
    assert store.key(tiny, PROMPTS, WINDOW).digest == base
    assert store.key(tiny, [PROMPTS[0], PROMPTS[1][:-1]], WINDOW).digest != base
    assert store.key(tiny, PROMPTS, WINDOW + 1).digest != base
    assert store.key(tiny, PROMPTS, WINDOW, model_id="mine").digest != base
    other = tiny_model("olmo3", seed=1)  # same config, other weights
    assert model_identity(other)["config_sha256"] == model_identity(tiny)["config_sha256"]
    assert store.key(other, PROMPTS, WINDOW).digest != base
    assert store.key(other.to(torch.bfloat16), PROMPTS, WINDOW).digest != store.key(
        tiny_model("olmo3", seed=1), PROMPTS, WINDOW).digest


def test_a_checkpoint_directory_is_fingerprinted_by_its_weight_files(tmp_path):
    from icecache.integrations.hf.snapshot_store.key import _file_fingerprint

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(3 << 20))
    before = _file_fingerprint(weights)
    with weights.open("r+b") as fh:  # one byte changed in the middle: a sampled region
        fh.seek((3 << 20) // 2)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    assert _file_fingerprint(weights) != before
    weights.write_bytes(weights.read_bytes()[:-1])
    assert _file_fingerprint(weights)["bytes"] == (3 << 20) - 1


def _corrupt_layer(entry):
    path = entry / "layer-002.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return "layer-002.safetensors: its sha256 is not the manifest's"


def _bad_manifest(entry):
    (entry / "manifest.json").write_text('{"format": 1, "key": ')
    return "manifest.json cannot be read"


def _missing_file(entry):
    (entry / "layer-003.safetensors").unlink()
    return "layer-003.safetensors: cannot be read"


def _other_format(entry):
    manifest = json.loads((entry / "manifest.json").read_text())
    (entry / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    return "written in format 99, this version reads 1"


@pytest.mark.parametrize("damage", [_corrupt_layer, _bad_manifest, _missing_file, _other_format])
def test_a_bad_entry_is_reported_by_path_removed_and_recomputed_never_used(tiny, tiny_snapshot, tmp_path,
                                                                           damage):
    store, seen = _quiet(tmp_path)
    key = store.key(tiny, PROMPTS, WINDOW)
    entry = store.save(key, tiny_snapshot)
    what = damage(entry)
    assert store.load(key) is None
    assert len(seen) == 1 and str(entry) in seen[0] and what in seen[0], seen
    assert not entry.exists() and store.stats.rejected == 1
    again = store.prefill(tiny, PROMPTS, query_window=WINDOW)  # recomputed and stored again
    _same(tiny_snapshot, again)
    _same(tiny_snapshot, store.load(key))
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


def test_an_entry_under_another_keys_name_is_refused(tiny, tiny_snapshot, tmp_path):
    store, seen = _quiet(tmp_path)
    entry = store.save(store.key(tiny, PROMPTS, WINDOW), tiny_snapshot)
    other = store.key(tiny, PROMPTS, WINDOW, model_id="copied")
    entry.rename(store.path(other))
    assert store.load(other) is None
    assert "its key differs from the requested one in 'model'" in seen[0]


def test_the_default_warning_is_a_snapshot_warning(tiny, tiny_snapshot, tmp_path):
    entry = save_snapshot(tmp_path, tiny, PROMPTS, tiny_snapshot, query_window=WINDOW)
    _bad_manifest(entry)
    with pytest.warns(SnapshotWarning, match="manifest.json cannot be read"):
        assert load_snapshot(tmp_path, tiny, PROMPTS, query_window=WINDOW) is None


def test_a_writer_killed_midway_leaves_nothing_under_the_key(tiny, tiny_snapshot, tmp_path, monkeypatch):
    store, seen = _quiet(tmp_path)
    key = store.key(tiny, PROMPTS, WINDOW)
    real, calls = files.write_tensors, []

    def dies_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C in the middle of a save does
        return real(*a, **k)

    monkeypatch.setattr("icecache.integrations.hf.snapshot_store.store.write_tensors", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        store.save(key, tiny_snapshot)
    assert not store.path(key).exists() and list(store.root.iterdir()) == []
    monkeypatch.undo()
    # a SIGKILLed writer cannot clean up: its partial folder is ignored, then removed by the next save
    host = socket.gethostname()
    dead = store.root / f".partial-{host}-{2 ** 22 + 12345}-abc"
    live = store.root / f".partial-{host}-{os.getpid()}-def"
    for p in (dead, live):
        p.mkdir()
        (p / "manifest.json").write_text("{}")
    assert store.load(key) is None and not seen
    store.save(key, tiny_snapshot)
    assert not dead.exists() and live.exists()  # a live writer's folder is left alone
    _same(tiny_snapshot, store.load(key))


def test_concurrent_writers_of_one_key_leave_one_entry_that_all_reuse(tiny, tiny_snapshot, tmp_path):
    stores = [_quiet(tmp_path)[0] for _ in range(4)]
    key = stores[0].key(tiny, PROMPTS, WINDOW)
    start = threading.Barrier(len(stores))
    paths = []

    def save(store):
        start.wait()
        paths.append(store.save(key, tiny_snapshot))

    threads = [threading.Thread(target=save, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and sum(s.stats.saved for s in stores) == 1  # one rename wins
    assert [p.name for p in stores[0].root.iterdir()] == [key.digest]
    _same(tiny_snapshot, stores[0].load(key))


def test_a_store_that_cannot_save_warns_and_the_run_goes_on(tiny, tiny_snapshot, tmp_path):
    (tmp_path / "file").write_text("")
    seen = []
    store = SnapshotStore(tmp_path / "file" / "snaps", warn=seen.append)
    _same(tiny_snapshot, store.prefill(tiny, PROMPTS, query_window=WINDOW))
    assert store.stats.computed == 1 and store.stats.saved == 0
    assert "cannot save a snapshot in" in seen[0] and "file/snaps" in seen[0]


def test_saving_under_another_query_window_than_the_prefill_is_refused(tiny, tiny_snapshot, tmp_path):
    with pytest.raises(ConfigError, match="pass the query_window it was prefilled with"):
        save_snapshot(tmp_path, tiny, PROMPTS, tiny_snapshot)
    with pytest.raises(ConfigError, match="a snapshot of other prompts"):
        save_snapshot(tmp_path, tiny, PROMPTS[:1], tiny_snapshot, query_window=WINDOW)
    assert list(tmp_path.iterdir()) == []


def test_a_cached_prefill_is_computed_once(tiny, tiny_snapshot, tmp_path):
    first, _ = _quiet(tmp_path)
    _same(tiny_snapshot, first.prefill(tiny, PROMPTS, query_window=WINDOW))
    assert (first.stats.computed, first.stats.saved, first.stats.reused) == (1, 1, 0)
    second, _ = _quiet(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _same(tiny_snapshot, second.prefill(tiny, PROMPTS, query_window=WINDOW))
    assert (second.stats.computed, second.stats.reused) == (0, 1)
    assert "1 of 1 batch prefills reused" in second.stats.summary(tmp_path)
