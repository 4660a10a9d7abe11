"""``--backend local``: a pool of worker processes on this machine, one shard at a time each.

Not :class:`concurrent.futures.ProcessPoolExecutor`: when one of its workers dies (killed, out of
memory) every pending future fails. Here the driver watches each worker's pipe and process sentinel,
so a dead worker fails only the shard it held, and a fresh worker takes its place.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from multiprocessing.connection import wait
from typing import Any

from attrs import define

from icecache.sweep.progress import Tracker
from icecache.sweep.shards import Shard


def default_workers(device: str, threads: int) -> int:
    """One worker per GPU for ``auto``/``cuda`` when GPUs exist, else one per ``threads`` CPU cores."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    if device.startswith("cuda:"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // threads)


def _worker_main(conn: Any, env: dict[str, str]) -> None:
    os.environ.update(env)  # NOTE: before torch loads: thread counts and the visible GPU are read then
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    from icecache.sweep.work import quiet_worker, run_shard

    quiet_worker()
    while True:
        shard = conn.recv()
        if shard is None:
            return

        def progress(n: int, what: str, name: str = shard.name) -> None:
            if n:
                conn.send(("progress", name, n))

        t0 = time.perf_counter()
        try:
            payload = run_shard(shard, progress)
        except Exception as exc:  # NOTE: reported as this shard's failure; the worker goes on
            conn.send(("failed", shard.name, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        else:
            conn.send(("done", shard.name, payload, time.perf_counter() - t0))


@define
class _Worker:
    process: Any
    conn: Any
    shard: Shard | None = None


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"worker process died: killed by {name}{hint}"
    return f"worker process died (exit code {exitcode})"


def run_local(shards: list[Shard], tracker: Tracker, *, workers: int) -> None:
    """Run ``shards`` on ``workers`` processes (started with ``spawn``: the driver holds torch)."""
    ctx = mp.get_context("spawn")
    pending = deque(shards)
    by_name = {s.name: s for s in shards}
    first = shards[0]
    pinned = first.device in ("auto", "cuda") and workers > 1 and _gpus() >= workers
    slots = min(workers, len(shards))

    def spawn(slot: int) -> _Worker:
        env = {"OMP_NUM_THREADS": str(first.threads), "MKL_NUM_THREADS": str(first.threads)}
        if pinned:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(child, env), name=f"icecache-sweep-{slot}", daemon=True)
        p.start()
        child.close()
        return _Worker(process=p, conn=parent)

    pool: dict[int, _Worker] = {slot: spawn(slot) for slot in range(slots)}
    try:
        while pending or any(w.shard is not None for w in pool.values()):
            for w in pool.values():
                if w.shard is None and pending:
                    w.shard = pending.popleft()
                    w.conn.send(w.shard)
                    tracker.start(w.shard, f"pid {w.process.pid}", w.process.pid)
            ready = set(wait([w.conn for w in pool.values()] + [w.process.sentinel for w in pool.values()],
                             timeout=5.0))
            for slot, w in list(pool.items()):
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is not None:
                        _handle(msg, by_name, tracker, w)
                        continue
                if w.conn in ready or w.process.sentinel in ready:
                    w.process.join(timeout=5)
                    if w.shard is not None:
                        tracker.failed(w.shard, _death(w.process.exitcode))
                    del pool[slot]
                    if pending:
                        pool[slot] = spawn(slot)
            if not pool and pending:  # NOTE: unreachable unless spawning itself fails
                raise RuntimeError("no worker left to run the sweep")
            tracker.tick()
    finally:
        for w in pool.values():
            if w.shard is not None:  # NOTE: only on an error or Ctrl-C; its shard reruns on resume
                w.process.kill()
                continue
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in pool.values():
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()


def _handle(msg: tuple, by_name: dict[str, Shard], tracker: Tracker, w: _Worker) -> None:
    kind, name, *rest = msg
    shard = by_name[name]
    if kind == "progress":
        tracker.advance(shard, rest[0])
    elif kind == "done":
        tracker.done(shard, rest[0], rest[1])
        w.shard = None
    elif kind == "failed":
        tracker.failed(shard, rest[0], rest[1])
        w.shard = None


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
