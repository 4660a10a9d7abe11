"""Snapshot tensor files: exact round trips in both formats, and any changed byte is caught before the
tensors are used."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.integrations.hf.snapshot_store.tensor_files import TensorFileError, read_tensors, write_tensors

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64]


@st.composite
def tensor_dicts(draw):
    """1-3 named tensors of up to 4 dims (empty dims included) and mixed dtypes."""
    out = {}
    for i in range(draw(st.integers(1, 3))):
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
        dtype = draw(st.sampled_from(DTYPES))
        seed = draw(st.integers(0, 2 ** 16))
        g = torch.Generator().manual_seed(seed)
        out[f"t{i}"] = (torch.randn(shape, generator=g) * 100).to(dtype)
    return out


@settings(max_examples=25, deadline=None)
@given(tensors=tensor_dicts(), fmt=st.sampled_from(["safetensors", "torch"]), flip=st.floats(0, 1))
def test_round_trips_exactly_and_a_flipped_byte_is_caught(tmp_path_factory, tensors, fmt, flip):
    path = tmp_path_factory.mktemp("t") / "x"
    entry = write_tensors(path, tensors, fmt)
    back = read_tensors(path, entry, fmt)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
    data = bytearray(path.read_bytes())
    data[int(flip * (len(data) - 1))] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TensorFileError, match="sha256"):
        read_tensors(path, entry, fmt)


def test_a_truncated_file_and_a_wrong_listing_are_named(tmp_path):
    path = tmp_path / "x"
    entry = write_tensors(path, {"a": torch.ones(3)}, "safetensors")
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(TensorFileError, match=r"x: \d+ bytes, the manifest says"):
        read_tensors(path, entry, "safetensors")
    entry = write_tensors(path, {"a": torch.ones(3)}, "safetensors")
    listed = {**entry, "tensors": {"a": {"shape": [4], "dtype": "float32"}}}
    with pytest.raises(TensorFileError, match="tensor 'a' is"):
        read_tensors(path, listed, "safetensors")
