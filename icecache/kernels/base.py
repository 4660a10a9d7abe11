"""The kernel backend contract and how a backend is chosen.

A backend bundles every device op icecache needs at decode time: sparse paged attention (plus
merging partial attention states), page gather/scatter between pools and staging buffers, and
page scoring against summaries with top-k. ``"reference"`` is plain torch (any device),
``"triton"`` runs Triton kernels on CUDA (or on CPU under ``TRITON_INTERPRET=1``), ``"auto"``
picks one at run time.

Which backend runs (first match wins):

1. an explicit name other than ``"auto"`` (``compose_policy(kernel="triton")``, ``get_backend("reference")``);
2. the environment variable ``ICECACHE_KERNEL`` (any registered name), read when ``"auto"`` is built;
3. ``"triton"`` when CUDA is available and ``import triton`` works, else ``"reference"``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from icecache.core.errors import ConfigError
from icecache.core.page_table import PageTable

ENV_VAR = "ICECACHE_KERNEL"

ScoreKind = Literal["centroid", "bounds"]
GroupReduce = Literal["max", "sum", "none"]


@runtime_checkable
class KernelBackend(Protocol):
    """Device ops used at decode time. Every method documents shapes and dtypes.

    Shapes: ``B`` batch rows, ``H_q`` query heads, ``H_kv`` KV heads (``G = H_q // H_kv``; query
    head ``q`` reads KV head ``q // G``), ``D`` head dim, ``S`` page size, ``R = B * H_kv`` page
    table rows (``r = b * H_kv + h``).
    """

    name: str

    def paged_decode_attention(
        self, query: Tensor, k_pool: Tensor, v_pool: Tensor, table: PageTable, *,
        scale: float | None = None, max_pages_per_row: int | None = None, softcap: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attention of one decode position over the pages each ``(b, kv head)`` row lists.

        ``query`` ``[B, H_q, D]``; ``k_pool``/``v_pool`` ``[num_slots, S, D]`` (one page per slot,
        pages owned per (sequence, layer, KV head)); ``table`` has ``R = B * H_kv`` rows and
        per-page lengths (valid slots come first). ``scale`` defaults to ``1/sqrt(D)``.
        ``max_pages_per_row`` is a hint (an upper bound) that spares a device sync. ``softcap``
        (optional; callers pass it only when set) caps each scaled score: ``cap * tanh(s / cap)``
        (Gemma 2), and ``lse`` is over the capped scores.
        Returns ``out`` ``[B, H_q, D]`` in ``query.dtype`` and ``lse`` ``[B, H_q]`` float32, the
        natural-log log-sum-exp of the scaled scores. A row with no pages gives ``out = 0``,
        ``lse = -inf`` (so merging it is a no-op).
        """

    def merge_attention_states(self, o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor
                               ) -> tuple[Tensor, Tensor]:
        """Combine attention over two disjoint key sets: ``o`` ``[..., D]``, ``lse`` ``[...]`` float32."""

    def gather_pages(self, pool: Tensor, slot_ids: Tensor, *, out: Tensor | None = None,
                     check: bool = True) -> Tensor:
        """``out[i] = pool[slot_ids[i]]``. ``pool`` ``[num_slots, *page]``, ``slot_ids`` int ``[n]``,
        ``out`` ``[n, *page]`` (allocated when ``None``; e.g. a staging buffer). ``check=False`` skips
        the id range check (a device sync)."""

    def scatter_pages(self, pool: Tensor, slot_ids: Tensor, src: Tensor, *, check: bool = True) -> None:
        """In place: ``pool[slot_ids[i]] = src[i]``; ``slot_ids`` must be distinct."""

    def score_pages(
        self, query: Tensor, summary: Tensor | tuple[Tensor, Tensor], *, kind: ScoreKind = "centroid",
        page_mask: Tensor | None = None, group_reduce: GroupReduce = "max",
    ) -> Tensor:
        """Score pages against queries, batched over any leading dims (layers, batch rows).

        ``query`` ``[..., H_q, D]``; ``summary`` is centroids ``[..., H_kv, P, D]`` (``kind="centroid"``,
        score ``q . c``) or a ``(min, max)`` pair of such tensors (``kind="bounds"``, Quest's
        ``sum_i max(q_i * min_i, q_i * max_i)``). ``page_mask`` bool ``[..., H_kv, P]``: False pages
        score ``-inf``. ``group_reduce`` combines the ``G`` query heads of a KV head (``max``,
        ``sum``) into ``[..., H_kv, P]``, or keeps them (``none``: ``[..., H_q, P]``). float32.
        """

    def topk_pages(
        self, query: Tensor, summary: Tensor | tuple[Tensor, Tensor], k: int, *, kind: ScoreKind = "centroid",
        page_mask: Tensor | None = None, group_reduce: GroupReduce = "max",
    ) -> tuple[Tensor, Tensor]:
        """The ``k`` best pages of every row of :meth:`score_pages`: ``(scores, page_ids)``, float32 and
        int64 ``[..., H, k]``, best first; ids of masked-out pages (score ``-inf``) are ``-1``."""


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def auto_backend_name() -> str:
    """What ``"auto"`` resolves to, following the precedence in this module's docstring."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env != "auto":
        return env
    if torch.cuda.is_available() and triton_available():
        return "triton"
    return "reference"


def get_backend(name: str = "auto") -> KernelBackend:
    """Build a backend by registered name (``"auto"``, ``"reference"``, ``"triton"`` or a plugin's)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"kernel backend name must be a non-empty string, got {name!r}")
    if name == "auto":
        name = auto_backend_name()
    if name == "reference":
        from icecache.kernels.backends import ReferenceBackend

        return ReferenceBackend()
    if name == "triton":
        from icecache.kernels.backends import TritonBackend

        return TritonBackend()
    from icecache.core.plugins import build_registry

    return build_registry().create("kernel", name)
