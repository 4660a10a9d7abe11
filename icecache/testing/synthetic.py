"""Synthetic inputs with known structure, plain torch (no hypothesis needed).

The hypothesis strategies in :mod:`icecache.testing.strategies` draw the parameters and a seed and
call these functions, so a failing example is reproduced exactly by the same call.

Shapes: ``B`` batch rows, ``H_kv`` KV heads, ``G`` query heads per KV head, ``H_q = H_kv * G``,
``N`` tokens, ``D`` head dim, ``C`` clusters.
"""

from __future__ import annotations

from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from icecache.core.errors import ConfigError
from icecache.core.page_table import PageTable


@frozen(kw_only=True)
class ClusteredKV:
    """Keys drawn around ``C`` centroids per ``(b, kv head)``, with optional outliers.

    * ``keys``, ``values``: ``[B, H_kv, N, D]`` in the requested dtype.
    * ``centroids``: float32 ``[B, H_kv, C, D]``.
    * ``assignments``: int64 ``[B, H_kv, N]``, the cluster of each key; ``-1`` marks an outlier.
    """

    keys: Tensor
    values: Tensor
    centroids: Tensor
    assignments: Tensor

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[2]

    def __repr__(self) -> str:  # NOTE: hypothesis prints examples; a tensor dump would bury them
        B, H, N, D = self.keys.shape
        return (f"ClusteredKV(B={B}, H_kv={H}, N={N}, D={D}, clusters={self.num_clusters}, "
                f"outliers={int((self.assignments < 0).sum())}, dtype={self.keys.dtype})")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # NOTE: hypothesis pretty-prints attrs by fields
        p.text(repr(self))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")


def make_clustered_kv(
    batch: int, kv_heads: int, num_tokens: int, head_dim: int, *,
    num_clusters: int = 4, spread: float = 0.1, norm_range: tuple[float, float] = (0.5, 2.0),
    outlier_fraction: float = 0.0, outlier_scale: float = 8.0, contiguous: bool = False,
    dtype: torch.dtype = torch.float32, seed: int = 0,
) -> ClusteredKV:
    """Keys grouped around ``num_clusters`` centroids per ``(b, kv head)``.

    Centroids point in random directions with norms uniform in ``norm_range``; a key is its
    centroid plus Gaussian noise of relative size ``spread`` (``0``: every key equals its centroid).
    ``outlier_fraction`` of the keys are replaced by random directions of norm
    ``outlier_scale * max centroid norm`` (the large-norm keys real models show). ``contiguous``
    puts each cluster's keys in one run of positions (what position-contiguous pages capture
    best); otherwise clusters are interleaved at random. Values are standard normal.
    """
    _check_positive(batch=batch, kv_heads=kv_heads, num_tokens=num_tokens, head_dim=head_dim,
                    num_clusters=num_clusters)
    lo, hi = norm_range
    if not 0 < lo <= hi:
        raise ConfigError(f"norm_range must satisfy 0 < low <= high, got {norm_range!r}")
    if spread < 0:
        raise ConfigError(f"spread must be >= 0, got {spread!r}")
    if not 0.0 <= outlier_fraction <= 1.0:
        raise ConfigError(f"outlier_fraction must lie in [0, 1], got {outlier_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    B, H, N, D, C = batch, kv_heads, num_tokens, head_dim, num_clusters
    directions = torch.nn.functional.normalize(torch.randn(B, H, C, D, generator=g), dim=-1)
    norms = lo + (hi - lo) * torch.rand(B, H, C, 1, generator=g)
    centroids = directions * norms  # [B, H, C, D]
    if contiguous:
        # cluster c owns positions [c*N/C, (c+1)*N/C)
        assign = (torch.arange(N) * C // N).expand(B, H, N).clone()
    else:
        assign = torch.randint(0, C, (B, H, N), generator=g)
    keys = torch.gather(centroids, 2, assign.unsqueeze(-1).expand(B, H, N, D))  # [B, H, N, D]
    noise = torch.randn(B, H, N, D, generator=g) / D ** 0.5
    keys = keys + spread * keys.norm(dim=-1, keepdim=True) * noise
    if outlier_fraction > 0:
        is_out = torch.rand(B, H, N, generator=g) < outlier_fraction
        big = outlier_scale * norms.amax(dim=2, keepdim=True)  # [B, H, 1, 1]
        out_keys = torch.nn.functional.normalize(torch.randn(B, H, N, D, generator=g), dim=-1) * big
        keys = torch.where(is_out.unsqueeze(-1), out_keys, keys)
        assign = torch.where(is_out, -1, assign)
    values = torch.randn(B, H, N, D, generator=g)
    return ClusteredKV(keys=keys.to(dtype), values=values.to(dtype), centroids=centroids, assignments=assign)


def query_for_cluster(kv: ClusteredKV, cluster: int | Tensor, *, group_size: int = 1, noise: float = 0.1,
                      scale: float = 4.0, seed: int = 0) -> Tensor:
    """Queries ``[B, H_q, D]`` whose inner product favours the keys of one cluster.

    ``cluster``: an int (the same cluster everywhere), int64 ``[B, H_kv]`` (one per KV head, shared
    by its ``group_size`` query heads) or ``[B, H_q]`` (one per query head). A query is the unit
    direction of its cluster's centroid times ``scale``, plus Gaussian noise of relative size
    ``noise``. Returned in the keys' dtype.
    """
    _check_positive(group_size=group_size)
    B, H, C, D = kv.centroids.shape
    Hq = H * group_size
    target = torch.as_tensor(cluster, dtype=torch.int64)
    if target.dim() == 0:
        target = target.expand(B, Hq)
    elif tuple(target.shape) == (B, H):
        target = target.repeat_interleave(group_size, dim=1)  # [B, H_q]
    elif tuple(target.shape) != (B, Hq):
        raise ConfigError(f"cluster must be an int, [B, H_kv]={[B, H]} or [B, H_q]={[B, Hq]}, "
                          f"got shape {list(target.shape)}")
    if bool(((target < 0) | (target >= C)).any()):
        raise ConfigError(f"cluster ids must lie in [0, {C}), got {target.unique().tolist()}")
    g = torch.Generator().manual_seed(seed)
    per_q = kv.centroids.repeat_interleave(group_size, dim=1)  # [B, H_q, C, D]
    chosen = torch.gather(per_q, 2, target[..., None, None].expand(B, Hq, 1, D)).squeeze(2)  # [B, H_q, D]
    q = torch.nn.functional.normalize(chosen, dim=-1)
    q = q + noise * torch.randn(B, Hq, D, generator=g) / D ** 0.5
    return (q * scale).to(kv.keys.dtype)


def left_padding(batch: int, num_tokens: int, *, max_pad: int | None = None, seed: int = 0) -> Tensor:
    """int64 ``[batch]``: the first real position of each row, in ``[0, min(max_pad, N - 1)]``."""
    _check_positive(batch=batch, num_tokens=num_tokens)
    top = num_tokens - 1 if max_pad is None else min(max_pad, num_tokens - 1)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, top + 1, (batch,), generator=g)


def random_page_table(rows: int, page_size: int, num_pages: int, *, max_pages_per_row: int = 8,
                      partial: str = "any", allow_empty_rows: bool = True, seed: int = 0) -> PageTable:
    """A valid :class:`PageTable` over a pool of ``num_pages`` pages, each page used at most once.

    ``partial``: ``"any"`` (per-page lengths, pages partial anywhere, ``page_lens`` set),
    ``"last"`` (flashinfer: only each row's last page partial, ``page_lens=None``) or ``"none"``
    (all pages full).
    """
    _check_positive(rows=rows, page_size=page_size, num_pages=num_pages)
    if partial not in ("any", "last", "none"):
        raise ConfigError(f"partial must be 'any', 'last' or 'none', got {partial!r}")
    if not allow_empty_rows and num_pages < rows:
        raise ConfigError(f"num_pages={num_pages} cannot give each of {rows} rows a page of its own")
    g = torch.Generator().manual_seed(seed)
    lo = 0 if allow_empty_rows else 1
    hi = max(lo, min(max_pages_per_row, num_pages // rows))
    counts = torch.randint(lo, hi + 1, (rows,), generator=g)
    nnz = int(counts.sum())
    indices = torch.randperm(num_pages, generator=g)[:nnz]
    indptr = torch.zeros(rows + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    last = torch.where(counts > 0, torch.randint(1, page_size + 1, (rows,), generator=g), 0)
    if partial == "none":
        last = torch.where(counts > 0, page_size, 0)
    page_lens = None
    if partial == "any":
        page_lens = torch.randint(1, page_size + 1, (nnz,), generator=g)
        nonempty = counts > 0
        last = torch.zeros(rows, dtype=torch.int64)
        last[nonempty] = page_lens[indptr[1:][nonempty] - 1]
    return PageTable(indptr=indptr, indices=indices, last_page_len=last, page_size=page_size,
                     page_lens=page_lens)
