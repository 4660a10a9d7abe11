"""FAISS IVF as a page index: inverted lists, capped at the page size, are the pages.

Per (batch row, KV head) one FAISS IVF (:mod:`~icecache.index.faiss_ivf.lists`): the build trains its
lists (k-means, ``nlist`` of them or one per ``list_tokens`` keys) and adds the keys; a list's keys are
its pages (:mod:`~icecache.index.faiss_ivf.pages`; a list over ``page_size`` keys is split). Inserts
go through FAISS's ``add``: a new key joins its nearest list; never a rebuild.

Query: each query head searches its group's IVF (``nprobe`` lists, its ``k`` best keys); the pages
holding the keys found by any head of the group are the candidates, rescored exactly from their keys
(:meth:`FaissIvfIndex._page_keys`), or (``rescore=False``) scored from FAISS's own scores of the keys
found (for ``faiss-ivfpq``: PQCache-style compressed scores, no key read). GQA merge and budget fill
as in the hierarchy index: each head's page masses are normalized (with ``resident_logits`` when
given) and summed over the group; pages are taken by mass per token within the budget. When the
pages found hold fewer tokens than the budget, the search widens (see :meth:`FaissIvfIndex._search`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from attrs import define, field
from attrs.validators import in_, instance_of
from torch import Tensor

from icecache.core.config import CacheConfig
from icecache.core.errors import ConfigError, TensorSpecError
from icecache.core.keys import KeyReader
from icecache.core.validators import optional_positive, positive
from icecache.index.base import PageHits, PageSummaries
from icecache.index.budget import as_budget
from icecache.index.clustering.faiss_backend import import_faiss
from icecache.index.faiss_ivf.lists import IvfLists
from icecache.index.faiss_ivf.pages import IvfPages
from icecache.index.faiss_ivf.scoring import candidate_pages, exact_logmass, found_logmass, merge_and_fill
from icecache.index.hierarchy.index import check_keys, normalize_token_ids
from icecache.index.summaries import hits_from_layout, summarize_layout
from icecache.selectors.types import PageLayout

METRICS = ("ip", "mips")
CODECS = ("flat", "pq")


def _positive_float(instance, attribute, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{attribute.name} must be a positive number, got {value!r}")


@define
class FaissIvfIndex:
    """FAISS IVF per (row, KV head) whose lists are the pages; see the module docstring.

    Options:

    * ``nlist``: lists per (row, KV head); None: one per ``list_tokens`` indexed keys (default
      ``page_size // 2``). An explicit ``nlist`` needs that many keys in every row.
    * ``nprobe``: lists each query head probes; None: lists holding about ``probe x max_tokens`` keys.
    * ``candidates``: keys each query head takes from FAISS, ``x max_tokens``.
    * ``metric``: "ip" (FAISS's inner-product IVF on the raw keys: spherical k-means lists) or "mips"
      (L2 IVF over MIPS-transformed keys).
    * ``train_tokens``: keys per (row, KV head) the lists are trained on (None: all; else an evenly
      strided sample); ``iters``: k-means iterations (lists and PQ codebooks).
    * ``rescore``: exact page masses from the keys (:meth:`_page_keys`), or FAISS's scores of the keys
      it found.
    * ``codec``: "flat" (``IndexIVFFlat``) or "pq" (``IndexIVFPQ``, registered as ``faiss-ivfpq``) with
      ``pq_m`` sub-quantizers (default one per 4 dims) of ``pq_bits`` bits.
    * ``gpu``: None uses FAISS's GPU build when it sees a GPU and the keys are on CUDA.
    * ``threads``: torch and FAISS (OpenMP) threads during calls, restored after.
    * ``page_slots``: slots per page (default ``list_tokens``; at most ``config.page_size``).
    """

    config: CacheConfig = field(validator=instance_of(CacheConfig))
    nlist: int | None = field(default=None, validator=optional_positive)
    list_tokens: int = field(validator=positive)
    nprobe: int | None = field(default=None, validator=optional_positive)
    probe: float = field(default=8.0, validator=_positive_float)
    candidates: float = field(default=2.0, validator=_positive_float)
    # NOTE: "ip", not "mips": on the real model at 4k, budget 256, FAISS's inner-product IVF (spherical
    # k-means lists, probed by q.centroid) matched the hierarchy's recall; L2 over MIPS-transformed
    # keys lost ~0.09 (docs/index.md)
    metric: str = field(default="ip", validator=in_(METRICS))
    train_tokens: int | None = field(default=None, validator=optional_positive)
    # NOTE: 4, as the hierarchy's k-means: training is most of the build (O(N x nlist x D) per head);
    # 10 iterations took twice as long (docs/index.md)
    iters: int = field(default=4, validator=positive)
    rescore: bool = field(default=True, validator=instance_of(bool))
    codec: str = field(default="flat", validator=in_(CODECS))
    pq_m: int | None = field(default=None, validator=optional_positive)
    pq_bits: int = field(default=8, validator=positive)
    gpu: bool | None = field(default=None)
    seed: int | None = field(default=None)  # FAISS k-means seed (None: config.seed), plus the KV head
    threads: int | None = field(default=None, validator=optional_positive)
    page_slots: int = field(validator=positive)
    name: str = field(default="faiss-ivf", init=False)
    _faiss: object = field(default=None, init=False, repr=False)
    _lists: IvfLists | None = field(default=None, init=False, repr=False)
    _pages: IvfPages | None = field(default=None, init=False, repr=False)
    _shape: tuple[int, int] = field(default=(0, 0), init=False, repr=False)
    _layout: Tensor | None = field(default=None, init=False, repr=False)  # token ids [G, P, S], cached
    _reader: KeyReader | None = field(default=None, init=False, repr=False)

    @page_slots.default
    def _page_slots_default(self) -> int:
        # NOTE: pages sized to lists, like the hierarchy's pages sized to leaves: 16-slot pages held
        # lists of ~7 keys at fill 0.44-0.48 (the store's host pages then cost twice the KV); 8 slots:
        # fill 0.66 and recall 0.9614 against 0.9604 at 4k, budget 256 (docs/benchmarks.md)
        return min(self.list_tokens, self.config.page_size)

    @list_tokens.default
    def _list_tokens_default(self) -> int:
        # NOTE: half-filled pages, like the hierarchy's leaves (+~0.01 recall at budget 256 there)
        return max(1, self.config.page_size // 2)

    def __attrs_post_init__(self) -> None:
        self._faiss = import_faiss(f"index {'faiss-ivfpq' if self.codec == 'pq' else 'faiss-ivf'!r}")
        if self.codec == "pq":
            self.name = "faiss-ivfpq"
        if self.page_slots > self.config.page_size:
            raise ConfigError(f"page_slots={self.page_slots} exceeds page_size={self.config.page_size}")
        if self.pq_bits > 8:
            raise ConfigError(f"pq_bits must be in [1, 8], got {self.pq_bits}")
        if self.nlist is not None and self.nprobe is not None and self.nprobe > self.nlist:
            raise ConfigError(f"nprobe={self.nprobe} exceeds nlist={self.nlist}")
        if self.nlist is not None and self.train_tokens is not None and self.train_tokens < self.nlist:
            raise ConfigError(f"train_tokens={self.train_tokens} cannot train nlist={self.nlist} lists")

    # ------------------------------------------------------------------ build
    @property
    def page_size(self) -> int:
        """Slots per page (``page_slots``)."""
        return self.page_slots

    def build(self, keys: Tensor, token_ids: Tensor | None = None, *,
              reader: KeyReader | None = None) -> None:
        """See :meth:`icecache.index.base.PageIndex.build`. ``reader``: a
        :class:`~icecache.core.keys.KeyReader` that reads back every key given to ``build`` and
        ``insert`` by position; the exact rescoring and the summaries then read keys through it and the
        index keeps none of its own (FAISS still holds its codes: for ``codec="flat"``, the keys)."""
        check_keys(keys)
        B, H, N, D = keys.shape
        tok = normalize_token_ids(token_ids, B, H, N, keys.device)  # [G, N]
        counts = (tok >= 0).sum(1)
        if self.nlist is not None and bool(((counts > 0) & (counts < self.nlist)).any()):
            g = int(torch.nonzero((counts > 0) & (counts < self.nlist))[0])
            raise ConfigError(f"nlist={self.nlist} needs at least {self.nlist} keys to train; row "
                              f"[b={g // H}, h={g % H}] has {int(counts[g])} (lower nlist, or leave it "
                              "None and set list_tokens)")
        faiss = self._faiss
        with self._threads(faiss):
            self._lists = IvfLists(faiss, D, self.metric, self.iters,
                                   self.config.seed if self.seed is None else self.seed, heads=H,
                                   pq_m=self._pq_m(D), pq_bits=self.pq_bits, gpu=self._gpu(faiss, keys),
                                   gpu_device=keys.device.index or 0)
            self._lists.reset(B * H)
            self._pages = IvfPages.empty(B * H, D, self.page_slots, keys.device, own_keys=reader is None)
            self._shape, self._layout, self._reader = (B, H), None, reader
            self._add(keys.reshape(B * H, N, D).float(), tok)

    def insert(self, keys: Tensor, token_ids: Tensor) -> Tensor:
        """See :meth:`icecache.index.base.PageIndex.insert`."""
        check_keys(keys)
        B, H, n, D = keys.shape
        if self._pages is None:
            self.build(keys[:, :, :0], torch.zeros(B, H, 0, dtype=torch.int64, device=keys.device))
        if (B, H) != self._shape or D != self._lists.dim:
            raise TensorSpecError(f"insert keys {tuple(keys.shape)} do not match the index "
                                  f"[{self._shape[0]}, {self._shape[1]}, n, {self._lists.dim}]")
        tok = normalize_token_ids(token_ids, B, H, n, keys.device)
        with self._threads(self._lists.faiss):
            changed = self._add(keys.reshape(B * H, n, D).float(), tok)
        return changed[:, :self._pages.num_pages].reshape(B, H, -1)

    def _pq_m(self, dim: int) -> int | None:
        if self.codec != "pq":
            return None
        # NOTE: one byte-code per 4 dims of the FAISS vector by default (16x smaller than float32 keys)
        return self.pq_m or math.ceil((dim + (self.metric == "mips")) / 4)

    def _gpu(self, faiss, keys: Tensor):
        has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if self.gpu and not has_gpu:
            raise ConfigError(f"index {self.name!r} with gpu=True needs faiss's GPU build and a GPU: "
                              "pip install 'icecache[gpu]'")
        use = self.gpu if self.gpu is not None else (has_gpu and keys.is_cuda)
        return faiss.StandardGpuResources() if use else None

    def _add(self, keys: Tensor, tok: Tensor) -> Tensor:
        """Add keys ``[G, n, D]`` at positions ``tok`` ``[G, n]``: train groups that get their first
        keys, add to FAISS, place in pages. Returns bool ``[G, Pcap]`` changed pages."""
        st, ivf = self._pages, self._lists
        self._layout = None
        s0 = st.add_slots(keys, tok)
        G, n = tok.shape
        valid = (tok >= 0).cpu()
        lists = torch.full((G, n), -1, dtype=torch.int64)
        for g in torch.nonzero(valid.any(1)).flatten().tolist():  # NOTE: one FAISS index per group
            j = torch.nonzero(valid[g]).flatten()
            x = keys[g, j.to(keys.device)]
            if not ivf.trained(g):
                sample = self._sample(x)
                # NOTE: a derived nlist is capped by the sample (k-means needs a point per list)
                nlist = self.nlist or min(len(sample), math.ceil(len(j) / self.list_tokens))
                ivf.train(g, sample, nlist, float((x * x).sum(-1).max()))
                st.reserve_lists(ivf.nlist(g))
            lists[g, j] = torch.from_numpy(ivf.add(g, x, (s0 + j).numpy()))
        return st.place(lists.to(tok.device), s0, keys)

    def _sample(self, x: Tensor) -> Tensor:
        """At most ``train_tokens`` keys of ``x`` ``[n, D]``, evenly strided (deterministic)."""
        if self.train_tokens is None or len(x) <= self.train_tokens:
            return x
        return x[torch.linspace(0, len(x) - 1, self.train_tokens, device=x.device).long()]

    @contextmanager
    def _threads(self, faiss) -> Iterator[None]:
        """Run with ``threads`` torch and FAISS (OpenMP) threads, restoring both after."""
        if self.threads is None:
            yield
            return
        before = torch.get_num_threads(), faiss.omp_get_max_threads()
        torch.set_num_threads(self.threads)
        faiss.omp_set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before[0])
            faiss.omp_set_num_threads(before[1])

    # ------------------------------------------------------------------ query
    def query(self, query: Tensor, max_tokens: int | Tensor, *, scale: float | None = None,
              resident_logits: Tensor | None = None) -> PageHits:
        """See :meth:`icecache.index.base.PageIndex.query`. ``resident_logits``: optional float
        ``[B, H_kv, G, R]``, exact ``scale * q.k`` of tokens attended anyway (sinks, window; ``-inf``
        padding), which join each head's normalizer in the GQA merge."""
        st = self._require()
        B, H = self._shape
        D = self._lists.dim
        if query.dim() != 4 or query.shape[:2] != (B, H) or query.shape[-1] != D:
            raise TensorSpecError(f"query must be [{B}, {H}, G, {D}], got {tuple(query.shape)}")
        G, Gq, dev = B * H, query.shape[2], st.slot_token.device
        budget = as_budget(max_tokens, (B, H), dev).reshape(G)
        scale = D ** -0.5 if scale is None else float(scale)
        q = query.reshape(G, Gq, D).to(dev, torch.float32)
        P = st.num_pages
        lens = st.page_len[:, :P]
        if P == 0:
            none = torch.zeros(G, 0, dtype=torch.int64, device=dev)
            return hits_from_layout(self._token_layout(), none, none.float(), none.bool(), (B, H), dev)
        with self._threads(self._lists.faiss):
            found, estimate = self._search(q, budget)  # [G, Gq, k] slots, FAISS's q.k
            cand = candidate_pages(st.slot_page, found, P)  # [G, K] page ids, -1 padded
            if self.rescore:
                logmass = exact_logmass(q, scale, *self._page_keys(cand))
            else:
                logmass = found_logmass(st.slot_page, found, scale * estimate, cand, P)
            resident = None
            if resident_logits is not None:
                if resident_logits.dim() != 4 or resident_logits.shape[:3] != (B, H, Gq):
                    raise TensorSpecError(f"resident_logits must be [{B}, {H}, {Gq}, R], got "
                                          f"{tuple(resident_logits.shape)}")
                resident = resident_logits.reshape(G, Gq, -1).to(dev, torch.float32)
            cand_lens = lens.gather(1, cand.clamp_min(0)) * (cand >= 0)
            density, order, taken = merge_and_fill(logmass, resident, cand_lens, budget)
        pages = cand.gather(1, order).clamp_min(0)  # NOTE: padding is never taken
        return hits_from_layout(self._token_layout(), pages, density.gather(1, order), taken, (B, H), dev)

    def _search(self, q: Tensor, budget: Tensor) -> tuple[Tensor, Tensor]:
        """Each query head's best keys by FAISS: ``(slots int64 [G, Gq, k], q.k estimate [G, Gq, k])``,
        ``-1`` / ``-inf`` padded; ``k = candidates x max_tokens`` (the row's) among ``nprobe`` lists.

        NOTE: when the pages of the keys found hold fewer tokens than the budget (few probes, a
        generous budget), ``nprobe`` and ``k`` double until they do or every list is probed: a budget
        that holds the whole row then selects every page, and nothing is ranked outside FAISS.
        """
        st, ivf = self._pages, self._lists
        G = q.shape[0]
        ntotal = st.page_len.sum(1).tolist()
        out = []
        for g in range(G):  # NOTE: one FAISS index per (row, KV head)
            need = min(int(budget[g]), ntotal[g])
            if need == 0 or not ivf.trained(g):
                out.append((np.full((q.shape[1], 0), -np.inf, np.float32), np.full((q.shape[1], 0), -1)))
                continue
            nlist = ivf.nlist(g)
            nprobe = self.nprobe or math.ceil(self.probe * int(budget[g]) * nlist / ntotal[g])
            nprobe = max(1, min(nprobe, nlist))
            k = max(1, min(math.ceil(self.candidates * int(budget[g])), ntotal[g]))
            while True:
                est, slots = ivf.search(g, q[g], nprobe, k)
                if (nprobe == nlist and k == ntotal[g]) or self._found_tokens(g, slots) >= need:
                    break
                nprobe, k = min(2 * nprobe, nlist), min(2 * k, ntotal[g])
            out.append((est, slots))
        K = max(1, max(slots.shape[1] for _, slots in out))
        found = torch.full((G, q.shape[1], K), -1, dtype=torch.int64)
        estimate = torch.full((G, q.shape[1], K), float("-inf"))
        for g, (est, slots) in enumerate(out):
            found[g, :, :slots.shape[1]] = torch.from_numpy(slots)
            estimate[g, :, :slots.shape[1]] = torch.from_numpy(est)
        found = found.to(q.device)
        return found, estimate.to(q.device).masked_fill(found < 0, float("-inf"))

    def _found_tokens(self, g: int, slots: np.ndarray) -> int:
        """Tokens in the pages of group ``g`` holding any of ``slots`` (``-1`` ignored)."""
        st = self._pages
        s = torch.from_numpy(slots[slots >= 0]).to(st.slot_page.device)
        return int(st.page_len[g, st.slot_page[g, s].unique()].sum())

    def _page_keys(self, page_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Keys ``[G, K, S, D]`` and validity ``[G, K, S]`` of pages ``page_ids`` ``[G, K]`` (``-1``:
        none), through the key reader given to ``build`` or the own copy. NOTE: the only place the
        index reads keys after they were added."""
        st = self._pages
        slots = st.page_slots(page_ids)  # [G, K, S]
        if st.keys is not None:
            return st.own_keys(slots), slots >= 0
        G, K, S = slots.shape
        tok = st.slot_token.gather(1, slots.clamp_min(0).view(G, K * S)).view_as(slots)
        tok = torch.where(slots >= 0, tok, -1)
        B, H = self._shape
        keys = self._reader.keys(tok.view(B, H, K * S)).to(st.slot_token.device, torch.float32)
        return keys.view(G, K, S, -1), slots >= 0

    # ------------------------------------------------------------- accessors
    def _require(self) -> IvfPages:
        if self._pages is None:
            raise ConfigError("the index is empty: call build() before query(), layout or page_summaries()")
        return self._pages

    def _token_layout(self) -> Tensor:
        """Token ids ``[G, P, S]`` of the pages (``-1`` padded), cached until the next build or insert."""
        if self._layout is None:
            st = self._pages
            slots = st.pages[:, :st.num_pages]
            tok = st.slot_token.gather(1, slots.clamp_min(0).flatten(1)).view_as(slots)
            self._layout = torch.where(slots >= 0, tok, -1)
        return self._layout

    @property
    def layout(self) -> PageLayout:
        self._require()
        B, H = self._shape
        return PageLayout(token_ids=self._token_layout().reshape(B, H, -1, self.page_slots))

    def page_summaries(self) -> PageSummaries:
        st = self._require()
        B, H = self._shape
        P, dev = st.num_pages, st.slot_token.device
        keys, valid = self._page_keys(torch.arange(P, device=dev).expand(B * H, P))
        S, D = valid.shape[-1], self._lists.dim
        return summarize_layout(keys.view(B, H, P, S, D), valid.view(B, H, P, S), dev)

    def nbytes(self) -> dict[str, int]:
        """Bytes held, by part: ``pages``, ``keys`` (own copy), ``faiss`` (codes, ids, centroids)."""
        if self._pages is None:
            return {}
        faiss_bytes = sum(ix.ntotal * (ix.code_size + 8) + ix.nlist * ix.d * 4
                          for ix in self._lists.indexes if ix is not None)
        return {**self._pages.nbytes(), "faiss": int(faiss_bytes)}

    @property
    def num_tokens(self) -> Tensor:
        st = self._require()
        B, H = self._shape
        return st.page_len.sum(1).view(B, H)

    @property
    def page_lists(self) -> Tensor:
        """int64 ``[B, H_kv, P]``: the IVF list of each page (``-1`` for padding pages)."""
        st = self._require()
        B, H = self._shape
        return st.page_list[:, :st.num_pages].reshape(B, H, -1)
