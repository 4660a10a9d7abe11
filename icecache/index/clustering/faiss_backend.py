"""faiss k-means (CPU, or GPU when a faiss GPU build and CUDA are present), detected at run time.

``faiss`` is imported lazily; without it :attr:`FaissKMeans.available` is False and :meth:`fit` raises
:class:`~icecache.core.errors.ConfigError` saying how to install it. faiss trains one matrix at a
time, so groups are trained in a loop; the assignment (capacity-bounded or not) is batched torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import numpy as np
import torch
from attrs import define, field
from attrs.validators import ge
from torch import Tensor

from icecache.core.errors import ConfigError
from icecache.index.clustering.base import Clustering
from icecache.index.clustering.kmeans import capacity_assign, check_points, sq_distances, update_centroids
from icecache.index.transform import mips_keys


def import_faiss(needed_by: str = "clusterer 'faiss-kmeans'") -> Any:
    """The ``faiss`` module, or a :class:`ConfigError` naming ``needed_by`` and the extra to install."""
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise ConfigError(
            f"{needed_by} needs faiss: pip install 'icecache[faiss]' (CPU) or "
            f"'icecache[gpu]' (CUDA); import failed: {exc}") from None


@define
class FaissKMeans:
    """k-means trained by ``faiss.Kmeans`` per group, optionally in the MIPS-transformed space.

    ``gpu``: None picks the GPU when faiss sees one and the points are on CUDA.
    NOTE: ``min_points_per_centroid=1`` on purpose: page-sized clusters (~8-16 points each) are far
    below faiss's default of 39 points per centroid, whose warning would fire on every call.
    """

    iters: int = field(default=10, validator=ge(1))
    nredo: int = field(default=3, validator=ge(1))  # restarts; faiss seeds at random, k-means++ it lacks
    transform: bool = field(default=True)
    seed: int = field(default=0)
    gpu: bool | None = field(default=None)
    name: str = "faiss-kmeans"

    @property
    def available(self) -> bool:
        return importlib.util.find_spec("faiss") is not None

    def fit(self, points: Tensor, num_clusters: int, *, capacity: int | None = None,
            mask: Tensor | None = None) -> Clustering:
        faiss = import_faiss()
        mask = check_points(points, mask)
        G, N, D = points.shape
        if num_clusters < 1 or num_clusters > max(N, 1):
            raise ConfigError(f"num_clusters must be in [1, {max(N, 1)}], got {num_clusters}")
        if capacity is not None and capacity * num_clusters < int(mask.sum(1).max()):
            raise ConfigError(f"num_clusters={num_clusters} x capacity={capacity} cannot hold "
                              f"{int(mask.sum(1).max())} points")
        space = mips_keys(points, mask)[0] if self.transform else points
        use_gpu = self.gpu if self.gpu is not None else (points.is_cuda and faiss.get_num_gpus() > 0)
        host = space.detach().to("cpu", torch.float32)
        cent = torch.zeros(G, num_clusters, space.shape[-1], dtype=torch.float32)
        for g in range(G):
            x = np.ascontiguousarray(host[g][mask[g].cpu()].numpy())
            if len(x) == 0:
                continue
            k = min(num_clusters, len(x))
            km = faiss.Kmeans(x.shape[1], k, niter=self.iters, seed=self.seed + g, verbose=False,
                              nredo=self.nredo, gpu=bool(use_gpu), min_points_per_centroid=1,
                              max_points_per_centroid=1 << 20)
            km.train(x)
            cent[g, :k] = torch.from_numpy(km.centroids)
            if k < num_clusters:  # NOTE: fewer points than clusters: spare clusters sit far away, empty
                cent[g, k:] = cent[g, :1] + 1e6
        cent = cent.to(space.device, space.dtype)
        cost = sq_distances(space, cent)
        if capacity is not None:
            assign = capacity_assign(cost, capacity, mask)
        else:
            assign = torch.where(mask, cost.argmin(-1), -1)
        centroids, sizes = update_centroids(points, assign, torch.zeros_like(points[:, :1]).expand(
            G, num_clusters, D).contiguous())
        return Clustering(assignments=assign, centroids=centroids, sizes=sizes)
