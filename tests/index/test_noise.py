"""Counter-based random numbers: fixed per (seed, key, position), uniform, independent of shape."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.index.clustering.noise import draw_seed, hashed_uniform
from icecache.index.clustering.pca_tree import strided_valid


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 2), keys=st.lists(st.integers(0, 2**40), min_size=1, max_size=6),
       n=st.integers(1, 50), start=st.integers(0, 1000))
def test_values_depend_on_key_and_position_only(seed, keys, n, start):
    k = torch.tensor(keys)
    u = hashed_uniform(seed, k, torch.arange(n))
    assert u.shape == (len(keys), n) and bool(((u >= 0) & (u < 1)).all())
    # one row alone, or a window of positions, reads the same numbers
    assert torch.equal(hashed_uniform(seed, k[-1:], torch.arange(n)), u[-1:])
    window = hashed_uniform(seed, k, torch.arange(start, start + n))
    assert torch.equal(hashed_uniform(seed, k, torch.arange(start + n))[:, start:], window)


def test_streams_look_uniform_and_differ_by_key_and_seed():
    u = hashed_uniform(7, torch.arange(4), torch.arange(20000))
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert float((hist - 0.1).abs().max()) < 0.01
    assert float(torch.corrcoef(u[:2])[0, 1]).__abs__() < 0.03  # neighbouring keys are unrelated
    assert not torch.equal(u, hashed_uniform(8, torch.arange(4), torch.arange(20000)))
    assert draw_seed(torch.Generator().manual_seed(3)) == draw_seed(torch.Generator().manual_seed(3))


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 300), pad=st.integers(0, 40), sample=st.integers(1, 64))
def test_strided_valid_ignores_padding(count, pad, sample):
    """Left padding shifts the indices, never which of the row's items are picked."""
    mask = torch.cat([torch.zeros(pad, dtype=torch.bool), torch.ones(count, dtype=torch.bool)])[None]
    idx = strided_valid(mask, sample)[0]
    picked = idx[idx >= 0] - pad
    alone = strided_valid(torch.ones(1, count, dtype=torch.bool), sample)[0] if count else torch.tensor([])
    assert torch.equal(picked, alone[alone >= 0]) if count else picked.numel() == 0
    assert picked.numel() == min(count, sample)
    if count:
        assert int(picked.min()) == 0 and torch.equal(picked, picked.sort().values)
