"""Strategies for storage: page specs, page records with arbitrary bit patterns, tier stacks.

Records are drawn as random *bytes* reinterpreted in the page dtype, so they hold NaNs with payloads,
infinities, ``-0.0`` and subnormals: a tier that converts or normalizes values fails a bit-identical
comparison (compare with :func:`bits`).
"""

# ruff: noqa: B008
# NOTE: strategies are immutable, so they are safe (and idiomatic) as parameter defaults.
from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from icecache.storage.layout import PageSpec
from icecache.testing.strategies._util import draw_value, seeds

#: dtypes a page may hold
PAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: tier stacks worth testing: the full one, without disk, one tier, no device
TIER_STACKS: tuple[tuple[str, ...], ...] = (("device", "host", "disk"), ("device", "host"), ("device",),
                                            ("host", "disk"), ("device", "disk"))


def random_records(spec: PageSpec, n: int, seed: int) -> Tensor:
    """``[n, 2, S, D]`` records of uniformly random bytes in ``spec.dtype`` (plain torch, no hypothesis)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, spec.page_nbytes), dtype=torch.uint8, generator=g)  # [n, bytes]
    return raw.view(spec.dtype).view(n, *spec.record_shape)


def bits(t: Tensor) -> Tensor:
    """The raw bytes of ``t`` (CPU ``uint8``), for bit-identical comparisons."""
    return t.detach().to("cpu").contiguous().view(torch.uint8)


@st.composite
def page_specs(draw: Any, *, page_size: Any = st.sampled_from([1, 2, 4, 16]),
               head_dim: Any = st.sampled_from([1, 3, 8, 64]),
               dtype: Any = st.sampled_from(PAGE_DTYPES)) -> PageSpec:
    """A :class:`PageSpec` (odd head dims included: records need not be a multiple of 8 bytes)."""
    return PageSpec(page_size=draw_value(draw, page_size), head_dim=draw_value(draw, head_dim),
                    dtype=draw_value(draw, dtype))


@st.composite
def page_records(draw: Any, spec: Any, n: Any = st.integers(1, 8)) -> Tensor:
    """``[n, 2, S, D]`` records of random bytes (see :func:`random_records`)."""
    return random_records(draw_value(draw, spec), draw_value(draw, n), draw(seeds))


@st.composite
def tier_capacities(draw: Any, *, max_device: int = 6, max_host: int = 10, max_disk: int = 40
                    ) -> dict[str, int | None]:
    """Capacities (pages) per built-in tier name; ``None`` is unbounded (never for disk, so a test
    can check that the last tier's bound holds)."""
    return {"device": draw(st.one_of(st.none(), st.integers(1, max_device))),
            "host": draw(st.one_of(st.none(), st.integers(1, max_host))),
            "disk": draw(st.integers(max(1, max_disk // 2), max_disk))}


def tier_stacks(*, with_disk: bool = True) -> st.SearchStrategy[tuple[str, ...]]:
    """An ordered stack of built-in tier names (the first one is what ``load`` fills)."""
    return st.sampled_from([s for s in TIER_STACKS if with_disk or "disk" not in s])


@st.composite
def page_lens(draw: Any, spec: Any, n: Any) -> Tensor:
    """Valid slots per page, int32 ``[n]`` in ``[1, S]`` (partial pages anywhere)."""
    spec, n = draw_value(draw, spec), draw_value(draw, n)
    return torch.tensor(draw(st.lists(st.integers(1, spec.page_size), min_size=n, max_size=n)),
                        dtype=torch.int32)
