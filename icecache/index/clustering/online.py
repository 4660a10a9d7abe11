"""Streaming (mini-batch) k-means in torch that absorbs new keys, batched over ``[G, N, D]`` groups.

Sculley's mini-batch k-means: each centroid moves towards the points assigned to it with a
per-centroid learning rate ``1 / count``, so a centroid is always the running mean of the points it
absorbed. :meth:`OnlineKMeans.fit` starts fresh; :meth:`OnlineKMeans.partial_fit` absorbs more points.
"""

from __future__ import annotations

import torch
from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.core.errors import ConfigError, TensorSpecError
from icecache.index.clustering.base import Clustering
from icecache.index.clustering.kmeans import capacity_assign, check_points, init_centroids, sq_distances
from icecache.index.transform import mips_keys


@define
class OnlineKMeans:
    """Mini-batch k-means whose state (``centroids``, ``counts``) persists between calls.

    ``transform=True`` assigns in the MIPS-transformed space ``[k; sqrt(M^2 - |k|^2)]`` with a
    running ``M``. NOTE: when ``M`` grows, past points' extra coordinate is not revisited (online
    approximation); returned centroids are always exact running means of the raw points.
    """

    batch_size: int = field(default=256, validator=ge(1))
    epochs: int = field(default=2, validator=ge(1))
    transform: bool = field(default=True)
    seed: int = field(default=0)
    name: str = "online-kmeans"
    centroids: Tensor | None = field(default=None, init=False, repr=False)  # [G, C, D(+1)] assignment space
    sums: Tensor | None = field(default=None, init=False, repr=False)  # [G, C, D] raw sums
    counts: Tensor | None = field(default=None, init=False, repr=False)  # [G, C]
    m2: Tensor | None = field(default=None, init=False, repr=False)  # [G]

    @property
    def available(self) -> bool:
        return True

    def _space(self, points: Tensor, mask: Tensor) -> Tensor:
        if not self.transform:
            return points
        space, self.m2 = mips_keys(points, mask, self.m2)
        return space

    def fit(self, points: Tensor, num_clusters: int, *, capacity: int | None = None,
            mask: Tensor | None = None) -> Clustering:
        """Start from ``num_clusters`` random points, absorb all points in mini-batches for ``epochs``
        passes, then assign (capacity-bounded when ``capacity`` is given)."""
        mask = check_points(points, mask)
        G, N, D = points.shape
        if num_clusters < 1 or num_clusters > max(N, 1):
            raise ConfigError(f"num_clusters must be in [1, {max(N, 1)}], got {num_clusters}")
        self.m2 = None
        space = self._space(points, mask)
        gen = torch.Generator().manual_seed(self.seed)
        self.centroids = init_centroids(space, mask, num_clusters, gen)
        self.counts = torch.zeros(G, num_clusters, dtype=points.dtype, device=points.device)
        self.sums = torch.zeros(G, num_clusters, D, dtype=points.dtype, device=points.device)
        for epoch in range(self.epochs):
            for start in range(0, N, self.batch_size):
                sl = slice(start, start + self.batch_size)
                self._absorb(space[:, sl], points[:, sl], mask[:, sl], raw_sums=epoch == self.epochs - 1)
        cost = sq_distances(space, self.centroids)
        if capacity is not None:
            assign = capacity_assign(cost, capacity, mask)
        else:
            assign = torch.where(mask, cost.argmin(-1), -1)
        return self._result(points, assign)

    def partial_fit(self, points: Tensor, mask: Tensor | None = None) -> Tensor:
        """Absorb new points ``[G, n, D]`` into the current clusters; returns their clusters ``[G, n]``
        (``-1`` for masked points)."""
        if self.centroids is None:
            raise ConfigError("online-kmeans: call fit() before partial_fit()")
        mask = check_points(points, mask)
        if points.shape[0] != self.centroids.shape[0] or points.shape[-1] != self.sums.shape[-1]:
            raise TensorSpecError(f"points {tuple(points.shape)} do not match the fitted "
                                  f"[{self.centroids.shape[0]}, n, {self.sums.shape[-1]}]")
        space = self._space(points, mask)
        if self.transform and space.shape[-1] != self.centroids.shape[-1]:
            raise TensorSpecError("partial_fit points must use the space fit() used")
        return self._absorb(space, points, mask, raw_sums=True)

    def _absorb(self, space: Tensor, raw: Tensor, mask: Tensor, *, raw_sums: bool) -> Tensor:
        G, n, _ = space.shape
        C = self.centroids.shape[1]
        if self.transform and space.shape[-1] > self.centroids.shape[-1]:  # pragma: no cover - guarded
            raise TensorSpecError("space mismatch")
        assign = torch.where(mask, sq_distances(space, self.centroids).argmin(-1), -1)  # [G, n]
        flat = torch.where(assign >= 0, assign + torch.arange(G, device=space.device)[:, None] * C, G * C)
        flat = flat.reshape(-1)
        cnt = torch.bincount(flat, minlength=G * C + 1)[:G * C].view(G, C).to(space.dtype)
        tot = torch.zeros(G * C + 1, space.shape[-1], dtype=space.dtype, device=space.device)
        Ds = space.shape[-1]
        tot = tot.index_add_(0, flat, space.reshape(G * n, Ds))[:G * C].view(G, C, Ds)
        # NOTE: per-centroid rate 1/count keeps each centroid the running mean of what it absorbed
        new_counts = self.counts + cnt
        rate = (cnt / new_counts.clamp_min(1))[..., None]
        batch_mean = tot / cnt.clamp_min(1)[..., None]
        moved = self.centroids + rate * (batch_mean - self.centroids)
        self.centroids = torch.where(cnt[..., None] > 0, moved, self.centroids)
        self.counts = new_counts
        if raw_sums:
            rs = torch.zeros(G * C + 1, raw.shape[-1], dtype=raw.dtype, device=raw.device)
            D = raw.shape[-1]
            self.sums = self.sums + rs.index_add_(0, flat, raw.reshape(G * n, D))[:G * C].view(G, C, D)
        return assign

    def _result(self, points: Tensor, assign: Tensor) -> Clustering:
        from icecache.index.clustering.kmeans import update_centroids

        centroids, sizes = update_centroids(points, assign, torch.zeros_like(self.sums))
        return Clustering(assignments=assign, centroids=centroids, sizes=sizes)
