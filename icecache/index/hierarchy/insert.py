"""Decode-time inserts into a :class:`~icecache.index.hierarchy.index.HierarchyIndex` (never a rebuild).

``new-leaf`` (default): the inserted keys form new leaves among themselves (batched, capacity-bounded
k-means, about ``insert_leaf_tokens`` keys each), each joining its nearest cell. ``assign``: each key
joins the nearest page of its cell with room (capacity-bounded), the overflow forms new leaves.
A page's tokens never move (contents only grow), so storage appends and never rewrites for a split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from icecache.core.errors import TensorSpecError
from icecache.index.clustering.kmeans import capacity_assign, kmeans
from icecache.index.hierarchy.build import rank_within

if TYPE_CHECKING:
    from icecache.index.hierarchy.index import HierarchyIndex


def insert(ix: HierarchyIndex, keys: Tensor, token_ids: Tensor) -> Tensor:
    """See :meth:`icecache.index.base.PageIndex.insert`: bool ``[B, H_kv, P]`` pages changed."""
    from icecache.index.hierarchy.index import check_keys, normalize_token_ids

    check_keys(keys)
    B, H, n, D = keys.shape
    if ix._state is None:
        ix.build(keys[:, :, :0], torch.zeros(B, H, 0, dtype=torch.int64, device=keys.device))
    st = ix._state
    if (B, H) != ix._shape or D != st.cell_sum.shape[-1]:
        raise TensorSpecError(f"insert keys {tuple(keys.shape)} do not match the index "
                              f"[{ix._shape[0]}, {ix._shape[1]}, n, {st.cell_sum.shape[-1]}]")
    G, dev = B * H, keys.device
    tok = normalize_token_ids(token_ids, B, H, n, dev)
    valid = tok >= 0
    x = keys.reshape(G, n, D).float()  # [G, n, D]
    s0 = st.num_slots
    st.reserve_slots(s0 + n)
    st.slot_token[:, s0:s0 + n] = tok.to(torch.int32)
    if st.keys is not None:
        st.keys[:, s0:s0 + n] = x.to(st.keys.dtype)
    st.num_slots = s0 + n
    space = x @ st.whiten if st.whiten is not None else x
    sq = (space * space).sum(-1)  # [G, n]
    m2 = torch.maximum(st.m2, sq.masked_fill(~valid, 0).amax(1)) if n else st.m2
    grew = bool((m2 > st.m2).any())
    st.m2 = m2
    if grew and st.page_extra is not None:
        # NOTE: M grew: every page's MIPS extra coordinate changes (lazy growth of M); only the
        # "assign" routing keeps it, and it is rare after the prompt, so it is recomputed from the keys.
        P = st.num_pages
        ix.summarize_pages(torch.arange(P, device=dev)[None] < st.group_pages[:, None])
    changed = torch.zeros(G, st.pages.shape[1], dtype=torch.bool, device=dev)
    has_pages = st.group_pages > 0
    fresh = valid & ~has_pages[:, None] if ix.insert_mode == "assign" else valid
    routed = valid & ~fresh
    if bool(routed.any()):
        changed = _assign(ix, routed, s0, changed, x, space, sq)
    if bool(fresh.any()):
        changed = _new_leaves(ix, fresh, s0, changed, x, space, sq)
    P = st.num_pages
    return changed[:, :P].reshape(B, H, P)


def _transformed(ix: HierarchyIndex, space: Tensor, sq: Tensor, m2: Tensor) -> Tensor:
    """Clustering-space keys ``[G, n, D]`` -> MIPS-transformed ``[G, n, D + 1]`` under ``m2``."""
    if not ix.transform:
        return space
    return torch.cat([space, (m2[:, None] - sq).clamp_min(0).sqrt()[..., None]], dim=-1)


def _page_points(ix: HierarchyIndex) -> Tensor:
    """Page centroids in the (transformed) clustering space, ``[G, P, D(+1)]`` (``assign`` only)."""
    st = ix._state
    P = st.num_pages
    cent = st.page_smean[:, :P].float()
    if ix.transform:
        cent = torch.cat([cent, st.page_extra[:, :P, None].float()], dim=-1)
    return cent


def _assign(ix: HierarchyIndex, routed: Tensor, s0: int, changed: Tensor, x: Tensor, space: Tensor,
            sq: Tensor) -> Tensor:
    """Place new slots ``s0 + j`` (``routed`` ``[G, n]``) in pages with room.

    Each key's nearest page (clustering space) picks its cell; the key then goes to the nearest
    page *of that cell* with room (capacity-bounded assignment). Keys whose cell is full start new
    pages (:func:`_new_leaves`).
    """
    st, S = ix._state, ix.page_slots
    G, n = routed.shape
    P = st.num_pages
    new = _transformed(ix, space, sq, st.m2)  # [G, n, Dt]
    cent = _page_points(ix)  # [G, P, Dt]
    dist = torch.baddbmm((cent * cent).sum(-1)[:, None], new, cent.transpose(1, 2), alpha=-2.0)
    lens = st.page_len[:, :P].long()
    dist = dist.masked_fill((lens == 0)[:, None], float("inf"))  # [G, n, P]
    cell = st.page_cell[:, :P].long().gather(1, dist.argmin(-1))  # [G, n]
    room = (min(S, ix.insert_fill or S) - lens).clamp_min(0)
    allowed = (st.page_cell[:, None, :P] == cell[..., None]) & (room > 0)[:, None]
    spare = dist.masked_fill(~torch.isfinite(dist), 0).abs().amax() * 4 + 1  # worse than any page
    cost = torch.cat([dist.masked_fill(~allowed, float("inf")), spare.expand(G, n, 1)], dim=-1)
    cap = torch.cat([room, torch.full((G, 1), n, dtype=room.dtype, device=room.device)], dim=-1)
    dest_all = capacity_assign(cost, cap, routed)  # [G, n]; P = no room in the cell
    placed = routed & (dest_all < P)
    g, j = torch.nonzero(placed, as_tuple=True)
    dest = dest_all[g, j]
    _, rank = rank_within(g * P + dest, None, G * P)  # j ascends
    st.pages[g, dest, lens[g, dest] + rank] = (s0 + j).to(torch.int32)
    st.page_len.index_put_((g, dest), torch.ones_like(dest, dtype=torch.int32), accumulate=True)
    st.add_to_cells(g, st.page_cell[g, dest].long(), x[g, j], space[g, j] if st.whiten is not None else None)
    assigned = torch.zeros_like(changed)
    assigned[g, dest] = True
    ix.summarize_pages(assigned[:, :P])
    changed = changed | assigned
    overflow = routed & (dest_all == P)
    if bool(overflow.any()):
        changed = _new_leaves(ix, overflow, s0, changed, x, space, sq)
    return changed


def _new_leaves(ix: HierarchyIndex, fresh: Tensor, s0: int, changed: Tensor, x: Tensor, space: Tensor,
                sq: Tensor) -> Tensor:
    """New keys ``fresh`` ``[G, n]`` form pages of their own, each joining its nearest cell."""
    st, S = ix._state, ix.page_slots
    G, n = fresh.shape
    pts = _transformed(ix, space, sq, st.m2)
    # NOTE: each row's own leaf count (rows batched together may overflow by different amounts, and a
    # sequence must get the same pages whatever it is batched with): one k-means per distinct count.
    row_c = (fresh.sum(1) + ix.insert_leaf_tokens - 1).div(ix.insert_leaf_tokens, rounding_mode="floor")
    row_c = row_c.clamp_min(1)
    # NOTE: seeded by the tokens inserted so far, not by slots: slots count the batch's padding
    ix._inserted += n
    keys = ix._head_keys(*ix._shape, fresh.device)
    assignments = torch.full((G, n), -1, dtype=torch.int64, device=fresh.device)
    for c in row_c.unique().tolist():  # NOTE: a loop over distinct leaf counts, usually one
        rows = (row_c == c).nonzero()[:, 0]
        res = kmeans(pts[rows], c, iters=ix.iters, mask=fresh[rows], capacity=S, balanced_iters=1,
                     generator=torch.Generator().manual_seed(ix.config.seed + ix._inserted),
                     row_keys=keys[rows])
        assignments[rows] = res.assignments.long()
    C = int(row_c.max())
    g, j = torch.nonzero(fresh, as_tuple=True)
    leaf = assignments[g, j]
    used = torch.zeros(G, C, dtype=torch.bool, device=g.device)
    used[g, leaf] = True
    base = st.group_pages.clone()
    page = base[g] + used.long().cumsum(1)[g, leaf] - 1
    st.group_pages = st.group_pages + used.sum(1)
    st.reserve_pages(st.num_pages)
    Pcap = st.pages.shape[1]
    changed = torch.cat([changed, torch.zeros(G, Pcap - changed.shape[1], dtype=torch.bool,
                                              device=changed.device)], 1)
    _, rank = rank_within(g * Pcap + page, None, G * Pcap)
    st.pages[g, page, rank] = (s0 + j).to(torch.int32)
    st.page_len.index_put_((g, page), torch.ones_like(page, dtype=torch.int32), accumulate=True)
    changed[g, page] = True
    # cell: the nearest cell centroid (clustering space) of each new leaf, by its members' mean
    Ds = space.shape[-1]
    csum = st.cell_ssum if st.cell_ssum is not None else st.cell_sum
    cell_c = csum / st.cell_count.clamp_min(1)[..., None]  # [G, cells, D]
    leaf_sum = torch.zeros(G, C, Ds, device=g.device).index_put_((g, leaf), space[g, j], accumulate=True)
    ones = torch.ones_like(leaf, dtype=torch.float32)
    sizes = torch.zeros(G, C, device=g.device).index_put_((g, leaf), ones, accumulate=True)
    leaf_mean = leaf_sum / sizes.clamp_min(1)[..., None].to(leaf_sum.dtype)
    d = torch.cdist(leaf_mean, cell_c).masked_fill((st.cell_count == 0)[:, None], float("inf"))
    d = torch.where(torch.isinf(d).all(-1, keepdim=True), 0.0, d)
    best_cell = d.argmin(-1)  # [G, C]
    key_cell = best_cell[g, leaf]
    st.page_cell[g, page] = key_cell.to(torch.int32)
    ix.set_page_stats(g, page, x[g, j], space[g, j] if st.page_smean is not None else None)
    st.add_to_cells(g, key_cell, x[g, j], space[g, j] if st.whiten is not None else None)
    return changed
