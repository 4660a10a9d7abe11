"""Prioritized DCI search over one candidate set (Li & Malik, "Fast k-Nearest Neighbour Search via
Prioritized DCI", ICML 2017), the reference form used by IceCache's DCI tree.

``L`` composite indices of ``m`` simple indices each; a simple index is the candidates sorted by
their projection on one random unit direction. A query pops, from one priority queue per composite
index, the point whose projection is next closest to the query's on some direction of that
composite; a point seen on all ``m`` directions of a composite becomes a candidate and its true
distance is computed. It stops after ``max_visits`` pops or ``max_candidates`` candidates and returns
the ``k`` nearest candidates. Python + heapq on purpose: it is a readable reference, not a fast path.
"""

from __future__ import annotations

import heapq

import numpy as np


def dci_search(points: np.ndarray, proj: np.ndarray, query: np.ndarray, qproj: np.ndarray, *, k: int,
               num_simple: int, max_visits: int, max_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` approximate nearest of ``points`` ``[c, d]`` to ``query`` ``[d]``.

    ``proj``: ``[c, L * m]`` projections of the points on the ``L * m`` directions, ``qproj``:
    ``[L * m]`` the query's. Returns ``(indices into points, squared distances)``, nearest first.
    """
    c = points.shape[0]
    if c == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    m = num_simple
    L = proj.shape[1] // m
    order = np.argsort(proj, axis=0, kind="stable")  # [c, L*m] simple indices
    sorted_proj = np.take_along_axis(proj, order, axis=0)
    heaps: list[list[tuple[float, int, int, int]]] = []
    for comp in range(L):
        heap: list[tuple[float, int, int, int]] = []
        for j in range(comp * m, comp * m + m):
            pos = int(np.searchsorted(sorted_proj[:, j], qproj[j]))
            # one cursor walking down, one walking up the sorted projections of direction j
            if pos > 0:
                heap.append((abs(sorted_proj[pos - 1, j] - qproj[j]), j, pos - 1, -1))
            if pos < c:
                heap.append((abs(sorted_proj[pos, j] - qproj[j]), j, pos, +1))
        heapq.heapify(heap)
        heaps.append(heap)
    seen = [np.zeros(c, dtype=np.int64) for _ in range(L)]
    found: dict[int, float] = {}
    visits = 0
    while visits < max_visits and len(found) < max_candidates:
        progressed = False
        for comp in range(L):
            heap = heaps[comp]
            if not heap:
                continue
            progressed = True
            _, j, pos, step = heapq.heappop(heap)
            point = int(order[pos, j])
            visits += 1
            seen[comp][point] += 1
            if seen[comp][point] == m and point not in found:
                diff = points[point] - query
                found[point] = float(diff @ diff)
            nxt = pos + step
            if 0 <= nxt < c:
                heapq.heappush(heap, (abs(sorted_proj[nxt, j] - qproj[j]), j, nxt, step))
        if not progressed:
            break
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    ids = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
    dist = np.fromiter(found.values(), dtype=np.float64, count=len(found))
    best = np.argsort(dist, kind="stable")[:k]
    return ids[best], dist[best]
