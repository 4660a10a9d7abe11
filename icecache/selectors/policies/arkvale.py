"""ArkVale: page digests as bounding spheres."""

from __future__ import annotations

from typing import ClassVar

import torch
from attrs import define
from torch import Tensor

from icecache.index.base import PageSummaries
from icecache.selectors.bases.page_score import PageScoreSelector


@define(kw_only=True, slots=False)
class ArkValeSelector(PageScoreSelector):
    """Rank position-contiguous pages by ArkVale's sphere digest ``q.c + r * |q|``.

    Based on https://openreview.net/forum?id=4oAt5L4lYe (Chen et al., NeurIPS 2024). ``c`` is the
    mean key of the page, ``r`` the largest distance of one of its keys to ``c``: the score bounds
    ``q.k`` over the page's keys from above.
    """

    name: ClassVar[str] = "arkvale"
    summary_fields: ClassVar[tuple[str, ...]] = ("centroids", "radius")

    def score(self, query: Tensor, summaries: PageSummaries) -> Tensor:  # [B, H_kv, G, P]
        q = query.to(summaries.centroids.dtype)
        dots = torch.einsum("bhgd,bhpd->bhgp", q, summaries.centroids)
        return dots + summaries.radius[:, :, None, :] * q.norm(dim=-1)[..., None]
