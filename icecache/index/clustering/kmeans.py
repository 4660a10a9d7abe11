"""Batched k-means in torch over ``[G, N, D]`` groups, with capacity-bounded (balanced) clusters.

Everything is vectorized over the ``G`` groups (``B * H_kv`` heads, or ``layers * B * H_kv``): no
Python loop per point, cluster or group. Loops run over k-means iterations and assignment rounds only.
"""

from __future__ import annotations

import torch
from attrs import define, field
from torch import Tensor

from icecache.core.errors import ConfigError, TensorSpecError
from icecache.index.clustering.base import Clustering
from icecache.index.clustering.noise import draw_seed, hashed_uniform
from icecache.index.transform import mips_keys


def check_points(points: Tensor, mask: Tensor | None) -> Tensor:
    """Validate ``points`` ``[G, N, D]`` and return a bool mask ``[G, N]``."""
    if points.dim() != 3 or not points.is_floating_point():
        raise TensorSpecError(
            f"points must be a float [G, N, D] tensor, got {points.dtype} {tuple(points.shape)}")
    if mask is None:
        return torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
    if mask.shape != points.shape[:2] or mask.dtype != torch.bool:
        raise TensorSpecError(
            f"mask must be bool {tuple(points.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    return mask


def sq_distances(points: Tensor, centroids: Tensor) -> Tensor:
    """Squared distances up to a per-point constant: ``|c|^2 - 2 x.c``, ``[G, N, C]``.

    NOTE: ``|x|^2`` is dropped; it does not change any point's ranking of centroids.
    """
    c2 = (centroids * centroids).sum(-1)  # [G, C]
    return torch.baddbmm(c2[:, None, :], points, centroids.transpose(1, 2), alpha=-2.0)


def init_centroids(points: Tensor, mask: Tensor, num_clusters: int,
                   generator: torch.Generator | None, row_keys: Tensor | None = None) -> Tensor:
    """``num_clusters`` distinct valid points per group, chosen uniformly at random, ``[G, C, D]``.

    ``row_keys``: int64 ``[G]`` naming each group's random numbers (default: its row); groups with
    the same key and points choose the same centroids whatever else is in the batch
    (:mod:`~icecache.index.clustering.noise`). Groups with fewer valid points than clusters reuse
    invalid rows (those clusters stay empty).
    """
    G, N, D = points.shape
    if num_clusters > N:
        raise ConfigError(f"num_clusters={num_clusters} exceeds the {N} points per group")
    keys = torch.arange(G, device=points.device) if row_keys is None else row_keys.to(points.device)
    noise = hashed_uniform(draw_seed(generator), keys, torch.arange(N, device=points.device))
    noise = noise.masked_fill(~mask, -1.0)
    idx = noise.topk(num_clusters, dim=1).indices  # [G, C]
    return points.gather(1, idx[..., None].expand(-1, -1, D)).clone()


def kmeanspp_centroids(points: Tensor, mask: Tensor, num_clusters: int,
                       generator: torch.Generator | None) -> Tensor:
    """k-means++ seeding batched over groups: each next centroid is a valid point drawn with
    probability proportional to its squared distance to the nearest centroid so far, ``[G, C, D]``.
    One ``O(G N D)`` pass per centroid."""
    G, N, D = points.shape
    if num_clusters > N:
        raise ConfigError(f"num_clusters={num_clusters} exceeds the {N} points per group")
    rows = torch.arange(G, device=points.device)
    weight = mask.to(points.dtype) + 1e-30  # [G, N]; groups with no valid point still sample
    idx = torch.multinomial(weight.cpu(), 1, generator=generator).to(points.device)[:, 0]  # [G]
    chosen = [points[rows, idx]]
    d2 = ((points - chosen[0][:, None]) ** 2).sum(-1)
    for _ in range(1, num_clusters):
        w = (d2.clamp_min(0) * mask).cpu() + 1e-30
        idx = torch.multinomial(w, 1, generator=generator).to(points.device)[:, 0]
        chosen.append(points[rows, idx])
        d2 = torch.minimum(d2, ((points - chosen[-1][:, None]) ** 2).sum(-1))
    return torch.stack(chosen, 1)


def update_centroids(points: Tensor, assign: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Means of each cluster's points (old centroid kept for empty clusters), and sizes ``[G, C]``."""
    G, N, D = points.shape
    C = centroids.shape[1]
    # NOTE: masked points (-1) go to a spare row G*C that is dropped; no boolean-mask copies.
    flat = torch.where(assign >= 0, assign + torch.arange(G, device=points.device)[:, None] * C, G * C)
    flat = flat.reshape(-1)
    sums = torch.zeros(G * C + 1, D, dtype=points.dtype, device=points.device)
    sums.index_add_(0, flat, points.reshape(G * N, D))
    sizes = torch.bincount(flat, minlength=G * C + 1)[:G * C]
    means = sums[:G * C] / sizes.clamp_min(1)[:, None].to(points.dtype)
    new = torch.where(sizes[:, None] > 0, means, centroids.reshape(G * C, D))
    return new.view(G, C, D), sizes.view(G, C)


def capacity_assign(cost: Tensor, capacity: Tensor | int, mask: Tensor, *, rounds: int = 6) -> Tensor:
    """Assign each valid point to a cluster, no cluster over ``capacity`` points, preferring low cost.

    ``cost``: float ``[G, N, C]``; ``capacity``: int or int64 ``[G, C]``; ``mask``: bool ``[G, N]``.
    Returns int64 ``[G, N]`` (``-1`` for masked points).

    Each round every unassigned point proposes its cheapest cluster that still has room; a cluster
    accepts its cheapest proposals up to its remaining room. Points left after ``rounds`` fill the
    remaining room in order (exact, so the result always respects capacity). Only the proposals to
    over-subscribed clusters are sorted, and later rounds only look at the points still unassigned.
    """
    G, N, C = cost.shape
    dev = cost.device
    room = torch.as_tensor(capacity, dtype=torch.int64, device=dev).expand(G, C).clone()
    need = mask.sum(1)
    if bool((room.sum(1) < need).any()):
        g = int(torch.nonzero(room.sum(1) < need)[0])
        raise ConfigError(f"capacity {int(room[g].sum())} of group {g} is below its {int(need[g])} points")
    assign = torch.full((G, N), -1, dtype=torch.int64, device=dev)
    g, n = torch.nonzero(mask, as_tuple=True)  # points still to place
    sub = cost[g, n] if g.numel() < G * N else cost.reshape(G * N, C)  # [M, C]
    for _ in range(rounds):
        if g.numel() == 0:
            return assign
        full = room <= 0
        masked = sub.masked_fill(full[g], float("inf")) if bool(full.any()) else sub
        best_cost, best = masked.min(-1)  # [M]
        key = g * C + best
        counts = torch.bincount(key, minlength=G * C)
        accept = counts[key] <= room.view(-1)[key]  # the whole cluster's proposals fit
        tight = torch.nonzero(~accept).squeeze(1)
        if tight.numel():
            # NOTE: sort by cost, then stably by cluster: each cluster's proposals cheapest first.
            order = tight[best_cost[tight].argsort(stable=True)]
            order = order[key[order].argsort(stable=True)]
            k = key[order]
            seg_counts = torch.bincount(k, minlength=G * C)
            starts = seg_counts.cumsum(0) - seg_counts
            rank = torch.arange(k.numel(), device=dev) - starts[k]
            accept[order[rank < room.view(-1)[k]]] = True
        assign[g[accept], n[accept]] = best[accept]
        room.view(-1).sub_(torch.bincount(key[accept], minlength=G * C))
        keep = ~accept
        g, n, sub = g[keep], n[keep], sub[keep]
    todo = mask & (assign < 0)
    if bool(todo.any()):
        # NOTE: fallback fill; the j-th leftover point of a group takes the j-th free slot.
        j = todo.long().cumsum(1) - 1  # [G, N]
        ends = room.clamp_min(0).cumsum(1)  # [G, C]
        slot = torch.searchsorted(ends, j.clamp_min(0), right=True)
        assign = torch.where(todo, slot, assign)
    return assign


def kmeans(points: Tensor, num_clusters: int, *, iters: int = 8, mask: Tensor | None = None,
           capacity: int | None = None, balanced_iters: int = 2, generator: torch.Generator | None = None,
           init: Tensor | str = "random", row_keys: Tensor | None = None) -> Clustering:
    """Lloyd's k-means on ``[G, N, D]`` in the given space, batched over groups.

    With ``capacity``, the last ``balanced_iters`` iterations use :func:`capacity_assign`.
    ``init``: ``"random"`` (distinct random points, keyed by ``row_keys``: see
    :func:`init_centroids`), ``"kmeans++"`` or initial centroids ``[G, C, D]``.
    """
    mask = check_points(points, mask)
    G, N, D = points.shape
    if num_clusters < 1:
        raise ConfigError(f"num_clusters must be >= 1, got {num_clusters}")
    if capacity is not None and capacity * num_clusters < int(mask.sum(1).max()):
        raise ConfigError(f"num_clusters={num_clusters} x capacity={capacity} cannot hold "
                          f"{int(mask.sum(1).max())} points")
    if isinstance(init, Tensor):
        centroids = init.clone()
    elif init == "kmeans++":
        centroids = kmeanspp_centroids(points, mask, num_clusters, generator)
    elif init == "random":
        centroids = init_centroids(points, mask, num_clusters, generator, row_keys)
    else:
        raise ConfigError(f"init must be 'random', 'kmeans++' or a tensor, got {init!r}")
    assign = torch.full((G, N), -1, dtype=torch.int64, device=points.device)
    sizes = torch.zeros(G, num_clusters, dtype=torch.int64, device=points.device)
    total = max(iters, balanced_iters if capacity is not None else 0)
    for it in range(total):
        cost = sq_distances(points, centroids)
        if capacity is not None and it >= total - balanced_iters:
            assign = capacity_assign(cost, capacity, mask)
        else:
            assign = torch.where(mask, cost.argmin(-1), -1)
        centroids, sizes = update_centroids(points, assign, centroids)
    return Clustering(assignments=assign, centroids=centroids, sizes=sizes)


@define
class BalancedKMeans:
    """Batched torch k-means with capacity-bounded clusters, optionally in the MIPS-transformed space.

    ``transform=True`` clusters ``T_K(k) = [k; sqrt(M^2 - |k|^2)]`` (keys that score alike for any
    query); the returned centroids are in the input space (means of the raw points).
    """

    iters: int = field(default=8)
    balanced_iters: int = field(default=2)
    transform: bool = field(default=True)
    init: str = field(default="kmeans++")
    seed: int = field(default=0)
    name: str = "balanced-kmeans"

    @property
    def available(self) -> bool:
        return True

    def fit(self, points: Tensor, num_clusters: int, *, capacity: int | None = None,
            mask: Tensor | None = None) -> Clustering:
        mask = check_points(points, mask)
        gen = torch.Generator().manual_seed(self.seed)
        space = mips_keys(points, mask)[0] if self.transform else points
        res = kmeans(space, num_clusters, iters=self.iters, mask=mask, capacity=capacity,
                     balanced_iters=self.balanced_iters, generator=gen, init=self.init)
        if not self.transform:
            return res
        zeros = torch.zeros_like(points[:, :num_clusters])
        centroids, sizes = update_centroids(points, res.assignments, zeros)
        return Clustering(assignments=res.assignments, centroids=centroids, sizes=sizes)
