"""The clusterer contract: batched clustering of keys into groups (pages) of bounded size.

Shapes: ``G`` independent groups (``B * H_kv``, or ``layers * B * H_kv``), ``N`` points per group,
``D`` dims, ``C`` clusters per group.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from attrs import frozen
from torch import Tensor


@frozen(kw_only=True)
class Clustering:
    """A clustering of ``[G, N, D]`` points.

    * ``assignments``: int64 ``[G, N]``, cluster of each point in ``[0, C)``; ``-1`` for masked points.
    * ``centroids``: float ``[G, C, D]``, mean of each cluster's points (zeros for empty clusters).
    * ``sizes``: int64 ``[G, C]``, points per cluster (``<= capacity`` when one was asked for).
    """

    assignments: Tensor
    centroids: Tensor
    sizes: Tensor

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[1]


@runtime_checkable
class Clusterer(Protocol):
    """Groups ``[G, N, D]`` points into ``num_clusters`` clusters per group.

    ``capacity``: when given, no cluster gets more than ``capacity`` points (pages of ``page_size``
    slots); ``num_clusters * capacity`` must be ``>=`` the valid points of every group.
    ``mask``: bool ``[G, N]``, False for points to leave out (assigned ``-1``).
    Built by a factory registered through ``icecache_register_clusterers``: ``factory(**options)``.
    """

    name: str

    @property
    def available(self) -> bool:
        """False when a backend's library is missing (then :meth:`fit` raises a clear error)."""

    def fit(self, points: Tensor, num_clusters: int, *, capacity: int | None = None,
            mask: Tensor | None = None) -> Clustering:
        """Cluster ``points`` ``[G, N, D]``; deterministic for a given seed."""
