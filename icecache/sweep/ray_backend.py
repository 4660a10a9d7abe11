"""``--backend ray``: one Ray task per shard, on a local Ray instance or a cluster (``--ray-address``).

Each task asks for ``threads`` CPUs and, for a GPU shard, one GPU (Ray then sets the worker's
``CUDA_VISIBLE_DEVICES``). Tasks are not retried (``max_retries=0``): a failed shard is reported
and rerun by resuming the sweep. At most as many tasks are in flight as the cluster's resources hold,
so "running" means running and a Ctrl-C loses only those. Shard JSONs come back to the driver, which
writes them: the workers need icecache and the models, not the output folder.
"""

from __future__ import annotations

import time
from typing import Any

from icecache.core.errors import ConfigError
from icecache.sweep.progress import Tracker
from icecache.sweep.shards import Shard

INSTALL = "pip install 'icecache[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--backend ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _task(shard: Shard) -> tuple:
    """Runs on a Ray worker; errors come back as values so the driver reports them per shard."""
    import traceback

    from icecache.sweep.work import quiet_worker, run_shard

    quiet_worker()
    t0 = time.perf_counter()
    try:
        return ("done", run_shard(shard), time.perf_counter() - t0)
    except Exception as exc:
        return ("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc())


def connect(address: str | None) -> Any:
    """``ray.init`` a new local instance (``address=None``) or join a cluster."""
    ray = import_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    return ray


def wants_gpu(ray: Any, device: str) -> bool:
    """Whether each shard asks for a GPU; a device the cluster cannot give is a :class:`ConfigError`."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if device.startswith("cuda:"):
        raise ConfigError(f"device {device!r}: on Ray write device = 'cuda' (each shard gets a GPU of "
                          "its own)")
    if device == "cuda" and gpus < 1:
        raise ConfigError("device 'cuda' asked for but the Ray cluster has no GPUs")
    return device == "cuda" or (device == "auto" and gpus >= 1)


def run_ray(shards: list[Shard], tracker: Tracker, *, ray: Any, gpu: bool) -> None:
    """Run ``shards`` as Ray tasks (``ray`` from :func:`connect`, ``gpu`` from :func:`wants_gpu`)."""
    threads = shards[0].threads
    remote = ray.remote(_task)
    needs = {"num_cpus": threads, "num_gpus": 1 if gpu else 0, "max_retries": 0}
    pending = list(shards)
    flight: dict[Any, Shard] = {}
    checked = 0.0
    capacity = 1
    try:
        while pending or flight:
            if time.perf_counter() - checked > 10:  # NOTE: an autoscaling cluster grows while we run
                res, checked = ray.cluster_resources(), time.perf_counter()
                capacity = max(1, int(res.get("GPU", 0)) if gpu else int(res.get("CPU", 1) // threads))
            while pending and len(flight) < capacity:
                shard = pending.pop(0)
                flight[remote.options(name=f"icecache-sweep:{shard.name}", **needs).remote(shard)] = shard
                tracker.start(shard, "ray")
            ready, _ = ray.wait(list(flight), num_returns=1, timeout=5.0)
            for ref in ready:
                shard = flight.pop(ref)
                try:
                    kind, *rest = ray.get(ref)
                except Exception as exc:  # NOTE: the worker died (RayError); the message names why
                    tracker.failed(shard, f"{type(exc).__name__}: {str(exc).splitlines()[0]}", str(exc))
                    continue
                if kind == "done":
                    tracker.done(shard, rest[0], rest[1])
                else:
                    tracker.failed(shard, rest[0], rest[1])
            tracker.tick()
    finally:
        for ref in flight:
            ray.cancel(ref, force=True)
