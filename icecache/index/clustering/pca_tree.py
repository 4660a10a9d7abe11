"""Balanced binary splits of ``[G, N, D]`` point groups along each node's principal direction.

Every level splits every node at the median of its valid points' projections on the node's top
principal direction (a few power iterations), so sibling nodes differ by at most one point. Nodes
are kept as dense padded blocks ``[G * nodes, width, D]``: each level is a few ``bmm``, one row sort
and one gather, ``O(G N D)`` in all, far cheaper than k-means with many centroids.
"""

from __future__ import annotations

import torch
from torch import Tensor

from icecache.index.clustering.noise import draw_seed, hashed_uniform


def principal_directions(block: Tensor, mask: Tensor, *, power_iters: int = 3,
                         generator: torch.Generator | None = None,
                         node_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and approximate top principal direction of each padded node.

    ``block``: float ``[S, m, D]``; ``mask``: bool ``[S, m]``; ``node_keys``: int64 ``[S]`` naming
    each node's random start vector (default: its row; see :mod:`~icecache.index.clustering.noise`).
    Returns ``(means [S, D], dirs [S, D])``.
    """
    S, m, D = block.shape
    w = mask.to(block.dtype)[..., None]  # [S, m, 1]
    means = (block * w).sum(1) / w.sum(1).clamp_min(1)
    centred = (block - means[:, None]) * w  # [S, m, D], padding rows zero
    keys = torch.arange(S, device=block.device) if node_keys is None else node_keys
    v = (hashed_uniform(draw_seed(generator), keys, torch.arange(D, device=block.device)) - 0.5)
    v = v.to(block)[:, None]  # [S, 1, D]
    for _ in range(power_iters):
        # NOTE: elementwise mat-vec; batched bmm with one column is slower on CPU.
        v = ((centred * v).sum(-1, keepdim=True) * centred).sum(1, keepdim=True)  # [S, 1, D]
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return means, v[:, 0]


def strided_valid(mask: Tensor, sample: int) -> Tensor:
    """Indices ``[R, K]`` of about ``sample`` evenly strided valid items per row (``-1`` padded).

    The stride and the items count from each row's own first valid item, so a row picks the same
    items whatever padding the batch gives it (left padding would shift a shared stride)."""
    count = mask.sum(1, keepdim=True)  # [R, 1]
    step = (count // sample).clamp_min(1)
    rank = mask.long().cumsum(1) - 1  # the item's place among its row's valid items
    chosen = mask & (rank % step == 0) & (rank < step * sample)
    K = max(1, int(chosen.sum(1).max()))
    order = (~chosen).to(torch.uint8).argsort(dim=1, stable=True)[:, :K]
    return torch.where(chosen.gather(1, order), order, -1)


def top_subspace(points: Tensor, mask: Tensor, dims: int, *, sample: int = 512) -> Tensor:
    """Project ``[G, N, D]`` points on each group's top ``dims`` principal directions (of a strided
    sample of valid points): ``[G, N, dims]``. Splits need directions, not every coordinate."""
    G, N, D = points.shape
    idx = strided_valid(mask, sample)  # [G, K]
    sub = points.gather(1, idx.clamp_min(0)[..., None].expand(G, idx.shape[1], D))
    w = (idx >= 0)[..., None].to(points.dtype)
    mean = (sub * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
    centred = (sub - mean) * w
    cov = centred.transpose(1, 2) @ centred  # [G, D, D]
    _, evecs = torch.linalg.eigh(cov)
    return points @ evecs[:, :, -dims:]


def pca_tree_blocks(points: Tensor, mask: Tensor, depth: int, *, power_iters: int = 3, sample: int = 64,
                    dims: int | None = 16, generator: torch.Generator | None = None,
                    row_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Split each group's valid points into ``2**depth`` near-equal cells, as padded blocks.

    ``points``: float ``[G, N, D]``; ``mask``: bool ``[G, N]``. Returns ``(perm, count)``:
    ``perm`` int64 ``[G * 2**depth, m]``, indices (into ``N``) of each cell's points, valid ones
    first; ``count`` int64 ``[G * 2**depth]`` valid points per cell (cells of group ``g`` are rows
    ``g * 2**depth ...``). ``sample``: points per node used to find its principal direction (an
    evenly strided subset; all points are then projected). ``dims``: when ``D`` is larger, split in
    the top-``dims`` principal subspace of each group. ``row_keys``: int64 ``[G]`` naming each
    group's random numbers (default: its row), so equal keys and points give equal cells in any batch.
    """
    if dims is not None and points.shape[-1] > dims and depth > 0:
        points = top_subspace(points, mask, dims)
    G, N, D = points.shape
    dev = points.device
    # perm[s, j]: index (into N) of the j-th point of node s; valid points first in each node
    perm = mask.long().argsort(dim=1, descending=True, stable=True)  # [G, N]
    flat_points = points.reshape(G * N, D)
    count = mask.sum(1)  # [G]
    rows = torch.arange(G, device=dev) if row_keys is None else row_keys.to(dev)
    seed = torch.Generator().manual_seed(draw_seed(generator))
    for level in range(depth):
        S, m = perm.shape
        heads = torch.arange(S, device=dev) // (S // G)
        valid = torch.arange(m, device=dev)[None] < count[:, None]  # [S, m]
        block = flat_points.index_select(0, (perm + heads[:, None] * N).view(S * m)).view(S, m, D)
        # NOTE: a strided subset finds the direction; power iterations are memory-bound on all points.
        sub = strided_valid(valid, sample)  # [S, K]
        sub_block = block.gather(1, sub.clamp_min(0)[..., None].expand(S, sub.shape[1], D))
        # a node's key: its group's key and its heap index (2**level + i), unique for depth < 32
        node = rows[heads] * (1 << 32) + (1 << level) + torch.arange(S, device=dev) % (S // G)
        _, v = principal_directions(sub_block, sub >= 0, power_iters=power_iters, generator=seed,
                                    node_keys=node)
        proj = (block @ v[..., None])[..., 0].masked_fill(~valid, float("inf"))  # [S, m]
        order = proj.argsort(dim=1)
        perm = perm.gather(1, order)  # sorted by projection, padding last
        half = count // 2
        w = (m + 1) // 2
        offs = torch.stack([torch.zeros_like(half), half], 1)  # [S, 2]: left starts at 0, right at half
        idx = (offs[..., None] + torch.arange(w, device=dev)).clamp_max(m - 1)  # [S, 2, w]
        perm = perm[:, None, :].expand(S, 2, m).gather(2, idx).reshape(2 * S, w)
        count = torch.stack([half, count - half], 1).reshape(2 * S)
    return perm, count


def pca_tree(points: Tensor, mask: Tensor, depth: int, **options) -> Tensor:
    """Cell of each point, int64 ``[G, N]`` in ``[0, 2**depth)`` (``-1`` for masked points); see
    :func:`pca_tree_blocks` for the options."""
    G, N, _ = points.shape
    perm, count = pca_tree_blocks(points, mask, depth, **options)
    S, m = perm.shape
    dev = points.device
    valid = torch.arange(m, device=dev)[None] < count[:, None]
    cells = torch.full((G, N), -1, dtype=torch.int64, device=dev)
    heads = torch.arange(S, device=dev) // (S // G)
    cell_id = torch.arange(S, device=dev) % (S // G)
    cells[heads[:, None].expand(S, m)[valid], perm[valid]] = cell_id[:, None].expand(S, m)[valid]
    return cells
