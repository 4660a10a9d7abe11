"""The hierarchy index on CUDA: same invariants and recall as on the CPU."""

import pytest
import torch

from icecache.core.config import CacheConfig
from icecache.index.clustering.faiss_backend import FaissKMeans
from icecache.index.hierarchy.index import HierarchyIndex
from icecache.testing.synthetic import make_clustered_kv, query_for_cluster

pytestmark = pytest.mark.gpu


def _recall(keys, q, tokens):
    p = torch.einsum("bhgd,bhnd->bhgn", q, keys).mul(keys.shape[-1] ** -0.5).softmax(-1)
    mask = torch.zeros(*keys.shape[:2], keys.shape[2] + 1, dtype=torch.bool, device=keys.device)
    mask.scatter_(2, torch.where(tokens >= 0, tokens, keys.shape[2]), True)
    return float((p * mask[:, :, None, :-1]).sum(-1).mean())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hierarchy_on_cuda_matches_cpu_quality():
    kv = make_clustered_kv(2, 3, 2048, 64, num_clusters=32, spread=0.5, norm_range=(1.0, 4.0), seed=1)
    q = query_for_cluster(kv, 5, group_size=3, noise=1.0, scale=6.0).view(2, 3, 3, 64)
    out = {}
    for dev in ("cpu", "cuda"):
        index = HierarchyIndex(CacheConfig(device=dev))
        keys = kv.keys.to(dev)
        index.build(keys[:, :, :1900], torch.arange(1900, device=dev), queries=q.to(dev))
        changed = index.insert(keys[:, :, 1900:], torch.arange(1900, 2048, device=dev))
        assert changed.device.type == dev
        lay = index.layout.token_ids
        assert lay.device.type == dev and int((lay >= 0).sum(-1).max()) <= 16
        got = lay[lay >= 0]
        assert got.numel() == 2 * 3 * 2048 and torch.equal(index.num_tokens.cpu(), torch.full((2, 3), 2048))
        hits = index.query(q.to(dev), 192)
        assert hits.token_ids.device.type == dev and bool((hits.num_tokens <= 192).all())
        out[dev] = _recall(keys, q.to(dev), hits.token_ids)
    assert abs(out["cuda"] - out["cpu"]) < 0.03, out


@pytest.mark.skipif(not torch.cuda.is_available() or not FaissKMeans().available, reason="needs CUDA + faiss")
def test_faiss_backend_on_cuda_points():
    pts = torch.randn(2, 256, 16, device="cuda")
    res = FaissKMeans().fit(pts, 32, capacity=16)
    assert res.assignments.device.type == "cuda" and int(res.sizes.max()) <= 16
