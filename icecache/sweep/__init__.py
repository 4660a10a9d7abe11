"""Sweeps: a grid of evaluations (models x contexts x tasks x seeds, every policy per prefill) from
one spec file, run as shards on a local process pool or on Ray, resumable, merged into one result.

Modules: :mod:`~icecache.sweep.spec` (fields, :func:`load_spec`), :mod:`~icecache.sweep.plan` (checks
and grid expansion), :mod:`~icecache.sweep.shards` (a shard and its spec hash),
:mod:`~icecache.sweep.work` (one shard, via the eval machinery), :mod:`~icecache.sweep.local` and
:mod:`~icecache.sweep.ray_backend` (backends), :mod:`~icecache.sweep.progress`,
:mod:`~icecache.sweep.merge`, :mod:`~icecache.sweep.cli` (``icecache sweep``).
"""
