"""Vectorized construction of the two-level page layout (cells of pages) for many heads at once.

1. Keys go to the MIPS-transformed space (:mod:`icecache.index.transform`).
2. A PCA tree splits each head's keys into ``2**depth`` balanced *cells* (about ``cell_tokens`` each).
3. Inside every cell, batched capacity-bounded k-means makes *leaves* of about ``leaf_tokens`` keys
   and at most ``page_size``: the pages.

All heads and cells are processed together: one k-means over ``[G * cells, cell_size, D + 1]``.
"""

from __future__ import annotations

import math

import torch
from attrs import frozen
from torch import Tensor

from icecache.index.clustering.kmeans import kmeans
from icecache.index.clustering.pca_tree import pca_tree_blocks
from icecache.index.transform import mips_keys


@frozen(kw_only=True)
class BuiltLayout:
    """Result of :func:`build_layout` for ``G`` heads.

    * ``pages``: int64 ``[G, P, S]``, indices into the ``N`` input keys, ``-1`` padded.
    * ``page_cell``: int64 ``[G, P]``, the cell (upper-level node) of each page; ``-1`` for padding.
    * ``num_cells``: cells per head.
    * ``point_page``: int64 ``[G, N]``, the page of each key (``-1`` for masked keys).
    """

    pages: Tensor
    page_cell: Tensor
    num_cells: int
    point_page: Tensor


def rank_within(seg: Tensor, key: Tensor | None, num_segments: int) -> tuple[Tensor, Tensor]:
    """For items with segment ``seg`` ``[M]`` sorted by ``key`` ``[M]`` inside segments: the
    items' order (segment-major, key-minor) and each item's rank inside its segment.

    ``key=None``: the items are already in key order (e.g. from ``torch.nonzero``), so one stable
    sort by segment suffices.
    """
    if key is None:
        order = seg.argsort(stable=True)
    else:
        order = key.argsort(stable=True)
        order = order[seg[order].argsort(stable=True)]
    counts = torch.bincount(seg, minlength=num_segments)
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(seg)
    rank[order] = torch.arange(seg.numel(), device=seg.device) - starts[seg[order]]
    return order, rank


def pack(seg: Tensor, rank: Tensor, values: Tensor, num_segments: int, width: int,
         fill: float | int) -> Tensor:
    """Scatter ``values`` ``[M, ...]`` to ``[num_segments, width, ...]`` at (``seg``, ``rank``)."""
    out = torch.full((num_segments, width, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    out[seg, rank] = values
    return out


def build_layout(keys: Tensor, mask: Tensor, *, page_size: int, leaf_tokens: int, cell_tokens: int,
                 iters: int = 5, balanced_iters: int = 1, transform: bool = True, init: str = "random",
                 generator: torch.Generator | None = None, row_keys: Tensor | None = None) -> BuiltLayout:
    """Group each head's valid keys into pages.

    ``keys``: float ``[G, N, D]``; ``mask``: bool ``[G, N]`` (keys to index). ``leaf_tokens``: target
    mean page fill (``<= page_size``); ``cell_tokens``: target keys per upper-level cell.
    ``row_keys``: int64 ``[G]`` naming each head's random numbers (default: its row). Heads with the
    same key and keys get the same pages in any batch whose longest row gives the same cell count.
    """
    G, N, D = keys.shape
    dev = keys.device
    space = mips_keys(keys, mask)[0] if transform else keys
    Dt = space.shape[-1]
    n_max = int(mask.sum(1).max())
    depth = max(0, int(round(math.log2(max(1.0, n_max / cell_tokens)))))
    rows = torch.arange(G, device=dev) if row_keys is None else row_keys.to(dev)
    perm, count = pca_tree_blocks(space, mask, depth, generator=generator, row_keys=rows)  # [G*cells, m]
    num_cells = 1 << depth
    S, m = perm.shape
    heads = torch.arange(S, device=dev) // num_cells
    block = space.reshape(G * N, Dt).index_select(0, (perm + heads[:, None] * N).view(S * m)).view(S, m, Dt)
    block_mask = torch.arange(m, device=dev)[None] < count[:, None]  # [S, m]
    L = max(1, math.ceil(m / leaf_tokens))  # leaves per cell
    res = kmeans(block, L, iters=iters, mask=block_mask, capacity=page_size,
                 balanced_iters=balanced_iters, generator=generator, init=init,
                 row_keys=rows[heads] * (1 << 32) + torch.arange(S, device=dev) % num_cells)
    # NOTE: sort each cell's points by leaf: runs of one leaf, padding (leaf L) last
    leaf, order = res.assignments.masked_fill(~block_mask, L).sort(dim=1, stable=True)  # [S, m]
    point = perm.gather(1, order)  # [S, m] index into N
    sizes = res.sizes  # [S, L]
    rank = torch.arange(m, device=dev)[None] - (sizes.cumsum(1) - sizes).gather(1, leaf.clamp_max(L - 1))
    used = (sizes > 0).view(G, num_cells * L)  # [G, cells * L] page slots in use
    page_of_slot = used.long().cumsum(1) - 1
    P = int(used.sum(1).max()) if used.numel() else 0
    valid = leaf < L
    cell_of_row = torch.arange(S, device=dev) % num_cells
    slot = cell_of_row[:, None] * L + leaf.clamp_max(L - 1)  # [S, m]
    g = heads[:, None].expand(S, m)[valid]
    page = page_of_slot[g, slot[valid]]  # [M]
    pages = torch.full((G, P, page_size), -1, dtype=torch.int64, device=dev)
    pages[g, page, rank[valid]] = point[valid]
    page_cell = torch.full((G, P), -1, dtype=torch.int64, device=dev)
    page_cell[g, page] = cell_of_row[:, None].expand(S, m)[valid]
    point_page = torch.full((G, N), -1, dtype=torch.int64, device=dev)
    point_page[g, point[valid]] = page
    return BuiltLayout(pages=pages, page_cell=page_cell, num_cells=num_cells, point_page=point_page)
