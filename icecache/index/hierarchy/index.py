"""The hierarchy page index: cells (upper level) of pages (leaves) over MIPS-transformed keys.

Build (prefill): :func:`~icecache.index.hierarchy.build.build_layout` for every head at once.
Leaves are sized to their pages: a page has ``page_slots`` slots (default ``leaf_tokens``), and the
capacity-bounded k-means fills them, so pages are (nearly) full and storage holds no padding.
Insert (decode, :mod:`~icecache.index.hierarchy.insert`): new keys form new leaves among themselves
(``insert_leaf_tokens`` each, default half a build leaf), each joining its nearest cell; or
(``insert_mode="assign"``) they join the nearest page of their cell with room and the overflow forms
new leaves. A page's tokens never move, so storage only appends.
Query (:mod:`~icecache.index.hierarchy.query`, a three-stage descent): cells are ranked by a Gaussian
estimate of their attention mass and kept until they hold ``cell_candidates x max_tokens`` tokens;
their pages are ranked by a centroid estimate and the best, holding ``candidates x max_tokens``
tokens, are rescored exactly from their keys; pages are then taken greedily by mass per token within
the token budget.

Keys: the index holds none of its own when it is given a :class:`~icecache.core.keys.KeyReader` (an
``IceCache`` layer's store-backed reader): the exact rescoring and the summaries of changed pages read
keys through it. Without one (standalone use) it keeps a :class:`~icecache.core.keys.KeyCopy`-like
copy of the keys it was given, in ``key_dtype``.

GQA merge (``gqa="softmax-sum"``): each query head's page masses are normalized over the candidate
pages (a softmax of the page log-masses) and summed over the group's heads; pages are then ranked by
mass per token. This maximizes the group-averaged attention mass a budget captures (the recall
metric) better than a max of raw scores, which lets one head with a peaked distribution dominate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from attrs import define, field
from attrs.validators import in_, instance_of
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, TensorSpecError
from icecache.core.keys import KeyReader, gather_positions
from icecache.core.signatures import accepts_keyword
from icecache.core.validators import positive
from icecache.index.base import PageHits, PageSummaries
from icecache.index.hierarchy.build import build_layout
from icecache.index.hierarchy.state import IndexState, round_to
from icecache.index.summaries import summarize_layout
from icecache.selectors.types import PageLayout

PAGE_ESTIMATES = ("centroid", "gaussian")
CANDIDATE_ORDERS = ("merged", "per-head")
SCORINGS = ("exact", "centroid")
GQA_MERGES = ("softmax-sum", "max")
INSERT_MODES = ("assign", "new-leaf")


def _positive_float(instance, attribute, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{attribute.name} must be a positive number, got {value!r}")


def check_keys(keys: Tensor, name: str = "keys") -> None:
    if not isinstance(keys, Tensor) or keys.dim() != 4 or not keys.is_floating_point():
        got = f"{keys.dtype} {tuple(keys.shape)}" if isinstance(keys, Tensor) else type(keys).__name__
        raise TensorSpecError(f"{name} must be a float [B, H_kv, N, D] tensor, got {got}")


def normalize_token_ids(token_ids: Tensor | None, B: int, H: int, n: int, device: torch.device) -> Tensor:
    """Token ids as int64 ``[B * H, n]`` from ``None`` (``0..n-1``), ``[n]`` or ``[B, H, n]``."""
    if token_ids is None:
        return torch.arange(n, device=device).expand(B * H, n).clone()
    if not isinstance(token_ids, Tensor) or token_ids.is_floating_point() or token_ids.dtype == torch.bool:
        raise TensorSpecError(f"token_ids must be an integer tensor, got {token_ids!r:.80}")
    if token_ids.shape == (n,):
        return token_ids.to(device, torch.int64).expand(B * H, n).clone()
    if token_ids.shape != (B, H, n):
        raise TensorSpecError(
            f"token_ids must have shape [{n}] or [{B}, {H}, {n}], got {tuple(token_ids.shape)}")
    return token_ids.to(device, torch.int64).reshape(B * H, n).clone()


def query_whitening(queries: Tensor) -> Tensor:
    """``[G, D, D]`` symmetric square root of the queries' second moment ``E[q q^T]`` (trace ``D``).

    Clustering ``k @ W`` minimizes the *expected squared score error* ``E_q[(q.(k - c))^2]`` of a page
    centroid ``c``: keys that score alike for the queries actually seen share a page.
    """
    G, Q, D = queries.shape
    q = queries.float()
    cov = q.transpose(1, 2) @ q / max(Q, 1)  # [G, D, D]
    cov = cov * (D / torch.diagonal(cov, dim1=1, dim2=2).sum(-1).clamp_min(1e-12))[:, None, None]
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(1e-4 * evals.amax(-1, keepdim=True).clamp_min(1e-12))
    return evecs @ torch.diag_embed(evals.sqrt()) @ evecs.transpose(1, 2)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads (None: unchanged), restoring the previous count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


KEY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SUMMARY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SUMMARY_MATMULS = ("auto", "float32", "stored")


def fast_bfloat16_products(device: torch.device) -> bool:
    """Whether products in bfloat16 beat converting to float32 first on ``device``: on CUDA, and on a
    CPU whose oneDNN has bfloat16 kernels (AVX512 or newer). On an AVX2-only CPU a bfloat16 ``bmm`` ran
    13x slower than a float32 one (8k keys x 4 query heads x 8 KV heads: 109 vs 8.2 ms)."""
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def _dtype_name(table: dict[str, torch.dtype], what: str):
    def check(instance, attribute, value) -> None:
        if value is not None and value not in table:
            raise ConfigError(f"{what} must be one of {sorted(table)}, got {value!r}")
    return check


@define
class HierarchyIndex:
    """Two-level index (cells of pages) over MIPS-transformed keys; see the module docstring.

    Options: ``leaf_tokens`` target keys per page (smaller leaves raise recall at a budget),
    ``page_slots`` slots per page (default ``leaf_tokens``: leaves sized to their pages, no padding; at
    most ``config.page_size``; larger lets leaves vary in size up to it, at the cost of part-empty
    pages), ``cell_tokens`` keys per cell, ``iters`` k-means iterations,
    ``insert_mode``/``insert_leaf_tokens``/``insert_fill``: inserted keys form new leaves of about
    ``insert_leaf_tokens`` ("new-leaf", default) or join the nearest page of their cell holding fewer
    than ``insert_fill`` tokens ("assign", overflow forms new leaves),
    ``candidates`` how many times ``max_tokens`` the exact rescoring looks at, ``cell_candidates``
    how many times ``max_tokens`` the kept cells hold (the cell level prunes only beyond it), ``scoring``
    ("exact" | "centroid"), ``bound_candidates`` each query head's cells and pages with the highest
    ``q.k`` upper bound that are kept and rescored whatever their estimate (0: off), ``gqa``
    ("softmax-sum" | "max"), ``transform`` (cluster in the MIPS-transformed space),
    ``summary_dtype`` ("bfloat16" | "float32": the page means and bounds; bounds are rounded outward),
    ``summary_matmul`` ("stored": the query's products with the page summaries in ``summary_dtype``,
    4-5x faster in bfloat16 on a CPU with AVX512-BF16, products rounded to it; "float32": converted
    first, 1.5x faster on an AVX2-only CPU; "auto", the default: "stored" where
    :func:`fast_bfloat16_products` says so, else "float32"),
    ``key_copy`` (None: read keys through the reader given to ``build``, or keep a float32 copy when
    none is given; a dtype name: always keep a copy in that dtype), ``threads`` (intra-op threads while
    building/inserting/querying, restored after; None leaves torch's setting alone).
    NOTE: on an oversubscribed CPU, ``threads=1`` ran the build 3-10x faster than 2 threads (the
    many small ops spin-wait for a descheduled sibling thread).
    """

    config: CacheConfig = field(validator=instance_of(CacheConfig))
    leaf_tokens: int = field(validator=positive)
    page_slots: int = field(validator=positive)
    cell_tokens: int = field(default=128, validator=positive)
    iters: int = field(default=4, validator=positive)
    init: str = field(default="random", validator=in_(("random", "kmeans++")))
    # NOTE: 6, not 4: with 4x the budget rescored, a page holding one needle key among unrelated ones
    # (low centroid score) fell out of the candidates at 8k while exact scoring ranked it first for one
    # query head; icecache@256 answered 7 of 9 8k niah_noise samples, 9 of 9 with 8 (docs/index.md).
    # 6 (since 2026-12-03, with the bound candidates on) answers what 8 answers on the 4k suite and the
    # 8k niah_noise samples, and rescores a quarter fewer keys (docs/benchmarks.md).
    candidates: float = field(default=6.0, validator=_positive_float)
    cell_candidates: float = field(default=32.0, validator=_positive_float)
    # NOTE: a copying head puts ~all its attention on one needle key; in a page of unrelated keys the
    # centroid hides it (8k niah_noise: 0.98 of a head's mass on the needle, none selected). The
    # element-wise bound max_k q.k over a page's min/max does not: each query head's best pages by it
    # are rescored exactly too (docs/index.md). 8, not 4: a layer-7 head with 0.95 of its mass on a
    # needle digit had that page 8th by the bound (8k niah_single, a digit miscopied with 4).
    bound_candidates: int = field(default=8, validator=instance_of(int))
    scoring: str = field(default="exact", validator=in_(SCORINGS))
    page_estimate: str = field(default="centroid", validator=in_(PAGE_ESTIMATES))
    candidate_order: str = field(default="merged", validator=in_(CANDIDATE_ORDERS))
    gqa: str = field(default="softmax-sum", validator=in_(GQA_MERGES))
    insert_mode: str = field(default="new-leaf", validator=in_(INSERT_MODES))
    insert_leaf_tokens: int = field(validator=positive)
    insert_fill: int | None = field(default=None)
    transform: bool = field(default=True)
    summary_dtype: str = field(default="bfloat16", validator=_dtype_name(SUMMARY_DTYPES, "summary_dtype"))
    summary_matmul: str = field(default="auto", validator=in_(SUMMARY_MATMULS))
    key_copy: str | None = field(default=None, validator=_dtype_name(KEY_DTYPES, "key_copy"))
    seed: int | None = field(default=None)
    threads: int | None = field(default=None)
    name: str = field(default="hierarchy", init=False)
    _state: IndexState | None = field(default=None, init=False, repr=False)
    _shape: tuple[int, int] = field(default=(0, 0), init=False, repr=False)
    _reader: KeyReader | None = field(default=None, init=False, repr=False)
    _inserted: int = field(default=0, init=False, repr=False)  # slots added since the build

    @leaf_tokens.default
    def _leaf_default(self) -> int:
        # NOTE: measured on the real model, 8-token leaves gain ~0.01 attention recall at budget 256
        # over 16-token ones (docs/index.md).
        return max(1, self.config.page_size // 2)

    @page_slots.default
    def _slots_default(self) -> int:
        # NOTE: leaves sized to their pages: 8-token leaves in 16-slot pages (the old layout) left half of
        # every page empty; in 8-slot pages recall moved 0.9599 -> 0.9591 at 4k, budget 256 (docs/index.md)
        return self.leaf_tokens

    @insert_leaf_tokens.default
    def _insert_leaf_default(self) -> int:
        # NOTE: measured on the real model (2000 of 3981 tokens inserted 16 at a time after the
        # build): new leaves of 4 tokens kept recall at the full build's level (0.900 vs 0.897), of 8
        # lost 0.016, assigning to the nearest pages lost 0.045. Recent tokens weigh more.
        return max(1, self.leaf_tokens // 2)

    def __attrs_post_init__(self) -> None:
        if self.bound_candidates < 0:
            raise ConfigError(f"bound_candidates must be >= 0, got {self.bound_candidates}")
        if self.leaf_tokens > self.config.page_size:
            raise ConfigError(f"leaf_tokens={self.leaf_tokens} exceeds page_size={self.config.page_size}")
        if not self.leaf_tokens <= self.page_slots <= self.config.page_size:
            raise ConfigError(f"page_slots={self.page_slots} must lie in [leaf_tokens={self.leaf_tokens}, "
                              f"page_size={self.config.page_size}]")
        if self.insert_leaf_tokens > self.page_slots:
            raise ConfigError(f"insert_leaf_tokens={self.insert_leaf_tokens} exceeds "
                              f"page_slots={self.page_slots}")

    @property
    def page_size(self) -> int:
        """Slots per page of :attr:`layout` (``page_slots``)."""
        return self.page_slots

    @property
    def sdtype(self) -> torch.dtype:
        return SUMMARY_DTYPES[self.summary_dtype]

    def summary_work_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype the query's products with the summaries run in on ``device`` (``summary_matmul``)."""
        stored = self.summary_matmul == "stored" or (
            self.summary_matmul == "auto" and fast_bfloat16_products(device))
        return self.sdtype if stored else torch.float32

    # ------------------------------------------------------------------ protocol
    def build(self, keys: Tensor, token_ids: Tensor | None = None, *, queries: Tensor | None = None,
              reader: KeyReader | None = None) -> None:
        """See :meth:`icecache.index.base.PageIndex.build`. ``queries``: optional float
        ``[B, H_kv, Q, D]`` sample of queries (e.g. the prompt's, all heads of the group); when given,
        pages group keys that score alike for such queries (:func:`query_whitening`). ``reader``: where
        the keys can be read back by token position later (every key given to ``build`` and
        ``insert``); the index then keeps none of its own (unless ``key_copy`` asks for a copy)."""
        with _threads(self.threads):
            self._build(keys, token_ids, queries, reader)

    def insert(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        """See :meth:`icecache.index.base.PageIndex.insert`."""
        from icecache.index.hierarchy.insert import insert

        with _threads(self.threads):
            return insert(self, keys, token_ids)

    def query(self, query: Tensor, max_tokens: int | Tensor, *, scale: float | None = None,
              resident_logits: Tensor | None = None) -> PageHits:
        """See :meth:`icecache.index.base.PageIndex.query`. ``resident_logits``: optional float
        ``[B, H_kv, G, R]``, exact ``scale * q.k`` of tokens attended anyway (sinks, window; ``-inf``
        padding): they join each head's softmax normalizer, so a head whose mass sits on them weighs
        less in the GQA merge."""
        from icecache.index.hierarchy.query import query_pages

        with _threads(self.threads):
            return query_pages(self, query, max_tokens, scale=scale, resident_logits=resident_logits)

    # ------------------------------------------------------------------ build
    def _build(self, keys: Tensor, token_ids: Tensor | None, queries: Tensor | None,
               reader: KeyReader | None) -> None:
        check_keys(keys)
        B, H, N, D = keys.shape
        G, dev = B * H, keys.device
        tok = normalize_token_ids(token_ids, B, H, N, dev)  # [G, N]
        mask = tok >= 0
        x = keys.reshape(G, N, D).float()  # [G, N, D]
        whiten = None
        if queries is not None:
            if queries.dim() != 4 or queries.shape[:2] != (B, H) or queries.shape[-1] != D:
                raise TensorSpecError(f"queries must be [{B}, {H}, Q, {D}], got {tuple(queries.shape)}")
            whiten = query_whitening(queries.reshape(G, -1, D).to(dev))
        space = x @ whiten if whiten is not None else x
        gen = torch.Generator().manual_seed(self.config.seed if self.seed is None else self.seed)
        S = self.page_slots
        if bool(mask.any()):
            built = build_layout(space, mask, page_size=S, leaf_tokens=self.leaf_tokens,
                                 cell_tokens=self.cell_tokens, iters=self.iters, transform=self.transform,
                                 init=self.init, generator=gen, row_keys=self._head_keys(B, H, dev))
            pages, page_cell, num_cells = built.pages, built.page_cell, built.num_cells
            point_page = built.point_page
        else:
            point_page = torch.full((G, N), -1, dtype=torch.int64, device=dev)
            pages = torch.full((G, 0, S), -1, dtype=torch.int64, device=dev)
            page_cell = torch.full((G, 0), -1, dtype=torch.int64, device=dev)
            num_cells = 1
        P = pages.shape[1]
        own = self.key_copy is not None or reader is None
        copy = x.to(KEY_DTYPES[self.key_copy or "float32"]).contiguous() if own else None
        self._reader = None if own else reader
        sd = self.sdtype
        page = lambda: torch.zeros(G, P, D, dtype=sd, device=dev)  # noqa: E731
        cell = lambda fill=0.0: torch.full((G, num_cells, D), fill, device=dev)  # noqa: E731
        space_sq = (space * space).sum(-1)
        assign = self.insert_mode == "assign"
        self._state = IndexState(
            slot_token=tok.to(torch.int32), num_slots=N, keys=copy,
            m2=space_sq.masked_fill(~mask, 0).amax(1) if N else torch.zeros(G, device=dev),
            pages=pages.to(torch.int32), page_len=(pages >= 0).sum(-1).to(torch.int32),
            page_cell=page_cell.to(torch.int32), group_pages=(page_cell >= 0).sum(1),
            page_stats=IndexState.empty_page_stats(G, P, D, gaussian=self.page_estimate == "gaussian",
                                                   dtype=sd, device=dev),
            page_smean=page() if assign else None,
            page_extra=torch.zeros(G, P, dtype=sd, device=dev) if assign else None,
            cell_sum=cell(), cell_sqsum=cell(), cell_min=cell(float("inf")), cell_max=cell(float("-inf")),
            cell_count=torch.zeros(G, num_cells, device=dev),
            cell_ssum=cell() if whiten is not None else None, num_cells=num_cells, whiten=whiten)
        self._shape = (B, H)
        self._inserted = 0
        self._state.refresh_cells(dtype=self.summary_work_dtype(dev))
        g, j = torch.nonzero(point_page >= 0, as_tuple=True)
        p = point_page[g, j]
        self.set_page_stats(g, p, x[g, j], space[g, j] if assign else None)
        sk = space[g, j] if whiten is not None else None
        self._state.add_to_cells(g, page_cell[g, p], x[g, j], sk)

    @staticmethod
    def _head_keys(B: int, H: int, device: torch.device) -> Tensor:
        """int64 ``[B * H_kv]``: each row's KV head, which keys its random numbers, so a sequence
        gets the same pages whatever it is batched with (:mod:`~icecache.index.clustering.noise`)."""
        return torch.arange(B * H, device=device) % H

    # ------------------------------------------------------------------ keys and summaries
    def page_keys(self, cand: Tensor, *, stored: bool = False) -> tuple[Tensor, Tensor]:
        """Keys of pages ``cand`` int64 ``[G, K]`` (``-1``: none), read through the reader or the own
        copy: float32 ``[G, K, S, D]`` (zeros at empty slots; any finite values there when ``stored``) and
        bool ``[G, K, S]`` valid. ``stored``: the pages are as storage last wrote them (a query, not an
        insert), so a reader that offers ``page_keys`` may return whole pages in one gather."""
        st = self._state
        G, K = cand.shape
        S = st.pages.shape[-1]
        if stored and st.keys is None and callable(getattr(self._reader, "page_keys", None)):
            # NOTE: a page's slots are filled first to last (storage only appends), so its length says
            # which are valid: no [G, K, S] gather of the slot map
            lens = torch.where(cand >= 0, st.page_len.gather(1, cand.clamp_min(0)), 0)
            valid = torch.arange(S, device=cand.device) < lens[..., None]  # [G, K, S]
            B, H = self._shape
            # NOTE: empty slots and missing pages need no zeros: the rescoring masks them by ``valid``
            extra = {"zero_missing": False} if accepts_keyword(self._reader.page_keys, "zero_missing") else {}
            k = self._reader.page_keys(cand.view(B, H, K), **extra).to(st.m2.device)
            return k.reshape(G, K, S, st.cell_sum.shape[-1]).float(), valid
        slots = st.pages.gather(1, cand.clamp_min(0)[..., None].expand(G, K, S)).long()  # [G, K, S]
        slots = torch.where((cand >= 0)[..., None], slots, -1)
        valid = slots >= 0
        if st.keys is not None:
            # NOTE: a stored read leaves empty slots unzeroed: the rescoring masks them by ``valid``
            k = gather_positions(st.keys[:, None], slots.view(G, 1, K * S), zero_missing=not stored)
        else:
            tok = st.slot_token.gather(1, slots.clamp_min(0).view(G, K * S)).long()
            tok = torch.where(valid.view(G, K * S), tok, -1)
            B, H = self._shape
            k = self._reader.keys(tok.view(B, H, K * S)).to(st.m2.device)
        return k.reshape(G, K, S, st.cell_sum.shape[-1]).float(), valid

    def set_page_stats(self, g: Tensor, p: Tensor, k: Tensor, sk: Tensor | None) -> None:
        """Summaries of pages ``(g, p)`` from *all* their member keys ``k`` float ``[M, D]`` (one row per
        member; ``sk``: the same keys in the clustering space, for ``insert_mode="assign"``)."""
        st = self._state
        if g.numel() == 0:
            return
        Pcap, D = st.page_len.shape[1], k.shape[-1]
        uniq, inv = torch.unique(g * Pcap + p, return_inverse=True)
        U = uniq.numel()
        cnt = torch.bincount(inv, minlength=U).float()[:, None]  # [U, 1]
        mean = torch.zeros(U, D, device=k.device).index_add_(0, inv, k) / cnt
        idx = inv[:, None].expand(-1, D)
        kmin = torch.full((U, D), float("inf"), device=k.device).scatter_reduce_(0, idx, k, reduce="amin")
        kmax = torch.full((U, D), float("-inf"), device=k.device).scatter_reduce_(0, idx, k, reduce="amax")
        gu, pu = uniq // Pcap, uniq % Pcap
        sd = self.sdtype
        st.page_mean[gu, pu] = mean.to(sd)
        st.page_min[gu, pu] = round_to(kmin, sd, up=False)
        st.page_max[gu, pu] = round_to(kmax, sd, up=True)
        if st.page_var is not None:
            sq = torch.zeros(U, D, device=k.device).index_add_(0, inv, k * k) / cnt
            st.page_var[gu, pu] = (sq - mean * mean).clamp_min(0).to(sd)
        if st.page_smean is not None and sk is not None:
            st.page_smean[gu, pu] = (torch.zeros(U, D, device=k.device).index_add_(0, inv, sk) / cnt).to(sd)
            extra = (st.m2[g] - (sk * sk).sum(-1)).clamp_min(0).sqrt()
            extra_sum = torch.zeros(U, device=k.device).index_add_(0, inv, extra)
            st.page_extra[gu, pu] = (extra_sum / cnt[:, 0]).to(sd)

    def summarize_pages(self, changed: Tensor) -> None:
        """Recompute the summaries of pages ``changed`` bool ``[G, P]`` from their keys (read back)."""
        st = self._state
        K = int(changed.sum(1).max()) if changed.numel() else 0
        if K == 0:
            return
        top = changed.to(torch.int8).topk(K, dim=1)
        cand = torch.where(top.values > 0, top.indices, -1)  # [G, K]
        k, valid = self.page_keys(cand)  # [G, K, S, D]
        g, i, s = torch.nonzero(valid, as_tuple=True)
        members = k[g, i, s]
        sk = None
        if st.page_smean is not None:
            sk = members if st.whiten is None else torch.einsum("md,mde->me", members, st.whiten[g])
        self.set_page_stats(g, cand[g, i], members, sk)

    # ------------------------------------------------------------- accessors
    def _require(self) -> IndexState:
        if self._state is None:
            raise ConfigError("the index is empty: call build() before query(), layout or page_summaries()")
        return self._state

    @property
    def layout(self) -> PageLayout:
        st = self._require()
        B, H = self._shape
        P = st.num_pages
        slots = st.pages[:, :P].long()
        G = B * H
        tok = st.slot_token.gather(1, slots.clamp_min(0).reshape(G, P * slots.shape[-1])).view_as(slots)
        tok = torch.where(slots >= 0, tok.long(), -1)
        return PageLayout(token_ids=tok.view(B, H, P, self.page_slots))

    def page_summaries(self) -> PageSummaries:
        """Exact summaries of every page, recomputed from its keys (read back; not the stored bf16)."""
        st = self._require()
        B, H = self._shape
        G, P = B * H, st.num_pages
        cand = torch.arange(P, device=st.pages.device).expand(G, P)
        k, valid = self.page_keys(cand)  # [G, P, S, D]
        return summarize_layout(k.view(B, H, *k.shape[1:]), valid.view(B, H, *valid.shape[1:]),
                                st.pages.device)

    @property
    def num_tokens(self) -> Tensor:
        st = self._require()
        B, H = self._shape
        return st.page_len.sum(1).to(torch.int64).view(B, H)

    @property
    def page_cells(self) -> Tensor:
        """int64 ``[B, H_kv, P]``: the upper-level cell of each page (``-1`` for padding pages)."""
        st = self._require()
        B, H = self._shape
        return st.page_cell[:, :st.num_pages].reshape(B, H, st.num_pages).long()

    def nbytes(self) -> dict[str, int]:
        """Bytes this index holds, by part (:meth:`IndexState.nbytes`)."""
        return {} if self._state is None else self._state.nbytes()
