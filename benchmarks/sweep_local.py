"""Local backend vs the same shards one after another: wall time of a 4-shard ``icecache sweep`` with
``--workers 2`` over ``--workers 1`` (one worker process, one model load, shards in sequence), both
measured in this one run, alternating ``rounds`` times. Writes ``benchmarks/results/sweep_local.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_local.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
contexts = [{context}]
tasks = ["niah_noise"]
seeds = [0, 1, 2, 3]
samples = {samples}
policies = ["full", "icecache"]
budgets = [256]
"""


def _run(spec: Path, out: Path, workers: int) -> dict:
    """Wall and CPU seconds of one sweep (CPU: the sweep's processes; cpu_s / wall_s = the cores it got)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "icecache", "sweep", str(spec), "--out", str(out), "--force",
                           "--workers", str(workers), "--no-progress"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    shard_s = [json.loads(p.read_text())["sweep"]["seconds"] for p in sorted((out / "shards").glob("*.json"))]
    return {"workers": workers, "wall_s": wall, "cpu_s": cpu, "cores_used": cpu / wall, "shard_s": shard_s,
            "load": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/sweep_local.json")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(SPEC.format(context=args.context, samples=args.samples))
        for r in range(args.rounds):
            for workers in (1, 2):
                runs.append(_run(spec, Path(tmp) / f"out{workers}", workers) | {"round": r})
                print(json.dumps(runs[-1]), flush=True)
    seq = sum(x["wall_s"] for x in runs if x["workers"] == 1)
    par = sum(x["wall_s"] for x in runs if x["workers"] == 2)
    result = {"context": args.context, "samples": args.samples, "shards": 4, "policies": 2,
              "cpu_count": os.cpu_count(), "runs": runs, "ratio": par / seq}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"workers 2 / workers 1 wall time: {par:.1f} s / {seq:.1f} s = {par / seq:.2f}")


if __name__ == "__main__":
    main()
