"""Local backend vs the same shards one after another: wall time of a 4-shard ``icecache sweep`` with
``--workers 2`` over two baselines, all measured in this one run, alternating ``rounds`` times:
``--workers 1`` (one worker process, one model load, shards in sequence: the strict baseline) and the
4 shards as 4 ``icecache eval`` commands one after another (by hand, as docs/running.md did before
``sweep``: one model load each). Writes ``benchmarks/results/sweep_local.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_local.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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


def _run_by_hand(out: Path, context: int, samples: int) -> dict:
    """The sweep's 4 shards as 4 ``icecache eval`` commands in sequence (same tasks, seeds, policies)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(4):
        proc = subprocess.run([sys.executable, "-m", "icecache", "eval", "--policy", "full,icecache",
                               "--budget", "256", "--context", str(context), "--tasks", "niah_noise",
                               "--samples", str(samples), "--seed", str(seed), "--no-progress",
                               "--json", str(out / f"s{seed}.json")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"workers": "eval x4", "wall_s": wall, "cpu_s": cpu, "cores_used": cpu / wall,
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
            for workers in (1, 2, "eval x4"):
                if workers == "eval x4":
                    run = _run_by_hand(Path(tmp) / "by_hand", args.context, args.samples)
                else:
                    run = _run(spec, Path(tmp) / f"out{workers}", workers)
                runs.append(run | {"round": r})
                print(json.dumps(runs[-1]), flush=True)
    walls = {w: [x["wall_s"] for x in runs if x["workers"] == w] for w in (1, 2, "eval x4")}
    ratios = [two / one for two, one in zip(walls[2], walls[1], strict=True)]
    ratios_by_hand = [two / hand for two, hand in zip(walls[2], walls["eval x4"], strict=True)]
    result = {"context": args.context, "samples": args.samples, "shards": 4, "policies": 2,
              "cpu_count": os.cpu_count(), "runs": runs, "ratio": sum(walls[2]) / sum(walls[1]),
              "ratio_per_round": ratios, "ratio_median": statistics.median(ratios),
              "ratio_vs_by_hand": sum(walls[2]) / sum(walls["eval x4"]),
              "ratio_vs_by_hand_per_round": ratios_by_hand,
              "ratio_vs_by_hand_median": statistics.median(ratios_by_hand)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print("| baseline | wall, baseline (median) | wall, 2 workers (median) | ratio (median of rounds) |")
    print("|---|---|---|---|")
    for name, key, ratio in (("sweep --workers 1", 1, result["ratio_median"]),
                             ("4 x icecache eval", "eval x4", result["ratio_vs_by_hand_median"])):
        print(f"| {name} | {statistics.median(walls[key]):.1f} s | {statistics.median(walls[2]):.1f} s "
              f"| {ratio:.2f} |")


if __name__ == "__main__":
    main()
