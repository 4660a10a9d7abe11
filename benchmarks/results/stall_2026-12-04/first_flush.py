"""Per-step decode times over the first 36 steps (4k x 4, SmolLM2-135M shape, random weights, synthetic
prefill, 1 thread) and the host tier's growths, for the code on ``PYTHONPATH``:
``cd /tmp && PYTHONPATH=<checkout> python first_flush.py streamingllm,icecache``."""

import sys
import time

import torch

import icecache.storage.memory as memory
from icecache.bench.shapes import random_model, synthetic_snapshot
from icecache.eval.policies import build_policy, parse_policies
from icecache.integrations.hf import IceCache, decode, use_icecache

torch.set_num_threads(1)
growths = []
original = memory.MemoryTier.resize_storage


def timed(self, num_slots):
    t0 = time.perf_counter()
    original(self, num_slots)
    growths.append((self.name, num_slots, round(time.perf_counter() - t0, 3)))


memory.MemoryTier.resize_storage = timed
model = use_icecache(random_model("smollm2-135m", positions=4200, layers=None, dtype=torch.float32,
                                  device=torch.device("cpu")))
snap = synthetic_snapshot(model, 4, 4096)
for label in sys.argv[1].split(","):
    policy = build_policy(parse_policies(label, 256)[0], model.config, device=torch.device("cpu"))
    cache = IceCache.from_snapshot(snap, policy)
    growths.clear()
    decode(model, cache, snap, 37)
    steps = [round(s["total"] * 1e3) for s in cache.timings.steps]
    median = sorted(steps)[len(steps) // 2]
    print(f"{label}: step 16 {steps[15]} ms, median {median} ms, max {max(steps)} ms; "
          f"host growths during decode {growths}")
    cache.close()
