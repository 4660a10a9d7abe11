"""Vectorized helpers shared by the selector base classes: positions, key buffer, budget fill, GQA
merge, page layouts and a small k-means."""
