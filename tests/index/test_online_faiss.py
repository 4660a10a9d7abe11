"""Online k-means absorbs keys; the faiss backend matches torch k-means quality or says it is missing."""

import sys

import pytest
import torch
from hypothesis import given, settings

from icecache.core.errors import ConfigError
from icecache.index.clustering.faiss_backend import FaissKMeans
from icecache.index.clustering.kmeans import BalancedKMeans
from icecache.index.clustering.online import OnlineKMeans
from icecache.testing.strategies.kv import point_groups
from icecache.testing.synthetic import make_clustered_kv


def inertia(points, res):
    c = res.centroids.gather(1, res.assignments.clamp_min(0)[..., None].expand_as(points))
    return float(((points - c) ** 2).sum(-1)[res.assignments >= 0].mean())


@settings(max_examples=20, deadline=None)
@given(groups=point_groups())
def test_online_kmeans_absorbs_new_keys(groups):
    G, N, D = groups.points.shape
    split = max(1, N // 2)
    km = OnlineKMeans(transform=False)
    C = min(3, split)
    km.fit(groups.points[:, :split], C, mask=groups.mask[:, :split])
    counts = km.counts.clone()
    sums = km.sums.clone()
    new, new_mask = groups.points[:, split:], groups.mask[:, split:]
    assign = km.partial_fit(new, new_mask)
    assert torch.equal(assign >= 0, new_mask)
    # every absorbed key counts once towards its cluster and moves the raw running sums
    assert torch.equal((km.counts - counts).sum(1), new_mask.sum(1).to(km.counts.dtype))
    added = torch.zeros_like(sums).index_put_((torch.arange(G)[:, None].expand_as(assign)[new_mask],
                                                assign[new_mask]), new[new_mask], accumulate=True)
    torch.testing.assert_close(km.sums, sums + added, rtol=1e-4, atol=1e-4)


def test_online_kmeans_moves_a_centroid_towards_a_new_cluster():
    old = torch.randn(1, 64, 4) * 0.1  # one blob at the origin
    km = OnlineKMeans(transform=False)
    km.fit(old, 2)
    far = torch.full((1, 200, 4), 10.0) + torch.randn(1, 200, 4) * 0.1
    before = km.centroids[0].norm(dim=-1).max()
    km.partial_fit(far)
    assert km.centroids[0].norm(dim=-1).max() > before + 5.0


def test_online_kmeans_needs_fit_first():
    with pytest.raises(ConfigError, match="fit"):
        OnlineKMeans().partial_fit(torch.zeros(1, 2, 3))


@pytest.mark.skipif(not FaissKMeans().available, reason="faiss not installed")
@pytest.mark.parametrize("transform", [False, True])
def test_faiss_kmeans_quality_close_to_torch(transform):
    kv = make_clustered_kv(1, 3, 600, 16, num_clusters=12, spread=0.15, seed=4)
    pts = kv.keys[0]
    f = FaissKMeans(transform=transform, iters=20).fit(pts, 12)
    t = BalancedKMeans(transform=transform, iters=20, init="random").fit(pts, 12)
    # both seed at random (local optima differ run to run): same quality within a margin
    assert inertia(pts, f) <= 1.5 * inertia(pts, t)
    capped = FaissKMeans(transform=transform).fit(pts, 40, capacity=16)
    assert int(capped.sizes.max()) <= 16 and torch.equal(capped.sizes.sum(1), torch.full((3,), 600))


@pytest.mark.skipif(not FaissKMeans().available, reason="faiss not installed")
def test_faiss_page_sized_clusters_do_not_warn(capfd):
    pts = torch.randn(1, 64, 8)
    FaissKMeans().fit(pts, 8)
    out, err = capfd.readouterr()
    assert "WARNING" not in out + err


def test_faiss_missing_is_a_clear_error(monkeypatch):
    # NOTE: sys.modules[name] = None makes `import faiss` raise ImportError, as on a machine without it
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match=r"pip install 'icecache\[faiss\]'"):
        FaissKMeans().fit(torch.randn(1, 8, 4), 2)
