"""Vectorized helpers shared by the selector base classes: positions, budget fill, GQA
merge, page layouts and a small k-means."""
