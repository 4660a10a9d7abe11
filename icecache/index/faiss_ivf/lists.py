"""The FAISS side of the IVF page index: one IVF per (batch row, KV head), trained, grown, searched.

Keys reach FAISS as float32 numpy arrays. With ``metric="ip"`` FAISS runs its inner-product IVF on
the raw keys (its k-means is then spherical: unit centroids, so big-norm centroids do not swallow
every key). With ``metric="mips"`` keys are first mapped by the MIPS transform
(:mod:`icecache.index.transform`) with ``M`` fixed when the group is trained (a later key beyond
``M`` gets extra coordinate 0), and FAISS's L2 IVF then ranks keys by inner product.

NOTE: FAISS's ``add`` is ``quantizer.assign`` followed by ``add_core``; the two halves are called
here (``add_preassigned``) so the index learns each key's list without reading the lists back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from attrs import define, field
from torch import Tensor

from icecache.index.transform import mips_keys, mips_queries

#: the most results (and probes) a FAISS GPU IVF search returns
GPU_MAX_K = 2048


@define
class IvfLists:
    """Per-group FAISS IVF indexes (``None`` until the group has keys to train on).

    ``pq_m``: None for ``IndexIVFFlat``; else ``IndexIVFPQ`` with ``pq_m`` sub-quantizers of ``pq_bits``
    bits (vectors zero-padded to a multiple of ``pq_m``; zeros change no distance).
    """

    faiss: Any
    dim: int
    metric: str
    iters: int
    seed: int
    heads: int = 1  # KV heads: group g's random numbers are keyed by its head g % heads, not its row
    pq_m: int | None = None
    pq_bits: int = 8
    gpu: Any = None  # faiss.StandardGpuResources when the GPU build is used
    gpu_device: int = 0
    indexes: list[Any] = field(factory=list)
    m2: list[float] = field(factory=list)

    @property
    def width(self) -> int:
        d = self.dim + (self.metric == "mips")
        return d if self.pq_m is None else math.ceil(d / self.pq_m) * self.pq_m

    def reset(self, groups: int) -> None:
        self.indexes = [None] * groups
        self.m2 = [0.0] * groups

    def trained(self, g: int) -> bool:
        return self.indexes[g] is not None

    def nlist(self, g: int) -> int:
        return int(self.indexes[g].nlist) if self.indexes[g] is not None else 0

    def _host(self, x: Tensor) -> np.ndarray:
        if x.shape[-1] < self.width:
            x = torch.nn.functional.pad(x, (0, self.width - x.shape[-1]))
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())

    def key_vectors(self, g: int, keys: Tensor) -> np.ndarray:
        """``keys`` float ``[n, D]`` of group ``g`` as FAISS vectors ``[n, width]``."""
        if self.metric == "mips":
            # NOTE: no key counts towards M here: M stays the one the lists were trained with
            none = torch.zeros(keys.shape[0], dtype=torch.bool, device=keys.device)
            keys = mips_keys(keys.float(), none, torch.tensor(self.m2[g], device=keys.device))[0]
        return self._host(keys)

    def query_vectors(self, q: Tensor) -> np.ndarray:
        """Queries float ``[Gq, D]`` as FAISS vectors ``[Gq, width]``."""
        return self._host(mips_queries(q.float()) if self.metric == "mips" else q)

    def train(self, g: int, keys: Tensor, nlist: int, max_norm_sq: float) -> None:
        """Train group ``g``'s lists (and PQ codebooks) on ``keys`` float ``[n, D]``, ``n >= nlist``;
        ``max_norm_sq``: the MIPS transform's ``M^2`` (the largest squared norm of the group's keys)."""
        faiss = self.faiss
        self.m2[g] = max_norm_sq
        x = self.key_vectors(g, keys)
        metric = faiss.METRIC_L2 if self.metric == "mips" else faiss.METRIC_INNER_PRODUCT
        d = self.width
        quantizer = faiss.IndexFlatL2(d) if self.metric == "mips" else faiss.IndexFlatIP(d)
        if self.pq_m is None:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        else:
            # NOTE: a codebook of 2**bits centroids needs that many training points: a short prompt gets
            # fewer bits (its codes are then near exact anyway); a single key is repeated
            bits = max(1, min(self.pq_bits, int(math.log2(len(x)))))
            index = faiss.IndexIVFPQ(quantizer, d, nlist, self.pq_m, bits, metric)
            index.pq.cp.min_points_per_centroid = 1
            # NOTE: 8 keys per code word train the codebooks in half the time of faiss's 256, and it is
            # most of the build (a 4k-key head: 0.56 s against 1.07 s, against 0.05 s for the lists)
            index.pq.cp.max_points_per_centroid = 8
            index.pq.cp.niter = self.iters
            index.pq.cp.seed = self.seed + g % self.heads
            if len(x) < 1 << bits:
                x = np.tile(x, (2, 1))
        # NOTE: page-sized lists hold ~8 keys, far below faiss's default 39 points per centroid (whose
        # warning would fire on every build); the sample size is ours (train_tokens), not faiss's.
        index.cp.min_points_per_centroid = 1
        index.cp.max_points_per_centroid = 1 << 30
        index.cp.niter = self.iters
        index.cp.seed = self.seed + g % self.heads
        if self.gpu is not None:
            index = faiss.index_cpu_to_gpu(self.gpu, self.gpu_device, index)
        index.train(x)
        self.indexes[g] = index

    def add(self, g: int, keys: Tensor, ids: np.ndarray) -> np.ndarray:
        """Add ``keys`` float ``[n, D]`` with ids (slots) int64 ``[n]``; returns each key's list ``[n]``."""
        index, x = self.indexes[g], self.key_vectors(g, keys)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.gpu is not None:  # NOTE: GPU indexes have no add_core: assign, then add (same lists)
            lists = index.quantizer.search(x, 1)[1][:, 0]
            index.add_with_ids(x, ids)
            return lists.astype(np.int64)
        from faiss.contrib.ivf_tools import add_preassigned

        lists = index.quantizer.assign(x, 1)[:, 0].astype(np.int64)
        add_preassigned(index, x, lists, ids)
        return lists

    def search(self, g: int, q: Tensor, nprobe: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best keys of group ``g`` for queries ``q`` float ``[Gq, D]`` among its ``nprobe``
        nearest lists: ``(q.k estimate float32 [Gq, k], ids int64 [Gq, k])``, ``-1`` past the end.
        Exact for ``IndexIVFFlat`` (up to keys beyond ``M``), the PQ estimate for ``IndexIVFPQ``."""
        index = self.indexes[g]
        if self.gpu is not None:
            nprobe, k = min(nprobe, GPU_MAX_K), min(k, GPU_MAX_K)
        index.nprobe = nprobe
        dist, ids = index.search(self.query_vectors(q), k)
        if self.metric == "mips":
            # |T_Q(q) - T_K(k)|^2 = 1 + M^2 - 2 q.k / |q|  (transform.py)
            norm = q.float().norm(dim=-1, keepdim=True).cpu().numpy()
            dist = norm * (1.0 + self.m2[g] - np.where(ids >= 0, dist, 0.0)) / 2.0
            dist = np.where(ids >= 0, dist, -np.inf)
        return dist, ids
