#!/bin/bash
# alternate old (28edbb8) and new (working tree) e2e_quick, full + streamingllm + icecache, 8000 x 4
for r in 1 2; do
  for tag in old new; do
    if [ $tag = old ]; then P=/tmp/wt-old; else P=/work/main; fi
    (cd /tmp && PYTHONPATH=$P OMP_NUM_THREADS=1 POLS=full,icecache,streamingllm ROUNDS=1 TAG=$tag$r /work/main/.venv/bin/python /work/main/benchmarks/results/ab_2026-12-03_pm/e2e_quick.py 2>&1 | grep -E "^(old|new)")
  done
done
