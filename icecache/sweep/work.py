"""Run one shard where it lands (a pool worker, a Ray worker) with the machinery of ``icecache eval``.

The model stays loaded between shards of the same process (one load per worker as long as the
shards share a model: :func:`~icecache.sweep.plan.plan` orders them by model).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from icecache.core.errors import ConfigError
from icecache.sweep.shards import Shard, file_sha256

#: (checkpoint, dtype, device) -> (model, tokenizer); one model at a time, so memory stays one model's
_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def quiet_worker() -> None:
    """In a worker process: no per-load progress bars of transformers in the driver's output."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def shard_args(shard: Shard) -> argparse.Namespace:
    """The ``icecache eval`` arguments :func:`~icecache.eval.session.prepare` reads."""
    return argparse.Namespace(
        model=shard.model_path, device=shard.device, dtype=shard.dtype, batch_size=shard.batch_size,
        threads=shard.threads, sink=shard.sink, window=shard.window, device_pages=shard.device_pages,
        host_pages=shard.host_pages, disk_dir=shard.disk_dir, page_dtype=shard.page_dtype, seed=shard.seed,
        snapshot_dir=shard.snapshot_dir)


def _model(prepared: Any) -> tuple[Any, Any]:
    import torch

    from icecache.eval.session import load

    key = (str(prepared.checkpoint), prepared.dtype, str(prepared.device))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load(prepared)
    torch.set_num_threads(prepared.threads)
    return _LOADED[key]


def run_shard(shard: Shard, progress: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    """The shard's results as ``icecache eval --json`` writes them, plus a ``sweep`` block (name,
    spec hash, the shard, seconds) and the machine that ran it."""
    from icecache.bench.report import machine_info
    from icecache.eval.runner import evaluate
    from icecache.eval.session import prepare
    from icecache.eval.summary import policy_rows, task_rows
    from icecache.tasks import generate_suite, load_tasks_file

    t0 = time.perf_counter()
    prepared = prepare(shard_args(shard), ",".join(shard.policies), None, shard.context,
                       options=shard.options or None)
    model, tokenizer = _model(prepared)
    if shard.tasks_path is not None:
        if file_sha256(shard.tasks_path) != shard.tasks_sha256:
            raise ConfigError(f"tasks file {shard.tasks_file!r} changed since the sweep was planned")
        samples = load_tasks_file(shard.tasks_path)
    else:
        assert shard.samples is not None and shard.context is not None  # a generated-task shard has both
        samples = generate_suite(list(shard.tasks), n=shard.samples, context=shard.context,
                                 tokenizer=tokenizer, seed=shard.seed)
    snapshots = None
    if shard.snapshot_dir is not None:
        from icecache.integrations.hf.snapshot_store import SnapshotStore

        snapshots = SnapshotStore(shard.snapshot_dir)  # NOTE: its warnings reach the shard's stderr
    results = evaluate(model, tokenizer, samples, prepared.specs, batch_size=shard.batch_size,
                       policy_kwargs=prepared.policy_kwargs, progress=progress, snapshots=snapshots)
    return {
        "machine": machine_info(), "command": "sweep-shard", "model": str(prepared.checkpoint),
        "context": shard.context, "tasks_file": shard.tasks_file, "policies": list(shard.policies),
        "samples": shard.samples, "seed": shard.seed, "batch_size": shard.batch_size,
        "results": task_rows(results, shard.context), "overview": policy_rows(results, shard.context),
        "samples_detail": [r.to_dict() for r in results],
        "sweep": {"name": shard.name, "spec_hash": shard.spec_hash, "shard": shard.to_dict(),
                  "seconds": time.perf_counter() - t0,
                  "snapshots": None if snapshots is None else snapshots.stats.to_dict()},
    }
