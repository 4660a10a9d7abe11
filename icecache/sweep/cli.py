"""Run a grid of evaluations from one spec file, locally or on Ray; resumable.

``icecache sweep SPEC.toml``: shard JSONs in ``OUT/shards/``, merged ``OUT/sweep.json`` and
``OUT/sweep.png``. Exit code 0: every shard done; 1: some failed (the rest is merged); 2: a bad spec
(nothing run, nothing written); 130: interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from icecache.core.errors import ConfigError, IceCacheError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec, .toml, .json or .yaml (see docs/running.md)")
    parser.add_argument("--out", default=None, help="output folder (default out/SPEC-NAME)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: a process pool on this machine (default); ray: one Ray task per shard")
    parser.add_argument("--workers", type=int, default=None,
                        help="local worker processes (default: one per GPU, else cores / threads)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join, e.g. ray://head:10001 or auto (default: a new local one)")
    parser.add_argument("--force", action="store_true", help="rerun shards whose results are already there")
    parser.add_argument("--dry-run", action="store_true", help="list the shards and what would run; run none")
    parser.add_argument("--no-progress", action="store_true", help="status lines instead of a progress bar")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except IceCacheError as exc:
        print(f"icecache sweep: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from icecache.sweep.plan import plan
    from icecache.sweep.spec import load_spec

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be positive, got {args.workers}")
    if args.backend == "ray":
        from icecache.sweep.ray_backend import import_ray

        import_ray()  # NOTE: says how to install Ray before any checking work
    spec = load_spec(args.spec)
    shards = plan(spec, check_device=args.backend == "local")
    out = Path(args.out or Path("out") / Path(args.spec).stem)
    if args.dry_run:
        state = _states(out, shards)
        return _print_plan(shards, state, [s for s in shards if args.force or state[s.name] != "kept"])
    from icecache.eval.files import OutputLock, check_output_dir

    check_output_dir(out, "--out")
    with OutputLock(out / "sweep.json", "--out"):  # NOTE: two sweeps into one folder would clash
        state = _states(out, shards)
        todo = [s for s in shards if args.force or state[s.name] != "kept"]
        ray = gpu = None
        if args.backend == "ray" and todo:
            from icecache.sweep.ray_backend import connect, wants_gpu

            ray = connect(args.ray_address)
            try:
                gpu = wants_gpu(ray, spec.device)
            except ConfigError:
                ray.shutdown()
                raise
        return _run(args, out, shards, todo, ray, gpu)


def _states(out: Path, shards) -> dict[str, str]:
    """Per shard: ``kept`` (its JSON matches its spec hash), ``changed`` (it does not) or ``new``."""
    from icecache.sweep.merge import read_shard
    from icecache.sweep.progress import shard_path

    state = {}
    for s in shards:
        kept = read_shard(shard_path(out, s))
        state[s.name] = ("new" if kept is None else "kept" if kept.get("spec_hash") == s.spec_hash
                         else "changed")
    return state


def _print_plan(shards, state, todo) -> int:
    from icecache.bench.report import format_table

    rows = [{"shard": s.name, "model": s.model, "context": s.context or "-", "decodes": s.decodes,
             "results": state[s.name], "runs": "yes" if s in todo else "no"} for s in shards]
    print(format_table(rows, ("shard", "model", "context", "decodes", "results", "runs")))
    print(f"\n{len(todo)} of {len(shards)} shards would run")
    return 0


def _run(args, out: Path, shards, todo, ray, gpu) -> int:
    from icecache.sweep.merge import merge_groups, print_tables, save_sweep_plot, write_sweep
    from icecache.sweep.progress import Tracker

    t0 = time.perf_counter()
    kept = len(shards) - len(todo)
    print(f"sweep: {len(shards)} shards, {kept} kept from earlier runs, {len(todo)} to run -> {out}",
          file=sys.stderr)
    tracker = Tracker(out=out, shards=todo, bar=not args.no_progress)
    interrupted = False
    try:
        if todo and args.backend == "ray":
            from icecache.sweep.ray_backend import run_ray

            run_ray(todo, tracker, ray=ray, gpu=gpu)
        elif todo:
            from icecache.sweep.local import default_workers, run_local

            workers = args.workers or default_workers(todo[0].device, todo[0].threads)
            run_local(todo, tracker, workers=min(workers, len(todo)))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        tracker.close()
        if ray is not None:
            ray.shutdown()  # NOTE: stops the local instance this run started; a cluster keeps running
    states = {s.name: {"state": "kept"} for s in shards if s not in todo} | tracker.states
    groups = merge_groups(out, shards)
    print_tables(groups)
    path = write_sweep(out, args.spec, shards, states, groups)
    plot = save_sweep_plot(groups, out / "sweep.png")
    failed = [(s, tracker.states[s.name]) for s in todo if tracker.states[s.name]["state"] == "failed"]
    for s, st in failed:
        print(f"failed: {s.name}: {st['error']}", file=sys.stderr)
    done = tracker.count("done")
    print(f"sweep: {done} run, {kept} kept, {len(failed)} failed, "
          f"{len(todo) - done - len(failed)} not run, of {len(shards)} shards in "
          f"{time.perf_counter() - t0:.0f} s; wrote {path}" + (f" and {plot}" if plot else ""))
    if interrupted:
        print("sweep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if failed:
        print("sweep: rerun the same command to retry the failed shards (finished ones are kept)",
              file=sys.stderr)
        return 1
    return 0
