"""Batched k-means, capacity-bounded assignment, PCA tree: invariants on clustered points."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icecache.core.errors import ConfigError
from icecache.index.clustering.kmeans import BalancedKMeans, capacity_assign, kmeans
from icecache.index.clustering.pca_tree import pca_tree
from icecache.testing.strategies.kv import point_groups


@settings(max_examples=40, deadline=None)
@given(groups=point_groups(), cap=st.integers(1, 16), slack=st.integers(0, 3), rounds=st.integers(0, 6))
def test_capacity_assign_respects_capacity_and_places_every_point(groups, cap, slack, rounds):
    G, N, _ = groups.points.shape
    C = -(-N // cap) + slack
    centroids = groups.points[:, torch.randint(0, N, (C,), generator=torch.Generator().manual_seed(1))]
    cost = torch.cdist(groups.points, centroids)
    assign = capacity_assign(cost, cap, groups.mask, rounds=rounds)
    assert torch.equal(assign >= 0, groups.mask)
    sizes = torch.zeros(G, C, dtype=torch.int64).scatter_add_(1, assign.clamp_min(0), groups.mask.long())
    assert int(sizes.max()) <= cap
    if rounds > 0 and cap >= N:
        # nothing is ever full: every point sits with its nearest centroid
        assert torch.equal(assign[groups.mask], cost.argmin(-1)[groups.mask])


def test_capacity_assign_rejects_too_little_room():
    with pytest.raises(ConfigError, match="capacity 4 of group 0 is below its 5 points"):
        capacity_assign(torch.zeros(1, 5, 2), 2, torch.ones(1, 5, dtype=torch.bool))


@settings(max_examples=25, deadline=None)
@given(groups=point_groups(), cap=st.sampled_from([4, 8, 16]), transform=st.booleans())
def test_balanced_kmeans_pages_hold_at_most_capacity(groups, cap, transform):
    N = groups.points.shape[1]
    C = max(1, -(-N // cap))
    res = BalancedKMeans(transform=transform).fit(groups.points, C, capacity=cap, mask=groups.mask)
    assert int(res.sizes.max()) <= cap
    assert torch.equal(res.assignments >= 0, groups.mask)
    assert torch.equal(res.sizes.sum(1), groups.mask.sum(1))
    # centroids are the means of the raw points of each cluster
    for g in range(groups.points.shape[0]):
        for c in range(C):
            members = groups.points[g][res.assignments[g] == c]
            if len(members):
                torch.testing.assert_close(res.centroids[g, c], members.mean(0), rtol=1e-4, atol=1e-5)


def test_kmeans_is_deterministic_and_recovers_separated_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    pts = (centers[torch.arange(90) % 3] + 0.1 * torch.randn(90, 2))[None]  # [1, 90, 2]
    a = kmeans(pts, 3, iters=10, generator=torch.Generator().manual_seed(3), init="kmeans++")
    b = kmeans(pts, 3, iters=10, generator=torch.Generator().manual_seed(3), init="kmeans++")
    assert torch.equal(a.assignments, b.assignments)
    truth = torch.arange(90) % 3
    # same partition as the truth (up to relabelling)
    for c in range(3):
        assert a.assignments[0][truth == c].unique().numel() == 1


@settings(max_examples=30, deadline=None)
@given(groups=point_groups(), depth=st.integers(0, 4))
def test_pca_tree_cells_are_balanced(groups, depth):
    cells = pca_tree(groups.points, groups.mask, depth)
    assert torch.equal(cells >= 0, groups.mask)
    assert int(cells.max()) < 2 ** depth
    sizes = torch.zeros(groups.points.shape[0], 2 ** depth, dtype=torch.int64)
    sizes.scatter_add_(1, cells.clamp_min(0), groups.mask.long())
    # median splits: sibling cells differ by at most one point at every level -> at most 1 overall
    assert int((sizes.amax(1) - sizes.amin(1)).max()) <= 1
