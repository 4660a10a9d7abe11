"""Benchmarks run as ``icecache bench NAME``: each prints a table and writes JSON."""
