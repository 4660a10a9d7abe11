"""Page scoring against page/cluster summaries (centroids, Quest min/max bounds) with top-k."""
