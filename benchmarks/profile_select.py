"""Profile one layer's index query (``selector.select``) on synthetic clustered keys, the same setup as
``icecache bench decode``: prints the top ops by device (CUDA) or CPU time, per index option set.

    python benchmarks/profile_select.py --device cuda --context 131072 \
        --options '{"index_options": {"bound_candidates": 4}}' '{"index_options": {"bound_candidates": 0}}'
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from icecache.bench.decode import _make_selector, clustered_kv
from icecache.core.config import CacheConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--context", type=int, default=131072)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--rows", type=int, default=25, help="ops to print")
    parser.add_argument("--options", nargs="+", default=["{}"], help="selector options, JSON, one per run")
    args = parser.parse_args()
    dev = torch.device(args.device)
    H, G, D = 8, 4, 128
    keys, _, q_kv = clustered_kv(args.context, H, D, seed=args.context, device=dev)
    query = (q_kv[:, :, None, :] + 0.3 * torch.randn(1, H, G, D, generator=torch.Generator().manual_seed(0))
             .to(dev)).reshape(1, H * G, D)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for text in args.options:
        selector, _, _ = _make_selector("icecache", CacheConfig(budget=args.budget, device=dev), "reference",
                                        keys, json.loads(text))
        for _ in range(5):
            selector.select(query)
        sync()
        t0 = time.perf_counter()
        for _ in range(20):
            selector.select(query)
        sync()
        print(f"\n== {text}: select {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms (mean of 20)")
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(5):
                selector.select(query)
            sync()
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=40))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12,
                                        max_name_column_width=40))


if __name__ == "__main__":
    main()
