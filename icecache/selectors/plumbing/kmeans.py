"""Batched spherical k-means (cosine similarity), as ClusterKV clusters keys.

NOTE: this is the *baseline's* clustering, kept here so ClusterKV does not depend on the IceCache
index's clusterers (which work in the MIPS-transformed space with bounded cluster sizes).
"""

from __future__ import annotations

import torch
from torch import Tensor


def spherical_kmeans(
    points: Tensor, mask: Tensor, num_clusters: int, *, iters: int = 10, seed: int = 0,
    capacity: int | None = None,
) -> Tensor:
    """Cluster ``points`` float ``[R, N, D]`` where ``mask`` bool ``[R, N]`` is True.

    Returns int64 ``[R, N]`` cluster ids in ``[0, num_clusters)``, ``-1`` where masked. Centroids
    start at distinct valid points chosen at random (seeded); empty clusters keep their centroid.
    ``capacity``: the final assignment holds at most that many points per cluster (most similar first;
    ``num_clusters * capacity`` must cover the points).
    """
    R, N, D = points.shape
    C = max(1, min(num_clusters, N))
    x = torch.nn.functional.normalize(points.float(), dim=-1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.rand(R, N, generator=gen).to(points.device)
    init = torch.topk(torch.where(mask, noise, -1.0), C, dim=1).indices  # [R, C] random valid points
    centroids = x.gather(1, init[..., None].expand(R, C, D))
    for _ in range(iters):
        assign = torch.einsum("rnd,rcd->rnc", x, centroids).argmax(-1)  # [R, N]
        sums = torch.zeros_like(centroids).scatter_add_(
            1, assign[..., None].expand(R, N, D), x * mask[..., None]
        )
        norms = sums.norm(dim=-1, keepdim=True)
        centroids = torch.where(norms > 0, sums / norms.clamp(min=1e-12), centroids)
    sim = torch.einsum("rnd,rcd->rnc", x, centroids)
    if capacity is not None:
        from icecache.index.clustering.kmeans import capacity_assign

        return capacity_assign(-sim, capacity, mask)
    return torch.where(mask, sim.argmax(-1), -1)
