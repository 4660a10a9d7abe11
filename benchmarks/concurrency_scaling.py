"""How much two single-thread processes slow each other on this machine, per kind of work: a pure-Python
loop, a cache-resident 256x256 matmul loop, and a 256 MB ``copy_`` loop (memory bandwidth). Each runs
alone, then two copies at once, then alone again; ``slowdown`` = mean side-by-side time / mean alone.
What bounds a local sweep's speed-up on a small VM (docs/benchmarks.md, ``icecache sweep``).

    .venv/bin/python benchmarks/concurrency_scaling.py --json benchmarks/results/concurrency_scaling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

WORK = {
    "python": "s = 0\nfor i in range(30_000_000):\n    s += i",
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\n"
              "for _ in range(4000):\n    a @ a",
    "stream": "import torch\ntorch.set_num_threads(1)\na = torch.randn(64_000_000)\nb = torch.empty_like(a)\n"
              "for _ in range(40):\n    b.copy_(a)",
}


def _timed(n: int, code: str) -> list[float]:
    """Seconds of the work in each of ``n`` processes started together (start-up not counted)."""
    timed = f"import time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    procs = [subprocess.Popen([sys.executable, "-c", timed], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="benchmarks/results/concurrency_scaling_cpu.json")
    args = parser.parse_args()
    out = {}
    print("| work | alone s | side by side s | slowdown |\n|---|---|---|---|")
    for kind, code in WORK.items():
        first, both, last = _timed(1, code)[0], _timed(2, code), _timed(1, code)[0]
        alone = (first + last) / 2
        out[kind] = {"alone_s": [first, last], "side_by_side_s": both, "slowdown": sum(both) / 2 / alone}
        print(f"| {kind} | {alone:.2f} | {both[0]:.2f}, {both[1]:.2f} | {out[kind]['slowdown']:.2f} |",
              flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
