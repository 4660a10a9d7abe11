"""Built-in clusterers and page indexes, registered through the same hooks as third-party plugins.

NOTE: factories import their modules lazily so that loading the plugin manager stays cheap and a
missing optional library (faiss) only matters when that backend is asked for.
"""

from __future__ import annotations

from typing import Any

from icecache.core.hookspecs import hookimpl


def _faiss_kmeans(**options: Any) -> Any:
    from icecache.index.clustering.faiss_backend import FaissKMeans

    return FaissKMeans(**options)


def _online_kmeans(**options: Any) -> Any:
    from icecache.index.clustering.online import OnlineKMeans

    return OnlineKMeans(**options)


def _balanced_kmeans(**options: Any) -> Any:
    from icecache.index.clustering.kmeans import BalancedKMeans

    return BalancedKMeans(**options)


def _hierarchy(config: Any, **options: Any) -> Any:
    from icecache.index.hierarchy.index import HierarchyIndex

    return HierarchyIndex(config, **options)


def _dci(config: Any, **options: Any) -> Any:
    from icecache.index.dci.index import PrioritizedDCIIndex

    return PrioritizedDCIIndex(config, **options)


def _faiss_ivf(config: Any, **options: Any) -> Any:
    from icecache.index.faiss_ivf.index import FaissIvfIndex

    return FaissIvfIndex(config, **options)


def _faiss_ivfpq(config: Any, **options: Any) -> Any:
    from icecache.index.faiss_ivf.index import FaissIvfIndex

    return FaissIvfIndex(config, codec="pq", **options)


@hookimpl
def icecache_register_clusterers(register):
    register("balanced-kmeans", _balanced_kmeans,
             description="batched torch k-means in the MIPS-transformed space with capacity-bounded clusters")
    register("online-kmeans", _online_kmeans,
             description="streaming mini-batch k-means in torch that absorbs new keys")
    register("faiss-kmeans", _faiss_kmeans,
             description="faiss k-means (inner-product / transformed space); GPU build when installed")


@hookimpl
def icecache_register_indexes(register):
    register("hierarchy", _hierarchy,
             description="k-means tree over MIPS-transformed keys; leaves are pages; batched descent")
    register("dci", _dci,
             description="Prioritized DCI (multi-level random projections, priority queues): reference")
    register("faiss-ivf", _faiss_ivf,
             description="FAISS IVF per KV head: inverted lists (capped at the page size) are the pages")
    register("faiss-ivfpq", _faiss_ivfpq,
             description="faiss-ivf with IVF-PQ codes: candidates found by compressed (PQ) scores")
