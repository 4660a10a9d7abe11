"""Sparse paged decode attention: torch reference (``reference.py``) beside the Triton kernel."""
